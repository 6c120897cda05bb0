"""Reading finished work: the done-markers every stage writes and the next one trusts.

Stages talk only through these files: `synthesize` finds an adapter by its marker in the store,
`train` takes the synthetic set from the run's index and the class markers, `evaluate` the
classifier from its marker. Each check verifies what the marker recorded (sizes, hashes), so a
damaged file is never taken for complete work. Torch-free.
"""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from pathlib import Path

from datadream.data.samples import SYNTHETIC, Sample
from datadream.errors import UserError
from datadream.layout import (CLASS_MARKER, PREVIEW_MARKER, UNIT_MARKER, RunLayout, StoreLayout, image_name,
                              is_safe_component, shard_marker)
from datadream.locks import is_locked
from datadream.markers import damaged_file, file_record, read_marker
from datadream.runs import Run, open_run
from datadream.store import link
from datadream.units import (AdapterSpec, SyntheticSpec, WorkUnit, adapter_specs, classifier_fingerprint,
                             inspect_fingerprint, shard_ranges, store_of, synthetic_fingerprint, synthetic_specs)

# --- adapters -----------------------------------------------------------------------------------


def adapter_is_complete(run: Run, store: StoreLayout, spec: AdapterSpec, hashes: bool = True) -> bool:
    """True when the store holds the adapter and its files match its marker (their sizes only
    with `hashes=False`, see markers.damaged_file)."""
    folder = store.adapter(spec.fingerprint)
    marker = read_marker(folder / UNIT_MARKER)
    if marker is None:
        return False
    if marker.get("fingerprint") != spec.fingerprint:
        raise UserError(f"{folder} is not the adapter its folder name says (its marker records another"
                        f" fingerprint); delete it and run `datadream adapt {run.layout.root}`")
    damaged = damaged_file(folder, marker.get("files"), hashes)
    if damaged is not None:
        raise UserError(f"adapter file {damaged} is damaged or missing (it differs from what {UNIT_MARKER}"
                        f" recorded); delete {folder} and run `datadream adapt {run.layout.root}` to retrain it")
    return True


def link_adapters(run: Run, store: StoreLayout) -> None:
    """RUN/adapters/<unit> -> the store's adapter, for every adapter of the run that is complete:
    the run's view of work that may have been done by another run or machine."""
    for spec in adapter_specs(run):
        if adapter_is_complete(run, store, spec, hashes=False):
            link(run.layout.adapter(spec.name), store.adapter(spec.fingerprint))


# --- synthetic classes --------------------------------------------------------------------------


def stored_image_is_intact(path: Path, record: object, vouched_ns: int) -> bool:
    """Whether a stored image is still what its marker recorded: a plain file of the recorded size
    and, when it was modified after the marker (whose time is `vouched_ns`) vouched for it, of the
    recorded sha256. Images are written before their marker and never after, so the stat catches
    a same-size change at the cost of one hash of the changed file only."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    if not isinstance(record, dict) or stat.S_ISLNK(info.st_mode) or info.st_size != record.get("size"):
        return False
    return info.st_mtime_ns <= vouched_ns or file_record(path)["sha256"] == record.get("sha256")


def marker_time(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def shard_records(folder: Path, shard: range, total: int) -> dict | None:
    """The image records of a finished shard, None unless every image is there as recorded (one
    stat per image, see stored_image_is_intact: cheap enough to run before every stage)."""
    marker_path = folder / shard_marker(shard.start, total)
    marker = read_marker(marker_path)
    images = (marker or {}).get("images")
    if not isinstance(images, dict):
        return None
    vouched = marker_time(marker_path)
    for index in shard:
        name = image_name(index, total)
        if not stored_image_is_intact(folder / name, images.get(name), vouched):
            return None
    return images


def preview_records(folder: Path, seeds: list[int] | None = None) -> dict | None:
    """The marker of a finished un-adapted preview: its prompt, its seeds and, in the same order,
    each image's file, size and sha256. None when there is none, a file is missing or another
    size, or (given `seeds`) it was sampled from other seeds. A preview is not a result: a damaged
    one is sampled again by synthesize and left out by the report, never an error."""
    try:
        marker = read_marker(folder / PREVIEW_MARKER)
    except UserError:
        return None
    images, recorded = (marker or {}).get("images"), (marker or {}).get("seeds")
    vouched = marker_time(folder / PREVIEW_MARKER)
    if not (isinstance(images, list) and isinstance(recorded, list) and images and len(images) == len(recorded)
            and all(isinstance(seed, int) for seed in recorded) and isinstance(marker.get("prompt"), str)):
        return None
    for record in images:
        if not (isinstance(record, dict) and is_safe_component(record.get("file"))):
            return None
        if not stored_image_is_intact(folder / record["file"], record, vouched):
            return None
    if seeds is not None and recorded != seeds:
        return None
    return marker


def class_is_complete(folder: Path, total: int) -> bool:
    marker = read_marker(folder / CLASS_MARKER)
    images = (marker or {}).get("images")
    return isinstance(images, dict) and len(images) == total and all(
        (folder / image_name(i, total)).is_file() for i in range(total))


def index_text(run: Run, specs: list[SyntheticSpec]) -> str:
    total = run.config.synthesize.images_per_class
    store = store_of(run)
    rows = []
    for spec in specs:
        records = (read_marker(store.synthetic_class(spec.fingerprint) / CLASS_MARKER) or {}).get("images") or {}
        for index, seed in enumerate(spec.seeds(run.config.runtime.seed, total)):
            name = image_name(index, total)
            rows.append(json.dumps({
                "file": f"{spec.cls.slug}/{name}",
                "label": spec.cls.label,
                "class_name": spec.cls.name,
                "prompt": spec.cls.prompt,
                "seed": seed,
                "adapter": spec.adapter.name if spec.adapter else None,
                "sha256": (records.get(name) or {}).get("sha256"),
            }, ensure_ascii=False))
    return "\n".join(rows) + "\n"


def completed_synthetic_set(run: Run) -> tuple[list[Sample], str]:
    """The synthetic images, each with the sha256 recorded when it was written, and a fingerprint
    of the whole set. Taken from the store's class folders whose markers vouch for every image; the
    run's index must be the one synthesize wrote. Adapters are not needed."""
    specs = synthetic_specs(run)
    store = store_of(run)
    total = run.config.synthesize.images_per_class
    redo = f"run `datadream synthesize {run.layout.root}`"
    samples = []
    for spec in specs:
        folder = store.synthetic_class(spec.fingerprint)
        marker = read_marker(folder / CLASS_MARKER)
        if marker is None or marker.get("fingerprint") != spec.fingerprint or not class_is_complete(folder, total):
            raise UserError(f"the synthetic set of {run.layout.root} is not complete (first: class {spec.cls.slug},"
                            f" {folder}); {redo} first")
        vouched = marker_time(folder / CLASS_MARKER)
        for index in range(total):
            name = image_name(index, total)
            path, record = folder / name, marker["images"].get(name)
            if not stored_image_is_intact(path, record, vouched):
                raise UserError(f"synthetic image {path} is damaged (it differs from what synthesize recorded);"
                                f" {redo} to generate it again")
            samples.append(Sample(str(path), spec.cls.label, SYNTHETIC, sha256=str(record.get("sha256"))))
    index = run.layout.synthetic_index
    if not index.is_file() or index.read_text(encoding="utf-8", errors="replace") != index_text(run, specs):
        raise UserError(f"{index} is missing or was changed since synthesize wrote it; {redo} to rewrite it")
    return samples, synthetic_fingerprint(run)


# --- classifier ---------------------------------------------------------------------------------


def read_classifier_marker(run: Run) -> dict:
    """The trained classifier's marker, after checking its files against what it recorded."""
    folder = run.layout.classifier
    marker = read_marker(run.layout.classifier_marker)
    if marker is None:
        raise UserError(f"{run.layout.root} has no trained classifier; run `datadream train RUN` first")
    damaged = damaged_file(folder, marker.get("files"))
    if damaged is not None or marker.get("train_on") not in ("none", "real", "synthetic", "synthetic+real"):
        raise UserError(f"classifier file {damaged or run.layout.classifier_marker} is damaged or missing; delete"
                        f" {folder} and run `datadream train {run.layout.root}` to train it again")
    return marker


def classifier_is_complete(run: Run, fingerprint: str | None = None) -> bool:
    fingerprint = fingerprint or classifier_fingerprint(run)
    marker = read_marker(run.layout.classifier_marker)
    if marker is None:
        return False
    if marker.get("fingerprint") != fingerprint:
        raise UserError(f"{run.layout.classifier} was trained from other settings or data; move it away to"
                        " retrain, or use a new run folder")
    read_classifier_marker(run)
    return True


def metrics_are_current(run: Run) -> bool:
    """Metrics exist for the run's current classifier (the test split's files are checked by
    `evaluate` itself, which is cheap next to any GPU work)."""
    metrics = read_marker(run.layout.metrics)
    return (bool(metrics) and metrics.get("classifier") == classifier_fingerprint(run)
            and run.layout.predictions.is_file())


# --- unit state ---------------------------------------------------------------------------------


class RunFacts:
    """What deciding a unit's state needs, computed once per run (a run of 1,000 classes has
    5,000 shards: recomputing every fingerprint per unit would take minutes)."""

    def __init__(self, run: Run):
        self.run = run
        self.store = store_of(run)
        self.adapters = {s.name: s for s in adapter_specs(run)}
        self.synthetic = {s.cls.slug: s for s in synthetic_specs(run)}
        self.shards = {r.start: r for r in shard_ranges(run)}

    def state(self, unit: WorkUnit) -> str:
        run, store = self.run, self.store
        if unit.stage == "adapt":
            members = [self.adapters[name] for name in unit.members]
            if all(adapter_is_complete(run, store, s, hashes=False) for s in members):
                return "complete"
            return "running" if any(is_locked(store.lock(s.lock)) for s in members) else "pending"
        if unit.stage == "synthesize":
            slug, start = unit.members[0].rsplit("/", 1)
            spec, shard = self.synthetic[slug], self.shards[int(start)]
            folder = store.synthetic_class(spec.fingerprint)
            if shard_records(folder, shard, run.config.synthesize.images_per_class) is not None:
                return "complete"
            return "running" if is_locked(store.lock(spec.shard_lock(shard.start))) else "pending"
        if unit.stage == "index":
            index = run.layout.synthetic_index
            done = index.is_file() and index.read_text(encoding="utf-8", errors="replace") == index_text(
                run, list(self.synthetic.values()))
        elif unit.stage == "inspect":
            done = (read_marker(run.layout.inspect) or {}).get("fingerprint") == inspect_fingerprint(run)
        elif unit.stage == "train":
            done = classifier_is_complete(run)
        else:
            done = metrics_are_current(run)
        if done:
            return "complete"
        return "running" if is_locked(run.layout.lock(unit.stage)) else "pending"


def unit_state(unit: WorkUnit) -> str:
    """"complete", "running" (its lock is held) or "pending", from the files alone. What the
    decision needs is computed once per run and kept while the run's files are unchanged."""
    layout = RunLayout(unit.run)
    stamp = tuple(p.stat().st_mtime_ns for p in (layout.config, layout.fewshot))
    cached = _FACTS.get(unit.run)
    if cached is None or cached[0] != stamp:
        cached = _FACTS[unit.run] = (stamp, RunFacts(open_run(unit.run)))
    return cached[1].state(unit)


_FACTS: dict[Path, tuple] = {}


def adapters_complete(run: Run) -> set[str]:
    """The names of the run's adapters that the store holds (made by this run, or by any run
    sharing the store), their files checked by size."""
    store = store_of(run)
    return {spec.name for spec in adapter_specs(run) if adapter_is_complete(run, store, spec, hashes=False)}


def images_in_complete_batches(folder: Path, total: int, batch: int) -> int:
    """Images of a class folder in sampler batches that synthesize would skip: a batch is redone
    unless all its files exist. Counted from the files present, so the time does not grow with
    images_per_class."""
    try:
        present = os.listdir(folder)
    except OSError:
        return 0
    per_batch: Counter[int] = Counter()
    for name in present:
        stem = name.removesuffix(".png")
        if stem.isdigit() and int(stem) < total and image_name(int(stem), total) == name:
            per_batch[int(stem) // batch] += 1
    return sum(n for b, n in per_batch.items() if n == min(batch, total - b * batch))
