"""Getting model files from the Hugging Face hub, and saying in one line why that failed.

Only the files the pipeline reads are fetched (safetensors weights, configs, tokenizer): never the
pickled `.bin` copies, fp16 duplicates or single-file checkpoints that share the repository.
`snapshot_download` resumes partial downloads and, offline, answers from the local cache. Torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path

# fnmatch patterns (a `*` also crosses `/`): configs and tokenizer files are small; weights only as
# full-precision safetensors. Enough for a diffusers Stable Diffusion folder and a transformers CLIP.
# Large denoisers and T5 encoders come in shards (name-00001-of-0000N.safetensors plus an index).
WEIGHT_PATTERNS = ("model.safetensors", "*/model.safetensors", "*/diffusion_pytorch_model.safetensors",
                   "*/model-*-of-*.safetensors", "*/diffusion_pytorch_model-*-of-*.safetensors")
# T5's tokenizer is a sentencepiece model (SD 3, FLUX).
CONFIG_PATTERNS = ("*.json", "*.txt", "*/spiece.model")
NEEDED_PATTERNS = CONFIG_PATTERNS + WEIGHT_PATTERNS


def fetch_snapshot(repo_id: str, patterns: tuple[str, ...], local_dir: Path | None = None,
                   local_only: bool = False) -> Path:
    """The folder holding `repo_id`'s files that match `patterns`, downloaded if needed (into
    the HF cache, or into `local_dir`). Tests replace this function to stay offline."""
    from huggingface_hub import snapshot_download

    folder = snapshot_download(
        repo_id, allow_patterns=list(patterns), local_dir=local_dir, local_files_only=local_only
    )
    return Path(folder)


def is_hub_id(model: str) -> bool:
    """A string that names a hub repository rather than a local path."""
    if not model or model.startswith((".", "/", "~")) or Path(model).exists():
        return False
    return model.count("/") <= 1 and not model.endswith((".safetensors", ".ckpt", ".bin"))


def _chain(err: BaseException) -> list[BaseException]:
    """The error and its causes: diffusers and transformers wrap hub errors in an OSError."""
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_failure(err: BaseException) -> str | None:
    """'gated', 'gone', 'offline', 'unreachable' or None (not a hub failure), from the error chain."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    chain = _chain(err)
    # GatedRepoError is a RepositoryNotFoundError: ask for it first.
    if any(isinstance(e, GatedRepoError) for e in chain):
        return "gated"
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return "gone"
    if any(isinstance(e, (OfflineModeIsEnabled, LocalEntryNotFoundError)) for e in chain):
        return "offline" if offline_mode() else "unreachable"
    names = {type(e).__name__ for e in chain}
    if names & {"ConnectError", "ConnectionError", "ConnectTimeout", "ReadTimeout", "TimeoutException"}:
        return "unreachable"
    text = " ".join(str(e) for e in chain).lower()
    if "is not a valid model identifier" in text or "repository not found" in text:
        return "gone"
    if offline_mode() and ("offline" in text or "cannot find the requested files" in text
                           or "couldn't connect" in text or "local_files_only" in text):
        return "offline"
    return None


def explain(kind: str, model: str, key: str, folder_kind: str, err: BaseException) -> str:
    """One line: what failed, why (gone, gated, offline), and what to set instead."""
    from datadream.components.loading.weights import known_by_repo
    from datadream.config import DEFAULT_GENERATOR

    reason = hub_failure(err) if is_hub_id(model) else None
    local = f"a local {folder_kind} folder"
    known, default = known_by_repo(model), known_by_repo(DEFAULT_GENERATOR)
    # Another name of the default generator (the withdrawn stabilityai id): the mirror is the fix.
    mirrored = known is not None and known is default and model.lower() != DEFAULT_GENERATOR.lower()
    target = DEFAULT_GENERATOR if mirrored else model
    fetch = f"fetch it where the hub is reachable (`datadream models download {target} --to DIR`) and set {key}=DIR"
    head = f"cannot load {kind} model '{model}'"
    if reason == "gone":
        fix = (f"set {key}={DEFAULT_GENERATOR} (a mirror of the same files, checked against the official"
               " hashes)" if mirrored else f"check the spelling, or set {key} to another hub id or {local}")
        return f"{head}: the hub has no such repository (removed by its owner, private, or misspelt); {fix}"
    if reason == "gated":
        return (f"{head}: the repository is gated; accept its licence on huggingface.co and log in"
                f" (`hf auth login`), or set {key} to {local}")
    if reason in ("offline", "unreachable"):
        why = "the machine is offline (HF_HUB_OFFLINE is set)" if reason == "offline" else "the hub cannot be reached"
        cached = f"set {key}={DEFAULT_GENERATOR} if that mirror is cached, or " if mirrored else ""
        unset = ", or unset HF_HUB_OFFLINE" if reason == "offline" else ""
        return f"{head}: {why} and the model is not in the Hugging Face cache; {cached}{fetch}{unset}"
    lines = str(err).strip().splitlines()
    first = lines[0] if lines else type(err).__name__
    if not is_hub_id(model):
        return f"{head} ({first}); check that it is a complete {folder_kind} model, or set {key} to another one"
    return f"{head} ({first}); set {key} to {local} or another hub id, or {fetch}"
