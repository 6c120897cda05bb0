"""One lock per unit of work, safe across processes and machines that share a file system.

The lock is the kernel's (`flock`): it is released when its process dies, even by `kill -9`, and
on NFS (Linux clients map it to NFS byte-range locks) and Lustre mounted with `flock` it holds
across machines; BeeGFS only with `tuneUseGlobalFileLocks`, and other shared file systems should
be checked (docs/scaling.md has a two-machine test). Inside the
lock file the holder writes who it is (host, pid, the process's start time) and keeps the file's
time fresh (a heartbeat), which gives two things the kernel lock alone does not:
- a clear line naming the owner when a unit is busy ("held by gpu-07 pid 4242 since 12:03");
- a second guard where a file system does not share kernel locks between machines: a lock whose
  file names another host with a fresh heartbeat counts as held even when `flock` succeeds.
An owner that died leaves its name in the file but no kernel lock (and, on another host, a
heartbeat that stops): the next process takes the lock over and says so.

Torch-free: `datadream status` reads locks without loading a model.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from datadream import atomic
from datadream.errors import UserError

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0
# A lock file naming another host whose heartbeat is older than this belongs to a dead owner.
STALE_AFTER_SECONDS = 300.0
WAIT_LOG_SECONDS = 60.0

try:
    import fcntl
except ImportError:  # not POSIX: the owner record and heartbeat are the only guard
    fcntl = None  # type: ignore[assignment]


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc): with the pid, it tells a
    live owner from a new process that reuses a dead owner's pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    return atomic.process_exists(pid) and (started is None or _process_start(pid) in (None, started))


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: str | None  # the process's start time (see _process_start)
    since: float  # when it took the lock

    @staticmethod
    def me() -> "Owner":
        return Owner(socket.gethostname(), os.getpid(), _process_start(os.getpid()), time.time())

    def describe(self) -> str:
        return f"{self.host} pid {self.pid} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.since))}"

    def is_me(self) -> bool:
        return self.host == socket.gethostname() and self.pid == os.getpid()


def read_owner(path: Path) -> Owner | None:
    """Who the lock file names (None: nobody, or not a record we wrote)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8") or "null")
        return Owner(str(raw["host"]), int(raw["pid"]), raw.get("started"), float(raw["since"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _owner_is_live(owner: Owner, path: Path) -> bool:
    """Whether a named owner still holds the unit although the kernel lock was free for us."""
    if owner.host == socket.gethostname():
        return not owner.is_me() and _alive(owner.pid, owner.started)
    try:
        heartbeat = path.stat().st_mtime
    except OSError:
        return False
    return time.time() - heartbeat < STALE_AFTER_SECONDS


class Busy(Exception):
    """The unit is held by a live owner."""

    def __init__(self, owner: Owner | None):
        super().__init__(owner.describe() if owner else "another process")
        self.owner = owner


class HeldLock:
    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name=f"lock-heartbeat-{path.name}", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.fd)
            except OSError:
                pass  # the next beat tries again; a missed one is not an error

    def release(self) -> None:
        self._stop.set()
        try:
            os.ftruncate(self.fd, 0)  # nobody holds it now: no owner to report
        finally:
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def try_lock(path: Path) -> HeldLock:
    """Take the lock at once, or raise Busy naming the live owner."""
    atomic.own_folder(path.parent)
    fd = atomic.open_lock_file(path)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy(read_owner(path)) from None
        previous = read_owner(path)
        if previous is not None:
            if _owner_is_live(previous, path):
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                raise Busy(previous)
            log.warning("%s: taking over the lock of %s, which is no longer running", path, previous.describe())
        me = Owner.me()
        record = json.dumps({"host": me.host, "pid": me.pid, "started": me.started, "since": me.since}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    return HeldLock(path, fd)


def wait_lock(path: Path, what: str, poll: float = 0.5) -> HeldLock:
    """Take the lock, waiting while a live owner holds it (one log line a minute names it)."""
    last_log = 0.0
    while True:
        try:
            return try_lock(path)
        except Busy as busy:
            now = time.monotonic()
            if now - last_log >= WAIT_LOG_SECONDS:
                log.info("%s: waiting for %s, which is working on it", what, busy)
                last_log = now
            time.sleep(poll)
            poll = min(poll * 1.5, 2.0)


def busy_error(what: str, busy: Busy) -> UserError:
    return UserError(f"{what} is being worked on by {busy}; wait for it to finish (or stop it) and run this"
                     " command again, or set runtime.wait_for_locks=true to wait")


def claim(path: Path, what: str, wait: bool, defer: bool = False) -> HeldLock | None:
    """The unit's lock. `wait`: wait while a live owner holds it. Otherwise taken at once, and a
    busy unit is refused with one line, or, with `defer` (a stage working through many units under
    runtime.wait_for_locks), left for later: None, and the caller does its other units first, then
    comes back to this one with `wait`, to do it only if its owner died."""
    if wait:
        return wait_lock(path, what)
    try:
        return try_lock(path)
    except Busy as busy:
        if not defer:
            raise busy_error(what, busy) from None
        log.info("%s is being worked on by %s; doing the others first", what, busy)
        return None


@contextmanager
def unit_lock(path: Path, what: str, wait: bool = True) -> Iterator[None]:
    """Hold the unit's lock for the block; `wait=False` refuses a busy unit with one line."""
    held = claim(path, what, wait)
    try:
        yield
    finally:
        held.release()


def is_locked(path: Path) -> Owner | None | bool:
    """False when nobody holds the lock; otherwise its owner (None when it names nobody). Never
    creates the lock file (status must work on a read-only store)."""
    if not path.is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return read_owner(path)
            fcntl.flock(fd, fcntl.LOCK_UN)
        owner = read_owner(path)
        return owner if owner is not None and _owner_is_live(owner, path) else False
    finally:
        os.close(fd)
