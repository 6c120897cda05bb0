"""A run as units of work, each with the fingerprint of exactly what determines its output.

    adapt/<group>            one adapter, or one batched group of class adapters  -> STORE/adapters/<fp>
    synthesize/<class>/<i>   one shard of a class's images (a fixed index range)  -> STORE/synthetic/<fp>
    index                    the run's links into the store and synthetic/index.jsonl (the set's done-marker)
    inspect                  data-quality figures of the synthetic set                   -> RUN/inspect.json
    train                    the classifier                                        -> RUN/classifier/
    evaluate                 the test metrics                                      -> RUN/classifier/metrics.json

Planned from RUN/config.yaml and RUN/fewshot.json alone, and their state read from the files
alone (done-markers, locks): `datadream status`, `--dry-run`, resume and every runner use this
module, which never imports torch. Speed-only settings (batch sizes, engines, workers, shard size)
are not in any fingerprint, so changing them never invalidates work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from datadream import costs
from datadream.components.seeds import derive_seed
from datadream.config import AdaptConfig, Config, SynthesizeConfig, result_settings, stable_hash
from datadream.data.fewshot import FewShotClass
from datadream.layout import DATASET_UNIT, StoreLayout
from datadream.runs import Run, open_run
from datadream.store import open_store

# Class adapters per adapt unit when adapt.group_size is 0. A unit is fixed here, not by the
# device, so that plan, status and every runner see the same units and make the same bytes; with
# group_size 0 the batched engine trains a unit that does not fit the GPU in parts that do.
DEFAULT_GROUP = 16
STAGES = ("adapt", "synthesize", "index", "inspect", "train", "evaluate")
GENERATOR_STAGES = ("adapt", "synthesize", "index", "inspect")


@dataclass
class AdapterSpec:
    name: str  # its link under RUN/adapters/: the class slug, or "dataset"
    seed_key: str  # what the adapter's random stream derives from: class name, or "dataset"
    classes: list[FewShotClass]
    fingerprint: str  # its folder in the store

    @property
    def lock(self) -> str:
        return f"adapter-{self.fingerprint}"


@dataclass
class SyntheticSpec:
    cls: FewShotClass
    adapter: AdapterSpec | None  # None: the un-adapted generator (adapt.mode=none)
    fingerprint: str  # its folder in the store

    @property
    def lock(self) -> str:
        return f"synthetic-{self.fingerprint}"

    def shard_lock(self, start: int) -> str:
        return f"synthetic-{self.fingerprint}-{start}"

    def seeds(self, run_seed: int, total: int) -> list[int]:
        return [image_seed(run_seed, self.cls.name, i) for i in range(total)]


def image_seed(run_seed: int, class_name: str, index: int) -> int:
    return derive_seed(run_seed, "image", class_name, index)


def store_of(run: Run) -> StoreLayout:
    return open_store(run.config.runtime.store, run.layout.root)


def generates(config: Config) -> bool:
    """Whether a run of `config` adapts and samples: its classifier trains on synthetic images."""
    return config.classifier.train_on in ("synthetic", "synthetic+real")


def needs_generator(run: Run) -> bool:
    return generates(run.config)


def adapter_specs(run: Run) -> list[AdapterSpec]:
    cfg = run.config
    if cfg.adapt.mode == "none" or not needs_generator(run):
        return []
    if cfg.adapt.mode == "class":
        groups = [(c.slug, c.name, [c]) for c in run.manifest.classes]
    else:
        groups = [(DATASET_UNIT, DATASET_UNIT, list(run.manifest.classes))]
    specs = []
    for name, seed_key, classes in groups:
        inputs = {
            "model": cfg.generator.model,
            "generator_config": cfg.generator.config,
            "adapt": result_settings(cfg.adapt),
            "seed": cfg.runtime.seed,
            "seed_key": seed_key,
            "precision": cfg.runtime.precision,
            "classes": [(c.prompt, [s.sha256 for s in c.images]) for c in classes],
        }
        if cfg.generator.family == "flux":  # FLUX.1-dev trains with the guidance it samples with
            inputs["guidance"] = cfg.synthesize.guidance
        specs.append(AdapterSpec(name, seed_key, classes, stable_hash(inputs)))
    return specs


def synthetic_specs(run: Run) -> list[SyntheticSpec]:
    if not needs_generator(run):
        return []
    cfg = run.config
    by_class = {c.label: a for a in adapter_specs(run) for c in a.classes}
    specs = []
    for cls in run.manifest.classes:
        adapter = by_class.get(cls.label)
        inputs = {
            "model": cfg.generator.model,
            "generator_config": cfg.generator.config,
            "synthesize": result_settings(cfg.synthesize),
            "seed": cfg.runtime.seed,
            "precision": cfg.runtime.precision,
            "class_name": cls.name,
            "prompt": cls.prompt,
            "adapter": adapter.fingerprint if adapter else None,
        }
        specs.append(SyntheticSpec(cls, adapter, stable_hash(inputs)))
    return specs


def synthetic_fingerprint(run: Run) -> str:
    """What the run's synthetic set is made from, from the settings alone (no file is read)."""
    return stable_hash([spec.fingerprint for spec in synthetic_specs(run)])


def real_repeats(run: Run) -> int:
    """Copies of each real shot: about as many real as synthetic images per class (500 // 16 = 31)."""
    return max(1, run.config.synthesize.images_per_class // run.manifest.shots)


def classifier_fingerprint(run: Run) -> str:
    cfg = run.config.classifier
    inputs: dict = {
        "classifier": result_settings(cfg),
        "seed": run.config.runtime.seed,
        "precision": run.config.runtime.precision,
        "fewshot": run.manifest.digest(),
        "data": result_settings(run.config.data),
    }
    if cfg.train_on in ("synthetic", "synthetic+real"):
        inputs["synthetic"] = synthetic_fingerprint(run)
    if cfg.train_on in ("real", "synthetic+real"):
        inputs["real_repeats"] = real_repeats(run)
    return stable_hash(inputs)


# What RUN/inspect.json's figures are: raised when one is redefined or renamed (2: KID became the
# kernel distance kd), so a file from before is computed again, never read as the new figures.
INSPECT_FIGURES = 2


def inspect_fingerprint(run: Run) -> str:
    """What RUN/inspect.json is computed from: the synthetic set, the shots, the feature space, the
    held-out split's setting and the definition of the figures."""
    return stable_hash({"synthetic": synthetic_fingerprint(run), "fewshot": run.manifest.digest(),
                        "model": run.config.classifier.model, "precision": run.config.runtime.precision,
                        "data": result_settings(run.config.data), "figures": INSPECT_FIGURES})


def shard_size(cfg: SynthesizeConfig) -> int:
    """Images per synthesize unit: `synthesize.shard_size` rounded up to whole sampler batches, so
    a shard's batches are the batches an unsharded run makes (same images)."""
    return math.ceil(cfg.shard_size / cfg.batch_size) * cfg.batch_size


def shards_per_class(cfg: SynthesizeConfig) -> int:
    return math.ceil(cfg.images_per_class / shard_size(cfg))


def shard_ranges(run: Run) -> list[range]:
    """The image ranges of a class's shards (shard_size)."""
    cfg = run.config.synthesize
    size, total = shard_size(cfg), cfg.images_per_class
    return [range(start, min(start + size, total)) for start in range(0, total, size)]


def batches(shard: range, batch_size: int) -> list[range]:
    return [range(start, min(start + batch_size, shard.stop)) for start in range(shard.start, shard.stop, batch_size)]


def group_size(cfg: AdaptConfig) -> int:
    """Class adapters per adapt unit (adapt.group_size; 0: DEFAULT_GROUP)."""
    return cfg.group_size or DEFAULT_GROUP


def adapter_grouping(cfg: AdaptConfig, shots: list[int]) -> list[list[int]]:
    """The adapt units as positions into `shots`, the real shots of each adapter in adapter order:
    class adapters with equal shot counts (so equal steps per epoch) `group_size` at a time, or one
    adapter per unit for the sequential engine and dataset-wise mode."""
    if cfg.mode != "class" or cfg.engine == "sequential":
        return [[position] for position in range(len(shots))]
    size = group_size(cfg)
    by_count: dict[int, list[int]] = {}
    for position, count in enumerate(shots):
        by_count.setdefault(count, []).append(position)
    return [same[i:i + size] for same in by_count.values() for i in range(0, len(same), size)]


def adapter_shots(config: Config, class_shots: list[int]) -> list[int]:
    """The real shots each adapter trains on, in adapter order, from the classes' shot counts."""
    if config.adapt.mode == "none" or not generates(config):
        return []
    return list(class_shots) if config.adapt.mode == "class" else [sum(class_shots)]


def adapter_groups(run: Run, specs: list[AdapterSpec] | None = None) -> list[list[AdapterSpec]]:
    """The units of the adapt stage as adapters (adapter_grouping)."""
    specs = adapter_specs(run) if specs is None else specs
    shots = [sum(len(c.images) for c in spec.classes) for spec in specs]
    return [[specs[position] for position in group] for group in adapter_grouping(run.config.adapt, shots)]


def planned_stages(config: Config, has_test: bool) -> tuple[str, ...]:
    """The stages that have units in a run of `config`: the generator's only when the classifier
    trains on synthetic images, evaluate only with a test split, none after runtime.until."""
    wanted = stages_until(config.runtime.until)
    return tuple(stage for stage in STAGES if stage in wanted and (generates(config) or stage not in GENERATOR_STAGES)
                 and (has_test or stage != "evaluate"))


@dataclass(frozen=True)
class Outline:
    """A run's units as counts, from the config and the classes' shot counts alone: what `plan`
    prices when there is no run folder yet. plan_work builds the same units with their
    fingerprints from the same functions (a test holds the two to the same counts)."""

    stages: tuple[str, ...]
    adapters: list[int]  # the real shots of each adapter, in adapter order
    adapt_units: list[list[int]]  # each adapt unit's adapters, as positions into `adapters`
    classes: int
    shards_per_class: int

    def units(self, stage: str) -> int:
        if stage not in self.stages:
            return 0
        if stage == "adapt":
            return len(self.adapt_units)
        return self.classes * self.shards_per_class if stage == "synthesize" else 1


def outline(config: Config, class_shots: list[int], has_test: bool) -> Outline:
    shots = adapter_shots(config, class_shots)
    return Outline(planned_stages(config, has_test), shots, adapter_grouping(config.adapt, shots), len(class_shots),
                   shards_per_class(config.synthesize))


@dataclass(frozen=True)
class WorkUnit:
    run: Path  # the run folder (absolute)
    stage: str  # one of STAGES
    id: str  # unique within the run
    key: str  # identity across runs: units of two runs with the same key are the same work
    deps: tuple[str, ...]  # ids of units of the same run that must be complete first
    members: tuple[str, ...]  # adapt: adapter names; synthesize: "<class slug>/<first image>"
    gpu_memory: float  # estimated peak GPU bytes (0: needs no GPU)


def _precision(run: Run) -> str:
    setting = run.config.runtime.precision
    return "bf16" if setting == "auto" else setting  # what "auto" picks on a current GPU


def plan_work(run: Run | Path, has_test: bool | None = None) -> list[WorkUnit]:
    """Every unit of the run, in an order that respects the dependencies. `has_test`: whether the
    data has a test split (None: read the data's files)."""
    run = run if isinstance(run, Run) else open_run(run)
    root, cfg = run.layout.root, run.config
    stages = planned_stages(cfg, _has_test_split(run) if has_test is None else has_test)
    precision = _precision(run)
    family = cfg.generator.family or "sd"
    units: list[WorkUnit] = []
    group_of: dict[str, str] = {}
    if "adapt" in stages:
        pixels = costs.pixels(family, cfg.adapt.resolution)
        for group in adapter_groups(run):
            unit_id = "adapt/" + "+".join(spec.name for spec in group)
            if len(unit_id) > 96:  # a class-wise group of many long slugs: name it by its ends
                unit_id = f"adapt/{group[0].name}..{group[-1].name}"
            shots = max(sum(len(c.images) for c in spec.classes) for spec in group)
            memory = costs.adapt_memory(precision, len(group), min(cfg.adapt.batch_size, shots),
                                        1 if cfg.adapt.mode == "class" else min(cfg.adapt.batch_size, len(group[0].classes)),
                                        cfg.adapt.train_text_encoder, cfg.adapt.gradient_checkpointing, pixels, family)
            units.append(WorkUnit(root, "adapt", unit_id, "adapt:" + "+".join(s.fingerprint for s in group), (),
                                  tuple(spec.name for spec in group), memory))
            group_of.update({spec.name: unit_id for spec in group})
    shard_ids = []
    if "synthesize" in stages:
        synth = cfg.synthesize
        memory = costs.synthesize_memory(precision, synth.batch_size, costs.guidance_pair(family, synth.guidance),
                                         costs.pixels(family, synth.resolution), family)
        for spec in synthetic_specs(run):
            deps = (group_of[spec.adapter.name],) if spec.adapter else ()
            for shard in shard_ranges(run):
                unit_id = f"synthesize/{spec.cls.slug}/{shard.start}"
                units.append(WorkUnit(root, "synthesize", unit_id,
                                      f"synthesize:{spec.fingerprint}:{shard.start}-{shard.stop}", deps,
                                      (f"{spec.cls.slug}/{shard.start}",), memory))
                shard_ids.append(unit_id)
    if "index" in stages:
        units.append(WorkUnit(root, "index", "index", f"index:{root}", tuple(shard_ids), (), 0.0))
    if "inspect" in stages:
        units.append(WorkUnit(root, "inspect", "inspect", f"inspect:{root}", ("index",), (),
                              costs.evaluate_memory(cfg.classifier.eval_batch_size)))
    if "train" in stages:
        train_deps = ("index",) if "index" in stages else ()
        units.append(WorkUnit(root, "train", "train", f"train:{root}", train_deps, (),
                              costs.classifier_memory(cfg.classifier.batch_size, len(run.manifest.classes), precision)))
    if "evaluate" in stages:
        units.append(WorkUnit(root, "evaluate", "evaluate", f"evaluate:{root}", ("train",), (),
                              costs.evaluate_memory(cfg.classifier.eval_batch_size)))
    return units


def stages_until(until: str) -> tuple[str, ...]:
    """The stages `run` does when it stops after `until` (runtime.until). Inspect and the
    classifier need the classifier's model: a generation-only run never loads it."""
    return {"adapt": ("adapt",), "synthesize": ("adapt", "synthesize", "index")}.get(until, STAGES)


def _has_test_split(run: Run) -> bool:
    from datadream.data.sources import load_view

    try:
        return bool(load_view(run.config.data, splits=("test",)).split("test"))
    except Exception:  # the data moved since init: evaluate will say so when it runs
        return True
