"""The content-addressed store: finished adapters and synthetic classes under their fingerprint.

A run does not own its adapters and images: it shows them (RUN/adapters/<unit> and
RUN/synthetic/<class> are folders of hard links to the store's files, or symbolic links to the
entries where the store is on another file system). Any run, benchmark cell or machine that
needs a unit with the same fingerprint finds it done, so trying five classifier settings on one
synthetic set costs five classifier trainings and nothing more.

`runtime.store` chooses the store (default: `datadream-store` beside the run folder; on a cluster,
a path on the shared file system). Writers never collide: every unit is written under a temporary
name and renamed into place while its lock (datadream.locks) is held. The store records which runs
use it (STORE/runs/), so `datadream store gc` removes only what no run references.

Torch-free.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from datadream import atomic
from datadream.errors import UserError
from datadream.layout import STORE_FOLDER, RunLayout, StoreLayout, is_safe_component
from datadream.locks import is_locked

log = logging.getLogger(__name__)


def store_root(setting: str, run_root: Path) -> Path:
    return Path(setting).expanduser().resolve() if setting else run_root.resolve().parent / STORE_FOLDER


def open_store(setting: str, run_root: Path) -> StoreLayout:
    store = StoreLayout(store_root(setting, run_root))
    if store.root.exists() and not store.root.is_dir():
        raise UserError(f"runtime.store: {store.root} is not a folder; point runtime.store at a folder")
    return store


def register_run(store: StoreLayout, run_root: Path) -> None:
    """Record that `run_root` uses the store, so that gc keeps what it references."""
    run_root = run_root.resolve()
    record = store.runs / f"{hashlib.sha256(str(run_root).encode()).hexdigest()[:16]}.json"
    if not record.is_file():
        atomic.check_writable(store.root, "runtime.store")
        atomic.write_json(record, {"run": str(run_root)})


VIEW_MARKER = ".datadream-view"  # names a folder of the run as our view of a store entry


def link(path: Path, target: Path) -> None:
    """Make `path` (a folder of the run) show the store entry `target`: a folder of hard links to
    its files, so that the run reads as plain files (an image folder for any loader, `rglob`
    included) at no extra disk. Where hard links cannot be made (the store on another file
    system), a symbolic link to the entry instead. A view is refreshed when the entry changed
    (an image generated again); a real folder that is not our view is a user's data, never
    replaced."""
    hardlinks = _can_hardlink(path, target)
    if path.is_symlink():
        if not hardlinks and os.readlink(path) == _link_text(path, target):
            return
    elif path.exists():
        if not (path / VIEW_MARKER).is_file():
            raise UserError(f"{path} is a folder datadream did not make (made by an older datadream, or copied by"
                            " hand) where the run shows a unit of the store; move it away and run the command again")
        if _view_is_current(path, target):
            return
    if hardlinks:
        try:
            with atomic.staged_directory(path) as staging:
                for entry in target.iterdir():
                    if entry.is_file() and not entry.is_symlink() and not entry.name.startswith(atomic.TMP_PREFIX):
                        os.link(entry, staging / entry.name)
                # Relative, like a symbolic link: identical runs hold identical bytes.
                (staging / VIEW_MARKER).write_text(f"{os.path.relpath(target, path.parent)}\n", encoding="utf-8")
            return
        except OSError as err:
            # Two workers refreshing one view at once: the second rename finds the first's view.
            if path.is_dir() and not path.is_symlink() and _view_is_current(path, target):
                return
            if err.errno not in _NO_HARD_LINKS:
                raise
    _symlink(path, target)


# What a file system that refuses hard links answers (some network and FUSE file systems).
_NO_HARD_LINKS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def _symlink(path: Path, target: Path) -> None:
    if path.exists() and not path.is_symlink():
        shutil.rmtree(path)  # our view (checked by the caller): the store keeps the files
    temporary = path.parent / f"{atomic.TMP_PREFIX}link-{path.name}-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    os.symlink(_link_text(path, target), temporary, target_is_directory=True)
    os.replace(temporary, path)
    atomic.fsync_directory(path.parent)


def _view_is_current(view: Path, target: Path) -> bool:
    """Every file of the entry is in the view as the same inode, and nothing else is."""
    wanted = {e.name: e.stat() for e in target.iterdir()
              if e.is_file() and not e.is_symlink() and not e.name.startswith(atomic.TMP_PREFIX)}
    present = {e.name for e in view.iterdir()} - {VIEW_MARKER}
    if present != set(wanted):
        return False
    for name, info in wanted.items():
        mine = (view / name).stat()
        if (mine.st_ino, mine.st_dev) != (info.st_ino, info.st_dev):
            return False
    return True


def _can_hardlink(path: Path, target: Path) -> bool:
    """Whether the run's folder and the store entry are on one file system (hard links work)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.stat(path.parent).st_dev == os.stat(target).st_dev


def _link_text(path: Path, target: Path) -> str:
    relative = os.path.relpath(target, path.parent)
    # Beside the run (the default), a relative link survives moving run and store together.
    return relative if not relative.startswith(("../../../", "..\\..\\..\\")) else str(target)


@dataclass
class Garbage:
    kept: list[Path]
    removable: list[Path]
    busy: list[Path]
    runs: list[Path]  # runs that use the store
    gone_runs: list[Path]  # registered runs whose folder no longer exists
    bytes: int = 0  # of the removable entries


def collect_garbage(store: StoreLayout, referenced_by, remove: bool) -> Garbage:
    """Entries (adapters, synthetic classes and their previews, unfinished checkpoints) that no
    registered run references. `referenced_by(run_root)` returns the store paths a run needs (its
    plan and its links). An entry whose lock is held is being written and is left alone."""
    runs, gone = [], []
    needed: set[Path] = set()
    for record in sorted(store.runs.glob("*.json")) if store.runs.is_dir() else []:
        try:
            run_root = Path(json.loads(record.read_text(encoding="utf-8"))["run"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("store gc: %s is damaged; ignoring it", record)
            continue
        if RunLayout(run_root).config.is_file():
            runs.append(run_root)
            needed.update(p.resolve() for p in referenced_by(run_root))
        else:
            gone.append(run_root)
            if remove:
                record.unlink(missing_ok=True)
    result = Garbage([], [], [], runs, gone)
    # A class's preview lives and dies with its synthetic entry (same name, written under the lock
    # of the class's first shard): kept, busy or removed exactly when that entry is.
    for folder, kind, owner in ((store.adapters, "adapter", store.adapters),
                                (store.synthetic, "synthetic", store.synthetic),
                                (store.previews, "synthetic", store.synthetic)):
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            name = entry.name.removeprefix(".partial-")
            if not is_safe_component(name) or entry.name.startswith(atomic.TMP_PREFIX):
                continue
            if entry.resolve() in needed or (owner / name).resolve() in needed:
                result.kept.append(entry)
                continue
            # Writers take the unit's lock (an adapter's, or each shard's of a class) and register
            # their run before they write, so an entry that is unreferenced and unlocked here is
            # garbage; a run started during the sweep registers first and is read next time.
            if any(is_locked(path) for path in store.locks.glob(f"{kind}-{name}*.lock")):
                result.busy.append(entry)
                continue
            result.removable.append(entry)
            result.bytes += _size(entry)
            if remove:
                _remove(entry)
    return result


def _remove(entry: Path) -> None:
    # Renamed away first, so that a reader never sees a half-deleted unit as complete.
    bin_ = Path(tempfile.mkdtemp(prefix=f"{atomic.TMP_PREFIX}gc-", dir=entry.parent))
    try:
        os.replace(entry, bin_ / entry.name)
    except OSError as err:
        if err.errno != errno.ENOENT:
            raise
    shutil.rmtree(bin_, ignore_errors=True)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
