"""`datadream models download|check`: fetch only the files a model needs, and check them against
the official hashes (src/datadream/resources/model_hashes.json; sources in docs/models.md).

Torch-free: both answer without importing torch or diffusers.
"""

from __future__ import annotations

from pathlib import Path

from datadream import atomic
from datadream.components.loading import hub, weights
from datadream.components.loading.hub import NEEDED_PATTERNS, explain, is_hub_id
from datadream.config import DEFAULT_GENERATOR
from datadream.errors import UserError


def _key_for(folder: Path) -> str:
    return "generator.model" if (folder / "model_index.json").is_file() else "classifier.model"


def _report(checks: list[weights.FileCheck], what: str) -> None:
    for check in checks:
        print(check.line())
    bad = weights.failed(checks)
    if bad:
        names = ", ".join(f"{c.path} ({c.status.lower()})" for c in bad)
        raise UserError(f"{what}: {len(bad)} file(s) missing or not the official release: {names}")


def download(model: str | None, to: Path | None) -> int:
    """Fetch the safetensors weights, configs and tokenizer of a hub model (resuming a partial
    download), check them, and print the setting that uses them."""
    model = model or DEFAULT_GENERATOR
    if not is_hub_id(model):
        raise UserError(f"models download: '{model}' is not a hub id (org/name); to check a local copy use"
                        f" `datadream models check {model}`")
    where = to.resolve() if to else None
    print(f"downloading {model}: safetensors weights, configs and tokenizer only (an interrupted download"
          " resumes when run again)", flush=True)
    try:
        folder = hub.fetch_snapshot(model, NEEDED_PATTERNS, local_dir=where)
    except (OSError, ValueError) as err:
        raise UserError(explain("hub", model, "generator.model", "diffusers", err)) from None
    if not any(folder.rglob("*.safetensors")):
        raise UserError(f"models download: {model} has no safetensors weights (only pickled ones, or none);"
                        " datadream loads safetensors only")
    if where is not None:
        atomic.write_json(where / weights.SOURCE_MARKER, {"source": model})
    key = _key_for(folder)
    print(f"files: {folder}")
    if where is not None:
        print(f"use:   --set {key}={where}")
    else:
        print(f"use:   --set {key}={model}  (read from the Hugging Face cache; also offline, with HF_HUB_OFFLINE=1)")
    known = weights.known_by_repo(model)
    if known is None:
        print(f"no official hashes are known for {model}: its files were not checked")
        return 0
    print(f"checking against the official {known.title}:")
    _report(weights.check_folder(folder, known), model)
    return 0


def check(model: str | None) -> int:
    """One line per file (ok / MISMATCH / unknown / missing) for a folder, a checkpoint file or a
    hub id's cached snapshot; a UserError (exit 2) when a file is missing or differs."""
    model = model or DEFAULT_GENERATOR
    path = Path(model).expanduser()
    if path.is_file():
        return _check_single_file(path)
    if path.is_dir():
        folder, known = path, weights.identify(str(path))
        if known is None:
            known = weights.default_known()
            print(f"{path} does not say where it came from; checking it as {known.title}")
    elif is_hub_id(model):
        known = weights.known_by_repo(model)
        if known is None:
            raise UserError(f"models check: no official hashes are known for '{model}'; known models:"
                            f" {', '.join(r for m in weights.KNOWN_MODELS.values() for r in m.repo_ids)}")
        try:
            folder = hub.fetch_snapshot(model, NEEDED_PATTERNS, local_only=True)
        except (OSError, ValueError):
            raise UserError(f"models check: '{model}' is not in the Hugging Face cache; fetch it with"
                            f" `datadream models download {model}`") from None
    else:
        raise UserError(f"models check: '{model}' is neither an existing folder or file nor a hub id")
    print(f"{model}: {folder}, checked against the official {known.title}:")
    _report(weights.check_folder(folder, known), model)
    print(f"{model}: every file with a known official hash matches")
    return 0


def _check_single_file(path: Path) -> int:
    """A checkpoint file is matched by its name, or, renamed, by its content."""
    known = weights.identify(str(path))
    if known is not None:
        print(f"{path}: checked against the official {known.title}:")
        _report([weights.check_file(path, path.name, known.single_files[path.name])], str(path))
        return 0
    _require_safetensors(path)
    digest = weights.file_sha256(path)
    for model in weights.KNOWN_MODELS.values():
        for name, expected in model.single_files.items():
            if expected.sha256 == digest:
                print(f"  ok        {path.name}  (the official {name} of {model.title}, renamed)")
                return 0
    print(f"  unknown   {path.name}  sha256 {digest}: not an official checkpoint datadream knows")
    return 0


def _require_safetensors(path: Path) -> None:
    """safetensors' own header parser: any other file (pickled, damaged, not weights at all) is
    something datadream would refuse to load, not an unknown checkpoint."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except SafetensorError as err:
        raise UserError(f"models check: {path} is not a safetensors file ({err}); datadream loads safetensors"
                        " weights only: check the file, or fetch the model with `datadream models download`") from None
