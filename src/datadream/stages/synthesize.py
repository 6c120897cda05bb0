"""Stage 2: generate the synthetic training set with the adapted generator.

    datadream synthesize RUN

The units of the stage are shards: a fixed range of one class's image indices, rounded to whole
sampler batches (`synthesize.shard_size`). Image i of class c starts from its own noise, seeded
from (runtime.seed, c, i), so no two classes share starting noise, any image can be regenerated
alone, and the images do not depend on how the work is cut into shards or workers.

A class's images live in the store, STORE/synthetic/<fingerprint>/<i>.png, each written by
write-then-rename by a background writer while the GPU samples the next batch. A shard is done
when its marker (.shard-<first>.json) records every image's size and sha256, taken from the bytes
as they were written; a class is complete when its marker (.datadream.json) merges its shards'.
The index unit then links RUN/synthetic/<class> to the store and writes RUN/synthetic/index.jsonl,
the synthetic set's done-marker, which is all `train` reads.

The base pipeline is loaded once per process and every adapter is read once; a class's adapter is
copied into the pipeline's LoRA weights in place (components/generators/lora_swap.py). Resume: a shard is
skipped when done, and within a shard a batch is skipped when all its files exist, so a re-run
computes exactly the batches an uninterrupted run would have computed and writes the same files.
An image whose size no longer matches its record (a power cut, a truncated copy) is generated again.

With the shard that holds image 0 of an adapted class, the first `synthesize.preview_images` seeds
are also sampled with the adapter switched off (same prompt and sampler): the un-adapted half of
the report's grid, whose adapted half is images 0..N-1. They go to STORE/previews/<fingerprint>/,
outside the image folder (never trained on), and their marker is written before the shard's, under
its lock, so a killed run samples them again. A class whose first shard was done without them
(an older run, the setting raised later) keeps none.
"""

from __future__ import annotations

import io
import logging
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from datadream import atomic, locks
from datadream.artifacts import (adapter_is_complete, index_text, link_adapters, marker_time, preview_records,
                                 shard_records, stored_image_is_intact)
from datadream.components.generators.families import check_settings
from datadream.components.generators.families.model import family_model
from datadream.components.generators.lora_swap import AdapterSwapper
from datadream.components.loading.models import (compile_module, load_generator, pipeline_family,
                                                 resolve_device, resolve_dtype)
from datadream.config import stable_hash
from datadream.errors import UserError
from datadream.layout import CLASS_MARKER, PREVIEW_MARKER, StoreLayout, image_name, preview_name, shard_marker
from datadream.markers import file_record, log_timing, read_marker, sha256_bytes
from datadream.progress import progress
from datadream.runs import Run, open_run
from datadream.store import link, register_run
from datadream.units import SyntheticSpec, batches, shard_ranges, store_of, synthetic_specs

log = logging.getLogger(__name__)

MAX_PENDING_WRITES = 64
_GENERATORS: dict[str, "Generator"] = {}  # the pipeline of the last run, kept by a worker between units


@dataclass
class Shard:
    spec: SyntheticSpec
    images: range
    folder: Path

    @property
    def name(self) -> str:
        return f"{self.spec.cls.slug}/{self.images.start}"


def plan_shards(run: Run, store: StoreLayout, names: list[str] | None = None) -> list[Shard]:
    shards = [Shard(spec, images, store.synthetic_class(spec.fingerprint))
              for spec in synthetic_specs(run) for images in shard_ranges(run)]
    if names is not None:
        wanted = set(names)
        shards = [s for s in shards if s.name in wanted]
    return shards


def synthesize(run_dir: Path, shards: list[str] | None = None) -> Path | None:
    """Generate every missing image of the run and write its index; with `shards` (names
    "<class slug>/<first image>", the members of synthesize units) only those, and no index.
    Returns the index's path."""
    run = open_run(run_dir)
    store = store_of(run)
    if not synthetic_specs(run):
        log.info("synthesize: classifier.train_on=%s needs no synthetic images", run.config.classifier.train_on)
        return None
    todo = plan_shards(run, store, shards)
    total = run.config.synthesize.images_per_class
    # Only shards still to sample need their adapter: a finished set is usable after adapters are deleted.
    adapters = {s.spec.adapter.fingerprint: s.spec.adapter for s in todo
                if s.spec.adapter and shard_records(s.folder, s.images, total) is None}
    missing = [a.name for a in adapters.values() if not adapter_is_complete(run, store, a)]
    if missing:
        raise UserError(f"{len(missing)} adapter(s) of {run.layout.root} are not trained (first: {missing[0]});"
                        f" run `datadream adapt {run.layout.root}` first")
    atomic.check_writable(store.synthetic, "runtime.store")
    atomic.check_writable(run.layout.synthetic)
    register_run(store, run.layout.root)
    generate_shards(run, store, todo)
    return write_index(run.layout.root) if shards is None else None


def generate_shards(run: Run, store: StoreLayout, shards: list[Shard]) -> None:
    total = run.config.synthesize.images_per_class
    pending = [s for s in shards if shard_records(s.folder, s.images, total) is None]
    done = len(shards) - len(pending)
    log.info("synthesize: %d of %d shard(s) to generate (%d done, in the store %s)", len(pending), len(shards),
             done, store.root)
    if not pending:
        for shard in shards:
            finish_class(shard.spec, shard.folder, run)
        return
    started = time.time()
    generator = _generator(run, store)
    generator.generated = 0
    deferred = generator.generate(pending, wait=False)
    for shard in deferred:  # held by another worker: wait for it, generate it only if that worker died
        generator.generate([shard], wait=True)
    if generator.generated:
        log_timing(run.layout.timings, {"stage": "synthesize", "shards": generator.generated,
                                        "seconds": round(time.time() - started, 2)})


def write_index(run_dir: Path) -> Path:
    """The index unit: finish and link every class, then write RUN/synthetic/index.jsonl (rebuilt
    from the class markers, never appended to, so it is the same after any interruption)."""
    run = open_run(run_dir)
    store = store_of(run)
    specs = synthetic_specs(run)
    with locks.unit_lock(run.layout.lock("index"), f"the index of {run.layout.root}", run.config.runtime.wait_for_locks):
        for folder in (run.layout.synthetic, run.layout.adapters):  # views a killed index unit left half made
            atomic.remove_dead_temporaries(folder)
        for spec in specs:
            folder = store.synthetic_class(spec.fingerprint)
            if not finish_class(spec, folder, run):
                raise UserError(f"class {spec.cls.slug} of {run.layout.root} has images still to generate;"
                                f" run `datadream synthesize {run.layout.root}` first")
            link(run.layout.synthetic_class(spec.cls.slug), folder)
        link_adapters(run, store)
        atomic.write_text(run.layout.synthetic_index, index_text(run, specs))
    return run.layout.synthetic_index


def finish_class(spec: SyntheticSpec, folder: Path, run: Run) -> bool:
    """Write the class marker once every shard is done (merging their records); True when the
    class is complete. Two workers finishing a class at once write the same bytes."""
    total = run.config.synthesize.images_per_class
    marker = read_marker(folder / CLASS_MARKER)
    if marker is not None and len((marker.get("images") or {})) == total:
        return True
    images: dict = {}
    for shard in shard_ranges(run):
        records = shard_records(folder, shard, total)
        if records is None:
            return False
        images.update(records)
    atomic.write_json(folder / CLASS_MARKER, {"class": spec.cls.name, "fingerprint": spec.fingerprint,
                                              "images": dict(sorted(images.items()))})
    return True


def _prepare(shard: Shard, total: int, batch_size: int) -> list[range]:
    """Under the shard's lock: clear a killed writer's temporaries, drop images that no longer
    match their record (they are ours, in the store), and return the batches still to sample."""
    names = [image_name(i, total) for i in shard.images]
    for name in names:
        atomic.remove_stale_temporaries(shard.folder, name)
    marker_path = shard.folder / shard_marker(shard.images.start, total)
    recorded = (read_marker(marker_path) or {}).get("images") or {}
    if recorded:
        vouched = marker_time(marker_path)
        for name, record in recorded.items():
            path = shard.folder / name
            if path.is_file() and not stored_image_is_intact(path, record, vouched):
                log.warning("synthesize: %s differs from what its shard's marker recorded (damaged or edited since);"
                            " generating it again", path)
                path.unlink()
        marker_path.unlink(missing_ok=True)
        (shard.folder / CLASS_MARKER).unlink(missing_ok=True)
    return [b for b in batches(shard.images, batch_size)
            if not all((shard.folder / image_name(i, total)).is_file() for i in b)]


@dataclass
class OpenShard:
    """A shard whose images are sampled but maybe not all written yet; its lock is held."""

    shard: Shard
    lock: locks.HeldLock
    writes: list[Future] = field(default_factory=list)
    preview_seeds: list[int] = field(default_factory=list)
    preview_writes: list[Future] = field(default_factory=list)


def _generator(run: Run, store: StoreLayout) -> "Generator":
    cfg = run.config
    # Everything the loaded pipeline holds: the model, its sampler, and the shape of the LoRA
    # layers the first adapter built (none for the un-adapted generator).
    key = stable_hash([cfg.generator.model, cfg.generator.config, cfg.runtime.device, cfg.runtime.precision,
                       cfg.synthesize.sampler, cfg.synthesize.compile, cfg.synthesize.lora_scale,
                       cfg.adapt.mode == "none", cfg.adapt.rank, cfg.adapt.alpha, cfg.adapt.train_text_encoder])
    generator = _GENERATORS.get(key)
    if generator is None:
        _GENERATORS.clear()  # one base model resident at a time
        generator = _GENERATORS[key] = Generator(run)
    generator.run, generator.store, generator.cfg = run, store, cfg.synthesize
    return generator


class Generator:
    def __init__(self, run: Run):
        runtime = run.config.runtime
        self.run = run
        self.store: StoreLayout | None = None
        self.cfg = run.config.synthesize
        self.device = resolve_device(runtime.device)
        dtype = resolve_dtype(runtime.precision, self.device)
        self.pipeline = load_generator(run.config.generator.model, dtype=dtype,
                                       config=run.config.generator.config).to(self.device)
        self.model = family_model(self.pipeline, pipeline_family(self.pipeline), self.device, dtype)
        check_settings(self.model.family, run.config.adapt.resolution, self.cfg.resolution, self.cfg.sampler,
                       adapted=False)  # a run made before the check, or a config edited since
        if self.cfg.sampler == "dpm++":
            from diffusers import DPMSolverMultistepScheduler

            self.pipeline.scheduler = DPMSolverMultistepScheduler.from_config(
                self.pipeline.scheduler.config, algorithm_type="dpmsolver++")
        self.adapters = AdapterSwapper(self.model, {}, self.cfg.lora_scale)
        self.compiled = not self.cfg.compile
        self.generated = 0  # shards this process sampled (not those found done or left to others)

    def _compile_once(self) -> None:
        """After the first adapter built the LoRA layers: later swaps only copy weights, so the
        compiled graph stays valid."""
        if not self.compiled:
            name = self.model.family.denoiser
            setattr(self.pipeline, name, compile_module(getattr(self.pipeline, name)))
            self.compiled = True

    def generate(self, shards: list[Shard], wait: bool) -> list[Shard]:
        """Generate the shards whose locks this process gets (waiting for them if `wait`);
        returns those held by other live workers."""
        total, run_seed = self.cfg.images_per_class, self.run.config.runtime.seed
        bar = progress(total=sum(len(s.images) for s in shards), desc="synthesize", unit="img", leave=True)
        busy: list[Shard] = []
        pending: list[Future] = []
        open_shards: list[OpenShard] = []
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="png-writer") as writer:
            try:
                for shard in shards:
                    held = locks.claim(self.store.lock(shard.spec.shard_lock(shard.images.start)),
                                       f"shard {shard.name} of the synthetic set", wait,
                                       defer=self.run.config.runtime.wait_for_locks)
                    if held is None:
                        busy.append(shard)
                        bar.update(len(shard.images))
                        continue
                    current = OpenShard(shard, held)
                    open_shards.append(current)
                    done = shard_records(shard.folder, shard.images, total) is not None
                    todo = [] if done else _prepare(shard, total, self.cfg.batch_size)
                    current.preview_seeds = [] if done else self._previews_to_sample(shard)
                    bar.update(len(shard.images) - sum(len(b) for b in todo))
                    if todo or current.preview_seeds:
                        self.generated += 1
                        adapter = shard.spec.adapter
                        if adapter is not None:
                            self.adapters.folders[adapter.fingerprint] = self.store.adapter(adapter.fingerprint)
                        self.adapters.activate(adapter.fingerprint if adapter else None)
                        self._compile_once()
                    if current.preview_seeds:
                        current.preview_writes = self._sample_previews(shard, current.preview_seeds, writer)
                        pending += current.preview_writes
                    seeds = shard.spec.seeds(run_seed, total)
                    for batch in todo:
                        images = self._sample(shard.spec.cls.prompt, [seeds[i] for i in batch])
                        for index, image in zip(batch, images):
                            future = writer.submit(write_png, shard.folder / image_name(index, total), image)
                            pending.append(future)
                            current.writes.append(future)
                        bar.update(len(batch))
                        pending = _drain(pending, keep=MAX_PENDING_WRITES)
                        open_shards = self._finish_written(open_shards)
                _drain(pending, keep=0)
                open_shards = self._finish_written(open_shards, sampling_over=True)
            finally:
                for entry in open_shards:  # failed: nothing more is marked done; let others take over
                    entry.lock.release()
        bar.close()
        return busy

    def _finish_written(self, open_shards: list[OpenShard], sampling_over: bool = False) -> list[OpenShard]:
        """Mark done every shard all of whose images are written (the one being sampled only once
        `sampling_over`), release its lock, and complete its class if it was the last; returns the
        shards still open. Nothing waits for a write: the GPU stays busy."""
        total = self.cfg.images_per_class
        still_open = []
        for position, entry in enumerate(open_shards):
            sampling_done = sampling_over or position < len(open_shards) - 1
            if sampling_done and all(f.done() for f in entry.writes + entry.preview_writes):
                shard = entry.shard
                if entry.preview_writes:
                    self._mark_previews(entry)
                if entry.writes or shard_records(shard.folder, shard.images, total) is None:
                    written = dict(f.result() for f in entry.writes)
                    names = [image_name(i, total) for i in shard.images]
                    records = {name: written.get(name) or file_record(shard.folder / name) for name in names}
                    # The marker's rename also makes the images' renames durable (one folder fsync).
                    atomic.write_json(shard.folder / shard_marker(shard.images.start, total), {"images": records})
                entry.lock.release()
                finish_class(shard.spec, shard.folder, self.run)
            else:
                still_open.append(entry)
        return still_open

    def _previews_to_sample(self, shard: Shard) -> list[int]:
        """Under the shard's lock: the seeds to sample un-adapted with this shard (none unless it
        holds image 0 of an adapted class whose preview is not there yet)."""
        spec, total = shard.spec, self.cfg.images_per_class
        count = min(self.cfg.preview_images, total)
        if shard.images.start != 0 or spec.adapter is None or not count:
            return []
        seeds = spec.seeds(self.run.config.runtime.seed, count)
        folder = self.store.preview(spec.fingerprint)
        if preview_records(folder, seeds) is not None:
            return []
        if folder.is_dir():  # a killed or older preview: only this shard's lock holder writes here
            for entry in folder.iterdir():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        return seeds

    def _sample_previews(self, shard: Shard, seeds: list[int], writer: ThreadPoolExecutor) -> list[Future]:
        """The preview's images, sampled now with the adapter off and written in the background."""
        folder, total = self.store.preview(shard.spec.fingerprint), self.cfg.images_per_class
        writes = []
        with self.adapters.disabled():
            for batch in batches(range(len(seeds)), self.cfg.batch_size):
                images = self._sample(shard.spec.cls.prompt, [seeds[i] for i in batch])
                writes += [writer.submit(write_png, folder / preview_name(i, total), image)
                           for i, image in zip(batch, images)]
        return writes

    def _mark_previews(self, entry: OpenShard) -> None:
        """The preview's marker, once its images are written (and before the shard's marker)."""
        spec, total = entry.shard.spec, self.cfg.images_per_class
        written = dict(f.result() for f in entry.preview_writes)
        images = [{"file": preview_name(i, total), **written[preview_name(i, total)]}
                  for i in range(len(entry.preview_seeds))]
        atomic.write_json(self.store.preview(spec.fingerprint) / PREVIEW_MARKER, {
            "class": spec.cls.name, "prompt": spec.cls.prompt, "seeds": entry.preview_seeds, "images": images,
            "synthetic": spec.fingerprint, "adapter": spec.adapter.fingerprint})

    def _sample(self, prompt: str, seeds: list[int]):
        # One CPU generator per image: each image's starting noise depends on its seed alone, not
        # on the batch it happens to be in, and is the same on every device.
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        return self.pipeline(
            prompt=[prompt] * len(seeds),
            num_inference_steps=self.cfg.steps,
            guidance_scale=self.cfg.guidance,
            height=self.cfg.resolution,
            width=self.cfg.resolution,
            generator=generators,
            **self.model.sample_kwargs(),
        ).images


def write_png(path: Path, image) -> tuple[str, dict]:
    """Write one image; returns its name and record (size, sha256 of the bytes written)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    atomic.write_bytes(path, data, sync_directory=False)  # the shard marker's write syncs the folder
    return path.name, {"size": len(data), "sha256": sha256_bytes(data)}


def _drain(pending: list[Future], keep: int) -> list[Future]:
    """Wait for the oldest writes until at most `keep` remain; re-raises a writer's error."""
    while len(pending) > keep:
        pending.pop(0).result()
    return pending


