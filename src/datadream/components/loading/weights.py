"""Which weights are the official release: the table of known files and their sha256, and the
check of a folder or file against it.

The table lives in `datadream/resources/model_hashes.json` (one place; sources in
docs/models.md). A file whose official hash could not be confirmed is listed with `null` and
reported as "unknown", never guessed. Hashing a 3.5 GB UNet takes many seconds, so a file's hash
is computed once and kept, keyed by (real path, size, mtime), in a small JSON file under
`$DATADREAM_CACHE` (default `~/.cache/datadream`). Torch-free: the CLI uses it directly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from datadream import atomic
from datadream.config import DEFAULT_GENERATOR

log = logging.getLogger(__name__)

SOURCE_MARKER = "datadream-source.json"  # written by `datadream models download --to DIR`
HASH_CACHE_NAME = "sha256-cache.json"
_HF_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/[^/]+")


@dataclass(frozen=True)
class Expected:
    sha256: str | None  # None: no official hash could be confirmed
    size: int | None = None


@dataclass(frozen=True)
class KnownModel:
    key: str
    title: str
    repo_ids: tuple[str, ...]
    files: dict[str, Expected] = field(default_factory=dict)  # path inside a diffusers folder
    single_files: dict[str, Expected] = field(default_factory=dict)  # file name of a checkpoint


@dataclass(frozen=True)
class FileCheck:
    path: str  # as listed in the table
    status: str  # ok, MISMATCH, unknown, missing
    detail: str = ""

    def line(self) -> str:
        return f"  {self.status:<9} {self.path}{'  ' + self.detail if self.detail else ''}"


def _load_table() -> dict[str, KnownModel]:
    raw = json.loads(resources.files("datadream").joinpath("resources/model_hashes.json").read_text("utf-8"))
    table = {}
    for key, entry in raw.items():
        if key.startswith("_"):
            continue
        table[key] = KnownModel(
            key=key,
            title=entry["title"],
            repo_ids=tuple(entry["repo_ids"]),
            files={p: Expected(**e) for p, e in entry.get("files", {}).items()},
            single_files={p: Expected(**e) for p, e in entry.get("single_files", {}).items()},
        )
    return table


# Keyed by model key; tests register their own tiny models here.
KNOWN_MODELS: dict[str, KnownModel] = _load_table()


def register(model: KnownModel) -> None:
    KNOWN_MODELS[model.key] = model


def known_by_repo(repo_id: str) -> KnownModel | None:
    wanted = repo_id.strip().lower()
    for model in KNOWN_MODELS.values():
        if wanted in (r.lower() for r in model.repo_ids):
            return model
    return None


def default_known() -> KnownModel:
    model = known_by_repo(DEFAULT_GENERATOR)
    assert model is not None, "the default generator must be in the hash table"
    return model


def source_of_folder(folder: Path) -> str | None:
    """The hub id a local folder came from: the marker `models download --to` writes, or the
    repo named by a Hugging Face cache snapshot path."""
    marker = folder / SOURCE_MARKER
    if marker.is_file():
        try:
            return str(json.loads(marker.read_text("utf-8"))["source"])
        except (ValueError, KeyError, TypeError):
            return None
    match = _HF_SNAPSHOT.search(folder.resolve().as_posix())
    return f"{match['org']}/{match['name']}" if match else None


def identify(model: str) -> KnownModel | None:
    """The table entry for a hub id, a folder that says where it came from, or a known
    checkpoint file name; None for anything else (custom or tiny models are not checked)."""
    path = Path(model).expanduser()
    if path.is_file():
        return next((m for m in KNOWN_MODELS.values() if path.name in m.single_files), None)
    if path.is_dir():
        source = source_of_folder(path)
        return known_by_repo(source) if source else None
    return known_by_repo(model)


def cache_dir() -> Path:
    if os.environ.get("DATADREAM_CACHE"):
        return Path(os.environ["DATADREAM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "datadream"


def _read_cache(path: Path) -> dict:
    try:
        value = json.loads(path.read_text("utf-8"))
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, read from the cache while its (real path, size, mtime) are unchanged."""
    real = Path(os.path.realpath(path))
    stat = real.stat()
    cache_file = cache_dir() / HASH_CACHE_NAME
    entry = _read_cache(cache_file).get(str(real))
    if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return str(entry["sha256"])
    log.info("hashing %s (%.1f GB, once)", path, stat.st_size / 1e9)
    digest = _hash_file(real)
    # Re-read before writing: another process may have added entries meanwhile.
    cache = _read_cache(cache_file)
    cache[str(real)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    try:
        atomic.write_json(cache_file, cache)
    except OSError as err:  # a read-only home must not stop a run; the hash is just not kept
        log.debug("hash cache not written: %s", err)
    return digest


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(16 * 1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file(path: Path, name: str, expected: Expected) -> FileCheck:
    if not path.is_file():
        return FileCheck(name, "missing")
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        # A truncated download or another file: no need to hash gigabytes to know.
        return FileCheck(name, "MISMATCH", f"size {size} bytes, official {expected.size}")
    if expected.sha256 is None:
        return FileCheck(name, "unknown", "no official hash known")
    actual = file_sha256(path)
    if actual != expected.sha256:
        return FileCheck(name, "MISMATCH", f"sha256 {actual[:16]}..., official {expected.sha256[:16]}...")
    return FileCheck(name, "ok")


def check_folder(folder: Path, model: KnownModel) -> list[FileCheck]:
    """One result per file of the table, in table order."""
    return [check_file(folder / name, name, expected) for name, expected in model.files.items()]


def failed(checks: list[FileCheck]) -> list[FileCheck]:
    return [c for c in checks if c.status in ("MISMATCH", "missing")]


def warn_if_not_official(checks: list[FileCheck], model: KnownModel, where: str) -> None:
    """Loading goes on (the user chose these weights), but never silently."""
    for check in checks:
        if check.status == "MISMATCH":
            log.warning(
                "WARNING: %s: %s is not the official %s file (%s); results will differ from the"
                " paper's. Re-download it: datadream models download", where, check.path, model.title,
                check.detail,
            )
