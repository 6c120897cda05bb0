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
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from datadream import atomic
from datadream.errors import UserError
from datadream.layout import STORE_FOLDER, StoreLayout, is_fingerprint
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
    """Record that `run_root` uses the store, so that gc keeps what it references. The record
    names the run by its path relative to the store as well as by its absolute path: moving or
    copying a run together with its store keeps the relative one right, and a copy (a run of its
    own, with a store of its own) finds itself through it."""
    atomic.check_writable(store.root, "runtime.store")
    if not store.marker.is_file():
        atomic.write_json(store.marker, {"datadream": "store", "version": 1})
    run_root = run_root.resolve()
    relative = os.path.relpath(run_root, store.root)
    record = store.runs / f"{hashlib.sha256(relative.encode()).hexdigest()[:16]}.json"
    wanted = {"run": str(run_root), "relative": relative}
    try:
        current = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = None
    if current != wanted:
        atomic.write_json(record, wanted)


def recorded_runs(store: StoreLayout, record: Path) -> list[Path]:
    """Where the run that `record` names may be now: relative to the store first (right after the
    two moved or were copied together), then the absolute path it was registered under. Empty
    when the record is not one datadream wrote."""
    try:
        raw = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(raw, dict) or not isinstance(raw.get("run"), str):
        return []
    places = [Path(os.path.normpath(store.root / raw["relative"]))] if isinstance(raw.get("relative"), str) else []
    return list(dict.fromkeys([*places, Path(raw["run"])]))


def check_is_store(store: StoreLayout, proven: bool = False) -> None:
    """`store gc` deletes: it acts only on a folder that datadream made its store. A store made
    before the marker existed is accepted when a run is known to use it (`proven`), and marked."""
    if store.marker.is_file():
        return
    if proven and store.runs.is_dir():
        atomic.write_json(store.marker, {"datadream": "store", "version": 1})
        return
    raise UserError(f"{store.root} is not a datadream store (it has no {store.marker.name}); `store gc` removes"
                    " files only from a store: give the store folder a run uses (runtime.store, or"
                    " datadream-store beside the run), or the run folder itself")


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
    foreign: list[Path]  # entries the store did not write: never touched
    runs: list[Path]  # runs that use the store
    gone_runs: list[Path]  # registered runs whose folder no longer exists (or no longer uses this store)
    bytes: int = 0  # of the removable entries


# What the store writes into each kind of entry (besides temporaries of killed writes): an entry
# holding anything else is not the store's and gc leaves it alone.
_ENTRY_FILES = {
    "adapter": re.compile(r"[A-Za-z0-9_.-]+\.(safetensors|json)"),
    "synthetic": re.compile(r"\d+\.png|\.shard-\d+\.json|\.datadream\.json"),
    "preview": re.compile(r"unadapted-\d+\.png|preview\.json"),
}


def _is_entry_of_store(entry: Path, kind: str) -> bool:
    """A folder named by a fingerprint, holding only files the store writes there."""
    if entry.is_symlink() or not entry.is_dir() or not is_fingerprint(entry.name.removeprefix(".partial-")):
        return False
    if entry.name.startswith(".partial-") and kind != "adapter":
        return False
    for item in entry.iterdir():
        if item.name.startswith(atomic.TMP_PREFIX) and not item.is_symlink():
            continue
        if item.is_symlink() or not item.is_file() or not _ENTRY_FILES[kind].fullmatch(item.name):
            return False
    return True


def collect_garbage(store: StoreLayout, referenced_by: Callable[[Path, Path], list[Path] | None], remove: bool,
                    only: set[Path] | None = None) -> Garbage:
    """Entries (adapters, synthetic classes and their previews, unfinished checkpoints) that no
    registered run references. `referenced_by(run_root, store_root)` returns the store paths a run
    needs (its plan and its links), or None when `run_root` is not a run that uses this store. An
    entry whose lock is held is being written and is left alone, and so is anything the store did
    not write. With `only`, nothing outside it is removed (what the user was shown)."""
    runs: dict[Path, None] = {}
    gone: list[Path] = []
    needed: set[Path] = set()
    for record in sorted(store.runs.glob("*.json")) if store.runs.is_dir() else []:
        places = recorded_runs(store, record)
        if not places:  # the run it named is unknown, and so is what must be kept
            raise UserError(f"store gc: {record} is damaged, so which run it names is unknown; delete it if no"
                            " run of this store is lost (a run registers again with its next stage), then run gc"
                            " again")
        users = []
        for place in places:
            paths = referenced_by(place, store.root)
            if paths is not None:
                users.append(place.resolve())
                needed.update(p.resolve() for p in paths)
        if users:
            runs.update(dict.fromkeys(users))
        else:
            gone.append(places[0])
            if remove:
                record.unlink(missing_ok=True)
    result = Garbage([], [], [], [], list(runs), gone)
    # A class's preview lives and dies with its synthetic entry (same name, written under the lock
    # of the class's first shard): kept, busy or removed exactly when that entry is.
    for folder, kind, lock_kind, owner in ((store.adapters, "adapter", "adapter", store.adapters),
                                           (store.synthetic, "synthetic", "synthetic", store.synthetic),
                                           (store.previews, "preview", "synthetic", store.synthetic)):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(f"{atomic.TMP_PREFIX}gc-") and entry.is_dir() and not entry.is_symlink():
                if remove:  # the bin of a killed gc: what it holds was garbage already
                    shutil.rmtree(entry, ignore_errors=True)
                continue
            if entry.name.startswith(atomic.TMP_PREFIX):
                continue  # a unit's own temporaries: its writer clears them under the unit's lock
            if not _is_entry_of_store(entry, kind):
                result.foreign.append(entry)
                continue
            name = entry.name.removeprefix(".partial-")
            if entry.resolve() in needed or (owner / name).resolve() in needed:
                result.kept.append(entry)
                continue
            # Writers take the unit's lock (an adapter's, or each shard's of a class) and register
            # their run before they write, so an entry that is unreferenced and unlocked here is
            # garbage; a run started during the sweep registers first and is read next time.
            if any(is_locked(path) for path in store.locks.glob(f"{lock_kind}-{name}*.lock")):
                result.busy.append(entry)
                continue
            if only is not None and entry not in only:
                continue
            result.removable.append(entry)
            result.bytes += _size(entry)
            if remove:
                _remove(entry)
    return result


def _remove(entry: Path) -> None:
    # Renamed away first, so that a reader never sees a half-deleted unit as complete.
    bin_ = Path(tempfile.mkdtemp(prefix=f"{atomic.TMP_PREFIX}gc-", dir=entry.parent))  # cleared by the next gc if killed
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
