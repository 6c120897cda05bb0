"""The JSON markers that record what a unit of work was made from, and the records of the files
a unit holds (size and sha256), so that a damaged file is never taken for complete work."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from datadream.errors import UserError


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker's content, None when there is none; a damaged one is a clear error."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        value = None
    if not isinstance(value, dict):
        raise UserError(f"{path} is damaged (not the JSON datadream wrote); move its folder away to redo that work")
    return value


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"size": len(data), "sha256": sha256_bytes(data)}


def record_files(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """{relative name: {size, sha256}} of the files a unit's marker vouches for."""
    return {name: file_record(folder / name) for name in sorted(names)}


def damaged_file(folder: Path, records: Any, hashes: bool = True) -> str | None:
    """The first file under `folder` that differs from its record (missing, another size, another
    hash, or not a plain file), or None when all match. `hashes=False` compares sizes only: for
    looking (status, plans, the run's views), where reading every file again would cost more than
    the answer is worth; a stage that uses the files checks their hashes."""
    if not isinstance(records, dict) or not records:
        return str(folder)
    for name, record in sorted(records.items()):
        path = folder / name
        escapes = Path(name).is_absolute() or ".." in Path(name).parts
        if escapes or not isinstance(record, dict) or os.path.islink(path) or not path.is_file():
            return str(path)
        if path.stat().st_size != record.get("size") or (hashes and file_record(path)["sha256"] != record.get("sha256")):
            return str(path)
    return None


def log_timing(path: Path, row: dict[str, Any]) -> None:
    """Append a timing to the run's log: kept out of the markers, which must be identical for
    identical runs. A log line is not an output, so a plain append is enough."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
