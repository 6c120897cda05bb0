"""Write-then-rename helpers: a reader (or a resumed run) sees a file or folder either complete
or not at all, even after `kill -9`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

TMP_PREFIX = ".tmp-"
# mkstemp/mkdtemp create private (0600/0700) entries; finished outputs get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; on success it replaces `final` in one
    rename. On failure it is removed and `final` is untouched."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=final.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_UMASK)
        # Old aside, new in, old deleted: a kill at any point leaves `final` complete (old or
        # new) or, between the two renames only, the old one under a temporary name.
        retired = None
        if final.exists():
            retired = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}old-{final.name}-", dir=final.parent))
            os.replace(final, retired / final.name)
        os.replace(staging, final)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def remove_stale_temporaries(folder: Path) -> None:
    """Leftovers of a killed run: never complete, always safe to delete."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith(TMP_PREFIX):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
