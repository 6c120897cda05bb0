"""`datadream status RUN` and `datadream store gc`: what a run (or a store) holds, from the files
alone. Torch-free: it answers at once, on a login node or while workers are busy."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

from datadream.errors import UserError
from datadream.layout import RunLayout, StoreLayout
from datadream.locks import is_locked
from datadream.runs import open_run
from datadream.store import Garbage, check_is_store, collect_garbage, recorded_runs
from datadream.units import STAGES, adapter_specs, plan_work, store_of, synthetic_specs


def status_text(root: Path) -> str:
    run = open_run(root)
    from datadream import artifacts

    units = plan_work(run)
    facts = artifacts.RunFacts(run)
    states = {u.id: facts.state(u) for u in units}
    store = store_of(run)
    lines = [f"run:    {run.layout.root}", f"store:  {store.root}", "",
             f"{'stage':<11} {'units':>6} {'complete':>9} {'running':>8} {'pending':>8}"]
    for stage in STAGES:
        mine = [u for u in units if u.stage == stage]
        if not mine:
            continue
        counts = Counter(states[u.id] for u in mine)
        lines.append(f"{stage:<11} {len(mine):>6} {counts['complete']:>9} {counts['running']:>8} {counts['pending']:>8}")
    running = [u for u in units if states[u.id] == "running"]
    for unit in running[:10]:
        owner = _owner(run, store, unit)
        lines.append(f"  running: {unit.id}" + (f" ({owner})" if owner else ""))
    if len(running) > 10:
        lines.append(f"  ... and {len(running) - 10} more running")
    pending = [u for u in units if states[u.id] != "complete"]
    until = run.config.runtime.until
    lines += ["", ("complete" if until == "evaluate" else
                   f"complete up to {until} (runtime.until); `datadream run CONFIG {run.layout.root}` without --until"
                   " continues with the classifier") if not pending else
              f"next: `datadream run CONFIG {run.layout.root}` (or a runner) does the {len(pending)} unit(s) left"]
    return "\n".join(lines) + "\n"


def _owner(run, store: StoreLayout, unit) -> str:
    if unit.stage == "adapt":
        specs = {s.name: s for s in adapter_specs(run)}
        paths = [store.lock(specs[name].lock) for name in unit.members]
    elif unit.stage == "synthesize":
        slug, start = unit.members[0].rsplit("/", 1)
        spec = next(s for s in synthetic_specs(run) if s.cls.slug == slug)
        paths = [store.lock(spec.shard_lock(int(start)))]
    else:
        paths = [run.layout.lock(unit.stage)]
    for path in paths:
        owner = is_locked(path)
        if owner:
            return owner.describe()
    return ""


def referenced(run_root: Path, store_root: Path) -> list[Path] | None:
    """The store entries a run needs: its adapters and synthetic classes (planned or linked; a
    class's preview goes with the class, see store.collect_garbage). None when `run_root` is not a
    run, or a run of another store (the original of a copied run and store names the original's)."""
    if not RunLayout(run_root).config.is_file():
        return None
    try:
        run = open_run(run_root)
        store = store_of(run)
    except UserError as err:  # what it needs is unknown: nothing may be removed on a guess
        raise UserError(f"store gc: {run_root}, a run that uses this store, cannot be read ({err}); mend it or"
                        " move it away, then run gc again") from None
    if store.root.resolve() != store_root.resolve():
        return None
    paths = [store.adapter(s.fingerprint) for s in adapter_specs(run)]
    paths += [store.adapter_checkpoint(s.fingerprint) for s in adapter_specs(run)]
    paths += [store.synthetic_class(s.fingerprint) for s in synthetic_specs(run)]
    for folder in (run.layout.adapters, run.layout.synthetic):
        if folder.is_dir():
            paths += [entry.resolve() for entry in folder.iterdir() if entry.is_symlink()]
    return paths


def gc_store(target: Path) -> StoreLayout:
    """The store `target` means (a store, or a run whose store is meant), once it is shown to be
    a datadream store: `store gc` deletes, so a folder that merely looks like one is refused."""
    target = target.resolve()
    if RunLayout(target).config.is_file():
        store = store_of(open_run(target))
        check_is_store(store, proven=True)
        return store
    if not target.is_dir():
        raise UserError(f"{target} is neither a datadream store nor a run folder")
    store = StoreLayout(target)
    # Only a store without its marker (an older datadream's) needs a run to vouch for it.
    records = sorted(store.runs.glob("*.json")) if store.runs.is_dir() and not store.marker.is_file() else []
    check_is_store(store, proven=any(referenced(place, store.root) is not None
                                     for record in records for place in recorded_runs(store, record)))
    return store


def gc_listing(store: StoreLayout, garbage: Garbage, removed: bool) -> str:
    verb = "removed" if removed else "would remove"
    lines = [f"store: {store.root}", f"runs using it: {len(garbage.runs)}"
             + (f" ({len(garbage.gone_runs)} registered run folder(s) no longer exist"
                + (", forgotten)" if removed else ")") if garbage.gone_runs else "")]
    lines += [f"  {verb}: {p.relative_to(store.root)}" for p in garbage.removable[:20]]
    if len(garbage.removable) > 20:
        lines.append(f"  ... and {len(garbage.removable) - 20} more")
    if garbage.foreign:
        lines.append(f"  left alone: {len(garbage.foreign)} entr{'y' if len(garbage.foreign) == 1 else 'ies'} the"
                     f" store did not write (first: {garbage.foreign[0]})")
    lines.append(f"{verb} {len(garbage.removable)} unreferenced entr{'y' if len(garbage.removable) == 1 else 'ies'}"
                 f" ({garbage.bytes / 2**20:.1f} MiB); kept {len(garbage.kept)} in use"
                 + (f", {len(garbage.busy)} being written" if garbage.busy else ""))
    return "\n".join(lines) + "\n"


def gc_text(target: Path, dry_run: bool, confirm: Callable[[str], bool] | None = None) -> str:
    """List what no run uses; unless `dry_run`, remove it once `confirm(question)` says yes (no
    `confirm`: yes). Only what was listed is removed, even if more became garbage meanwhile."""
    store = gc_store(target)
    garbage = collect_garbage(store, referenced, remove=False)
    if dry_run or not (garbage.removable or garbage.gone_runs):
        return gc_listing(store, garbage, removed=not dry_run)
    if confirm is not None:
        question = (f"{gc_listing(store, garbage, removed=False)}remove these {len(garbage.removable)} entries"
                    f" ({garbage.bytes / 2**20:.1f} MiB)? [y/N] ")
        if not confirm(question):
            return "store gc: nothing removed\n"
    garbage = collect_garbage(store, referenced, remove=True, only=set(garbage.removable))
    return gc_listing(store, garbage, removed=True)
