"""Creating and opening a run folder (RUN/config.yaml + RUN/fewshot.json)."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from datadream import atomic
from datadream.config import Config, describe_differences, read_config_file
from datadream.data.fewshot import FewShotManifest, build_manifest, read_manifest
from datadream.data.leaks import check_no_leaks
from datadream.data.sources import load_view
from datadream.errors import UserError
from datadream.layout import RunLayout

log = logging.getLogger(__name__)


@dataclass
class Run:
    layout: RunLayout
    config: Config
    manifest: FewShotManifest


def init_run(config: Config, root: Path) -> Run:
    """Create RUN, or accept it unchanged when it already holds this very config. A folder that
    holds another config, or anything that is not a run, is refused and left untouched."""
    layout = RunLayout(Path(root).resolve())
    if layout.config.exists():
        existing = read_config_file(layout.config)
        changes = describe_differences(existing, config, results_only=True)
        if changes:
            raise UserError(
                f"{layout.root} holds a run with a different config ({'; '.join(changes[:3])}"
                f"{'; ...' if len(changes) > 3 else ''}); choose a new run folder"
            )
        tuning = describe_differences(existing, config)
        if tuning:  # device, batch or worker settings: they change speed, not results
            atomic.write_text(layout.config, config.to_yaml())
            log.info("run %s: updated %s", layout.root, "; ".join(tuning))
        if layout.fewshot.exists():
            log.info("run %s already initialised with this config", layout.root)
            return open_run(layout.root)
    elif layout.root.exists() and any(layout.root.iterdir()):
        raise UserError(f"{layout.root} is not empty and holds no datadream run; choose an empty or new folder")
    # Everything is checked before anything is written: bad data leaves no run behind.
    view = load_view(config.data)
    manifest = build_manifest(config.data, view)
    check_no_leaks(view, manifest)
    layout.root.mkdir(parents=True, exist_ok=True)
    atomic.write_text(layout.config, config.to_yaml())
    atomic.write_text(layout.fewshot, manifest.to_json())
    log.info("initialised %s: %d classes, %d shots each", layout.root, len(manifest.classes), manifest.shots)
    return Run(layout, config, manifest)


def open_run(root: Path) -> Run:
    layout = RunLayout(Path(root).resolve())
    if not layout.config.is_file():
        raise UserError(f"{layout.root} is not a datadream run (no config.yaml); create it with `datadream init CONFIG RUN`")
    return Run(layout, read_config_file(layout.config), read_manifest(layout.fewshot))


@contextmanager
def stage_lock(run: Run, stage: str) -> Iterator[None]:
    """One process per stage of a run: a second one would delete the first one's temporaries.
    The lock is the kernel's (flock), so it is released when its process dies, even by kill -9."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    path = run.layout.root / f".{stage}.lock"
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another datadream process is running '{stage}' on {run.layout.root}; wait for it"
                " to finish (or stop it) and run this command again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()
