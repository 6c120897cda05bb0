"""Write-then-rename helpers: a reader (or a resumed run) sees a file or folder either complete
or not at all, even after `kill -9` or a power cut.

A rename is only durable once the renamed data and the directory entry are on disk, so every
commit fsyncs the new file (or every file of a new folder) before the rename and the parent
directory after it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from datadream.errors import UserError

TMP_PREFIX = ".tmp-"
# Every temporary names the process that made it (pid@host), so that a later command can tell the
# leftovers of a killed one from the work in progress of a live one, without a lock.
_HOST = socket.gethostname()
_OWNER_IN_NAME = re.compile(r"-(\d+)@(.+)-[a-z0-9_]+$")
# mkstemp/mkdtemp create private (0600/0700) entries; finished outputs get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)


def _owned_prefix(name: str) -> str:
    return f"{TMP_PREFIX}{name}-{os.getpid()}@{_HOST}-"


def _discard(entry: Path, racing: bool = False) -> None:
    """Remove a temporary file or folder (a link as a link). `racing`: another process may be
    removing the same one, so what is already gone is no error."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=racing)
    else:
        entry.unlink(missing_ok=True)


def fsync_directory(folder: Path) -> None:
    """Make a rename inside `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the data itself was synced
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (written by libraries that do not sync)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(Path(folder))


def write_bytes(path: Path, data: bytes, sync_directory: bool = True) -> None:
    """`sync_directory=False` leaves the rename's durability to a later fsync of the same folder
    (a synthetic image's is made durable by its class marker, written beside it when the class
    completes): one directory fsync per class instead of one per image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_owned_prefix(path.name), dir=path.parent)
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
    if sync_directory:
        fsync_directory(path.parent)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; on success it replaces `final` in one
    rename. On failure it is removed and `final` is untouched."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_owned_prefix(final.name), dir=final.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_UMASK)
        fsync_tree(staging)
        # Old aside, new in, old deleted: a kill at any point leaves `final` complete (old or
        # new) or, between the two renames only, the old one under a temporary name.
        retired = None
        if final.is_symlink() or final.exists():
            retired = Path(tempfile.mkdtemp(prefix=_owned_prefix(f"old-{final.name}"), dir=final.parent))
            os.replace(final, retired / final.name)
        os.replace(staging, final)
        fsync_directory(final.parent)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def remove_stale_temporaries(folder: Path, name: str) -> None:
    """Leftovers of a killed write of `name` (by write_bytes or staged_directory): never complete,
    and safe to delete while the caller holds the lock of the unit that writes `name`; other units'
    temporaries in the same folder are left alone."""
    if not folder.is_dir():
        return
    prefixes = (f"{TMP_PREFIX}{name}-", f"{TMP_PREFIX}old-{name}-")
    for entry in folder.iterdir():
        if entry.name.startswith(prefixes):
            _discard(entry)


def own_folder(path: Path) -> Path:
    """`path` as a folder to write in, made if missing. A symbolic link there is refused: it would
    send our writes (and the clean-ups that go with them) into a folder that is not ours."""
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link; datadream writes only into folders of its own: remove the"
                        " link and run the command again")
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_dead_temporaries(folder: Path, name: str | None = None) -> None:
    """Leftovers of killed writes in `folder` (of `name` only, when given): the temporaries whose
    process, on this machine, is gone. Safe without a lock; those of another machine, or of an
    older datadream (no owner in the name), are left alone."""
    if not folder.is_dir() or folder.is_symlink():
        return
    prefixes = (f"{TMP_PREFIX}{name}-", f"{TMP_PREFIX}old-{name}-") if name is not None else (TMP_PREFIX,)
    for entry in folder.iterdir():
        owner = _OWNER_IN_NAME.search(entry.name) if entry.name.startswith(prefixes) else None
        if owner is not None and owner[2] == _HOST and not process_exists(int(owner[1])):
            _discard(entry, racing=True)


def process_exists(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (maybe a newer one that reuses the number)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return True


def check_writable(folder: Path, setting: str = "") -> None:
    """Fail before hours of work rather than when the result is saved."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        hint = f" ({setting})" if setting else ""
        raise UserError(f"cannot write to {folder}{hint}: {err.strerror or err}; fix its permissions or"
                        " free space, then run the same command again") from None


def open_lock_file(path: Path) -> int:
    """Open (or create) a lock file without following a link and without blocking on a FIFO;
    anything but a plain file of our own is an error, never a file to truncate."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EMLINK):
            raise UserError(f"{path} is a symbolic link, not a datadream lock; remove it and run the"
                            " command again") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise UserError(f"{path} is not a plain lock file (a link or special file); remove it and run"
                        " the command again")
    return fd
