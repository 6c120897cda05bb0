"""Creating and opening a run folder (RUN/config.yaml + RUN/fewshot.json)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from datadream import atomic
from datadream.config import NEEDS_BITSANDBYTES, Config, describe_differences, read_config_file
from datadream.data.fewshot import FewShotManifest, build_manifest, read_manifest
from datadream.data.leaks import check_no_leaks
from datadream.data.sources import load_view
from datadream.errors import UserError
from datadream.layout import RunLayout

log = logging.getLogger(__name__)


@dataclass
class Run:
    layout: RunLayout
    config: Config
    manifest: FewShotManifest


def init_run(config: Config, root: Path) -> Run:
    """Create RUN, or accept it unchanged when it already holds this very config. A folder that
    holds another config, or anything that is not a run, is refused and left untouched. The
    models of the stages the run will do (runtime.until) are checked first: a mistyped model must
    not leave a run that refuses the fix, and a generation-only run needs no classifier."""
    layout = RunLayout(Path(root).resolve())
    needs_generator = config.classifier.train_on in ("synthetic", "synthetic+real")
    needs_classifier = config.runtime.until == "evaluate"
    if needs_generator:
        from datadream.components.loading.models import check_generator_reachable

        check_generator_reachable(config.generator.model, config.generator.config)
    if needs_classifier:
        from datadream.components.classifiers.backbones import check_classifier_reachable

        check_classifier_reachable(config.classifier.model)
    if needs_generator:
        from datadream.components.generators.families import check_settings, family_of

        family = family_of(config.generator.model)
        apply_family_defaults(config, family)
        check_settings(family, config.adapt.resolution, config.synthesize.resolution,
                       config.synthesize.sampler, adapted=config.adapt.mode != "none")
    if needs_generator and config.adapt.mode != "none" and config.adapt.optimizer == "adamw8bit":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError(NEEDS_BITSANDBYTES)
    if layout.config.exists():
        existing = read_config_file(layout.config)
        changes = describe_differences(existing, config, results_only=True)
        if changes:
            raise UserError(
                f"{layout.root} holds a run with a different config ({'; '.join(changes[:3])}"
                f"{'; ...' if len(changes) > 3 else ''}); choose a new run folder"
            )
        tuning = describe_differences(existing, config)
        if tuning:  # device, batch or worker settings: they change speed, not results
            atomic.write_text(layout.config, config.to_yaml())
            log.info("run %s: updated %s", layout.root, "; ".join(tuning))
        if layout.fewshot.exists():
            log.info("run %s already initialised with this config", layout.root)
            return open_run(layout.root)
    elif layout.root.exists() and any(layout.root.iterdir()):
        raise UserError(f"{layout.root} is not empty and holds no datadream run; choose an empty or new folder")
    # Everything is checked before anything is written: bad data leaves no run behind.
    view = load_view(config.data)
    check_listed_files_exist(view)
    manifest = build_manifest(config.data, view)
    check_no_leaks(view, manifest)
    layout.root.mkdir(parents=True, exist_ok=True)
    atomic.write_text(layout.config, config.to_yaml())
    atomic.write_text(layout.fewshot, manifest.to_json())
    log.info("initialised %s: %d classes, %d shots each", layout.root, len(manifest.classes), manifest.shots)
    return Run(layout, config, manifest)


def apply_family_defaults(config: Config, family) -> None:
    """Record the generator's family, and give the settings nobody set (components.generators.families.
    FAMILY_SETTINGS) the values its model was trained with; a set value that differs is kept, with
    one warning: a FLUX model sampled at SD's 512 px, or SDXL with SD's guidance, is a choice to
    make knowingly, not by default."""
    from datadream.components.generators.families import native_resolution, trained_settings

    if config.generator.family not in ("", family.name):
        raise UserError(f"generator.family={config.generator.family!r}, but {config.generator.model} is a"
                        f" {family.name} model; leave generator.family unset (it is read from the model)")
    config.generator.family = family.name
    trained = trained_settings(family, native_resolution(config.generator.model, family))
    differing = []
    for key, value in trained.items():
        section, name = key.split(".")
        target = getattr(config, section)
        current = getattr(target, name)
        # Unset: neither in the YAML nor in --set, and (for a config built in Python) still the default.
        if key not in config.explicit and current == getattr(type(target)(), name):
            setattr(target, name, value)
        elif current != value:
            differing.append(f"{key}={current:g} (trained: {value:g})")
    if differing:
        log.warning("generator %s is %s: %s; kept as set", config.generator.model, family.title, ", ".join(differing))


def check_listed_files_exist(view) -> None:
    """A split file can list images that are not there; finding out at `evaluate`, after hours of
    generation, is too late. (Image folders list only what exists.)"""
    for split in ("train", "val", "test"):
        missing = [item.path for item in view.split(split) if not item.path.is_file()]
        if missing:
            raise UserError(f"{len(missing)} {split} image(s) listed by the dataset do not exist, e.g. {missing[0]};"
                            " check data.root and data.split_file")


def open_run(root: Path) -> Run:
    layout = RunLayout(Path(root).resolve())
    if not layout.config.is_file():
        raise UserError(f"{layout.root} is not a datadream run (no config.yaml); create it with `datadream init CONFIG RUN`")
    return Run(layout, read_config_file(layout.config), read_manifest(layout.fewshot))
