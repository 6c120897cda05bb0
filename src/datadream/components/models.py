"""Loading models from a hub id or a local folder, and choosing device and precision.

One loading path for real checkpoints and tiny test models alike; a model that cannot be loaded
(offline, misspelt, incomplete folder) becomes one UserError line instead of a hub traceback.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from datadream.errors import UserError

log = logging.getLogger(__name__)

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
    """Turn a hub or file error while loading `model` into one line that says what to do."""
    try:
        yield
    except (OSError, ValueError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot load {kind} model '{model}' ({first_line}); with no hub access, set {key} to a"
            f" local {folder_kind} folder or pre-download the model into the HF cache"
        ) from None


def load_stable_diffusion(model: str, dtype: torch.dtype = torch.float32):
    """A `StableDiffusionPipeline` from a hub id or a local diffusers folder."""
    import diffusers
    import transformers
    from diffusers import StableDiffusionPipeline

    # Their per-component loading bars drown our own progress bars.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    local = Path(model)
    if local.is_absolute() or local.exists():
        if not (local / "model_index.json").is_file():
            raise UserError(
                f"generator.model: {local} is not a diffusers Stable Diffusion folder (no"
                " model_index.json); point it at a folder saved with save_pretrained or a hub id"
            )
    with explained_loading("Stable Diffusion", model, "generator.model", "diffusers"):
        pipeline = StableDiffusionPipeline.from_pretrained(
            model, dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
    if len(pipeline.tokenizer) <= 2:
        # CLIPTokenizer.from_pretrained can return an empty 2-token tokenizer instead of failing.
        raise UserError(f"generator.model '{model}': its tokenizer has no vocabulary; the folder is incomplete")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def compile_module(module: torch.nn.Module) -> torch.nn.Module:
    """torch.compile with the backend in DATADREAM_COMPILE_BACKEND (default inductor; the tests
    use "eager", which traces the graph without generating kernels)."""
    import os

    return torch.compile(module, backend=os.environ.get("DATADREAM_COMPILE_BACKEND", "inductor"))


def check_models_reachable(generator: str | None, classifier: str | None) -> None:
    """Read only the models' configs (small files, cached or local): a misspelt id or a missing
    folder stops a run before any training starts rather than hours into it."""
    if generator is not None:
        from diffusers import DiffusionPipeline

        with explained_loading("Stable Diffusion", generator, "generator.model", "diffusers"):
            DiffusionPipeline.load_config(generator)
    if classifier is not None:
        from transformers import AutoConfig

        with explained_loading("CLIP", classifier, "classifier.model", "transformers"):
            AutoConfig.from_pretrained(classifier)
