"""Loading models from a hub id, a local folder or a single-file checkpoint, and choosing device
and precision.

One loading path for real checkpoints and tiny test models alike. Weights come from safetensors
only; a known model (the default generator) is checked against the official hashes. A model that
cannot be loaded (repository gone, gated, machine offline, incomplete folder) becomes one
UserError line that says what to set instead, never a hub traceback.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from datadream.config import DEFAULT_GENERATOR
from datadream.errors import UserError

log = logging.getLogger(__name__)

# What a single-file checkpoint lacks, in "cannot load <this> model '<id>'".
SINGLE_FILE_CONFIGS = "the single-file checkpoint's configs: Stable Diffusion"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"runtime.device: unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"runtime.device={spec} but no CUDA device is visible; use runtime.device=auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"runtime.device={spec} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Compute dtype: bf16 on GPUs that support it, fp16 on older ones, fp32 on the CPU (where
    reduced precision is slower, not faster)."""
    if precision != "auto":
        return PRECISIONS[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


@contextmanager
def explained_loading(kind: str, model: str, key: str, folder_kind: str) -> Iterator[None]:
    """Turn a hub or file error while loading `model` into one line that says why (repository
    gone, gated, machine offline) and what to set instead."""
    from safetensors import SafetensorError

    from datadream.components.loading.hub import explain

    try:
        yield
    except (OSError, ValueError, KeyError, SafetensorError) as err:  # SafetensorError: a damaged weight file
        raise UserError(explain(kind, model, key, folder_kind, err)) from None


def load_generator(model: str, dtype: torch.dtype = torch.float32, config: str = ""):
    """The stock diffusers pipeline of `model`'s family (components/generators/families/: read from its
    model_index.json) from a hub id or a local diffusers folder, or a `StableDiffusionPipeline`
    from a single-file checkpoint (`.safetensors`, original layout; its configs come from
    `config`). Weights are read from safetensors only, and checked against the official hashes
    when the model is a known one."""
    import diffusers
    import transformers

    # Their per-component loading bars drown our own progress bars.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    local = Path(model).expanduser()
    if local.is_file() or model.endswith((".safetensors", ".ckpt", ".bin", ".pt", ".pth")):
        pipeline = _load_single_file(local, dtype, config)
    else:
        folder, family = _diffusers_folder(model, local)
        # SD 1.x/2.x folders may name a safety checker; the synthetic set has no use for one.
        extra = {"safety_checker": None, "requires_safety_checker": False} if family.name == "sd" else {}
        with explained_loading(family.title, model, "generator.model", "diffusers"):
            pipeline = getattr(diffusers, family.pipeline).from_pretrained(
                folder, dtype=dtype, use_safetensors=True, **extra)
    if len(pipeline.tokenizer) <= 2:
        # CLIPTokenizer.from_pretrained can return an empty 2-token tokenizer instead of failing.
        raise UserError(f"generator.model '{model}': its tokenizer has no vocabulary; the folder is incomplete")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def pipeline_family(pipeline):
    """The family record of a loaded pipeline."""
    from datadream.components.generators.families import BY_PIPELINE

    return BY_PIPELINE[type(pipeline).__name__]


def _diffusers_folder(model: str, local: Path):
    """The local folder of a diffusers model (fetching a hub id's needed files first), its
    weights checked against the official hashes when it is a known model, and its family."""
    from datadream.components.generators.families import folder_family
    from datadream.components.loading import hub, weights
    from datadream.components.loading.hub import NEEDED_PATTERNS, is_hub_id

    if is_hub_id(model):
        with explained_loading("generator", model, "generator.model", "diffusers"):
            folder = hub.fetch_snapshot(model, NEEDED_PATTERNS)
    else:
        folder = local
    # The family decides which pipeline class loads the folder: StableDiffusionPipeline would
    # load an SDXL folder without a word, dropping its second text encoder.
    family = folder_family(folder, model)
    known = weights.known_by_repo(model) if is_hub_id(model) else weights.identify(str(folder))
    check_generator_weights(folder, "generator.model")
    if known is not None:
        weights.warn_if_not_official(weights.check_folder(folder, known), known, f"generator.model={model}")
    return folder, family


def refuse_pickled_weights(folder: Path, key: str) -> None:
    """Pickled weights can run code when loaded: a component with only `.bin` files is refused
    rather than silently loaded."""
    for part in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        sub = folder / part
        if sub.is_dir() and not any(sub.glob("*.safetensors")) and any(sub.glob("*.bin")):
            raise UserError(
                f"{key}: {sub} has only pickled .bin weights and datadream loads safetensors only;"
                " fetch the safetensors files (`datadream models download`), or convert a copy you"
                " trust with save_pretrained(..., safe_serialization=True)"
            )


def missing_weights(folder: Path, name: str, index: str) -> str | None:
    """What `folder` lacks of a model's weights, or None: the single file `name`, or a shard that
    the sharded checkpoint's `index` names."""
    if (folder / name).is_file():
        return None
    if not (folder / index).is_file():
        return name
    try:
        shards = set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"a readable {index}"
    return next((shard for shard in sorted(shards) if not (folder / shard).is_file()), None)


def refuse_missing(key: str, sub: Path, missing: str) -> UserError:
    return UserError(f"{key}: {sub} has its configs but not its weights ({missing} is missing); copy the weights"
                     f" into it, or set {key} to a complete model (`datadream models download` fetches one)")


def check_generator_weights(folder: Path, key: str) -> None:
    """Every model component of a diffusers folder has its safetensors weights: a folder of configs
    alone passes every config check and fails only when the weights are read, hours later."""
    from diffusers.utils.constants import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME as TRANSFORMERS_INDEX
    from transformers.utils import SAFE_WEIGHTS_NAME as TRANSFORMERS_WEIGHTS

    refuse_pickled_weights(folder, key)
    names = {"diffusers": (SAFETENSORS_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME),
             "transformers": (TRANSFORMERS_WEIGHTS, TRANSFORMERS_INDEX)}
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    for component, (library, *_) in ((k, v) for k, v in index.items() if isinstance(v, list) and v):
        sub = folder / component
        # Models have a config.json; schedulers, tokenizers and feature extractors do not.
        if library in names and (sub / "config.json").is_file():
            missing = missing_weights(sub, *names[library])
            if missing:
                raise refuse_missing(key, sub, missing)


def _load_single_file(path: Path, dtype: torch.dtype, config: str):
    """An original-layout checkpoint file (e.g. v2-1_512-ema-pruned.safetensors) with the
    diffusers configs of `config`: a local diffusers folder or a hub id (default: the default
    generator's, a few MB, read from the HF cache when present)."""
    from diffusers import StableDiffusionPipeline

    from datadream.components.generators.families import folder_family, require_sd
    from datadream.components.loading import hub, weights
    from datadream.components.loading.hub import CONFIG_PATTERNS

    if path.suffix != ".safetensors":
        raise UserError(
            f"generator.model: {path} is not a .safetensors file; datadream loads no pickled"
            " checkpoints (.ckpt, .bin): use v2-1_512-ema-pruned.safetensors or a diffusers folder"
        )
    if not path.is_file():
        raise UserError(f"generator.model: checkpoint file not found: {path}")
    known = weights.identify(str(path))
    if known is not None:
        check = weights.check_file(path, path.name, known.single_files[path.name])
        weights.warn_if_not_official([check], known, f"generator.model={path}")
    source = config or DEFAULT_GENERATOR
    folder = Path(source).expanduser()
    if folder.is_dir():
        if not (folder / "model_index.json").is_file():
            raise UserError(f"generator.config: {folder} is not a diffusers Stable Diffusion folder (no model_index.json)")
    else:
        with explained_loading(SINGLE_FILE_CONFIGS, source, "generator.config", "diffusers"):
            folder = hub.fetch_snapshot(source, CONFIG_PATTERNS)
    require_sd(folder_family(folder, source), source)
    with explained_loading("Stable Diffusion", str(path), "generator.model", "diffusers"):
        return StableDiffusionPipeline.from_single_file(
            str(path), config=str(folder), dtype=dtype, local_files_only=True,
            safety_checker=None, requires_safety_checker=False,
        )


def compile_module(module: torch.nn.Module) -> torch.nn.Module:
    """torch.compile with the backend in DATADREAM_COMPILE_BACKEND (default inductor; the tests
    use "eager", which traces the graph without generating kernels)."""
    import os

    return torch.compile(module, backend=os.environ.get("DATADREAM_COMPILE_BACKEND", "inductor"))


def check_generator_reachable(generator: str, generator_config: str = "") -> None:
    """Read only the generator's configs (small files, cached or local) and see that a local folder
    has its weights: a misspelt id, a withdrawn repository, a missing folder or one without its
    weights stops a run before any training starts rather than hours into it."""
    from diffusers import DiffusionPipeline

    from datadream.components.generators.families import family_named, folder_family, require_sd

    local = Path(generator).expanduser()
    if local.suffix == ".safetensors" or local.is_file():
        if not local.is_file():
            raise UserError(f"generator.model: checkpoint file not found: {local}")
        source = generator_config or DEFAULT_GENERATOR
        folder = Path(source).expanduser()
        if (folder / "model_index.json").is_file():
            require_sd(folder_family(folder, source), source)
        elif not folder.is_dir():
            with explained_loading(SINGLE_FILE_CONFIGS, source, "generator.config", "diffusers"):
                index = DiffusionPipeline.load_config(source)
            require_sd(family_named(index.get("_class_name", ""), source), source)
    else:
        with explained_loading("generator", generator, "generator.model", "diffusers"):
            index = DiffusionPipeline.load_config(generator)
        # An unknown pipeline class would otherwise fail deep inside adapt with a traceback.
        family_named(index.get("_class_name", ""), generator)
        if local.is_dir():
            check_generator_weights(local, "generator.model")
