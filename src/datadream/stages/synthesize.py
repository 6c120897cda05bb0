"""Stage 2: generate the synthetic training set with the adapted generator.

    datadream synthesize RUN

The base pipeline is loaded once and every adapter is read once; a class's adapter is copied into
the pipeline's LoRA weights in place (components/lora_swap.py). Image i of class c starts from its own noise, seeded from (runtime.seed, c, i), so no
two classes share starting noise and any image can be regenerated alone. Images are written as
RUN/synthetic/<class-slug>/<i>.png by a background writer, each by write-then-rename.

Resume: the batches of a class are fixed by image index (images [k*B, (k+1)*B) form batch k), and
a batch is skipped when all its files exist. A re-run therefore recomputes exactly the batches an
uninterrupted run would have computed, and writes the same files.

A class is complete when its marker (`.datadream.json`) records every image with its size and
sha256, taken from the bytes as they were written; the classifier trains only on images that match
their record. An image whose size no longer matches (a power cut, a truncated copy) is regenerated.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from datadream.progress import progress

from datadream import atomic
from datadream.components.lora_swap import AdapterSwapper
from datadream.components.models import compile_module, load_stable_diffusion, resolve_device, resolve_dtype
from datadream.components.seeds import derive_seed
from datadream.config import result_settings, stable_hash
from datadream.data.fewshot import FewShotClass
from datadream.data.labelled import SYNTHETIC, Sample
from datadream.errors import UserError
from datadream.layout import image_name
from datadream.markers import file_record, log_timing, read_marker, sha256_bytes
from datadream.stages.adapt import AdaptUnit, plan_units, unit_is_complete
from datadream.stages.run import Run, open_run, stage_lock

log = logging.getLogger(__name__)

CLASS_MARKER = ".datadream.json"  # not an image, so image-folder readers ignore it
MAX_PENDING_WRITES = 64


@dataclass
class ClassJob:
    cls: FewShotClass
    adapter: AdaptUnit | None  # None: the un-adapted generator (adapt.mode=none)
    folder: Path
    fingerprint: str

    def seeds(self, run_seed: int, total: int) -> list[int]:
        return [image_seed(run_seed, self.cls.name, i) for i in range(total)]


def image_seed(run_seed: int, class_name: str, index: int) -> int:
    return derive_seed(run_seed, "image", class_name, index)


def plan_jobs(run: Run, require_adapters: bool = True) -> list[ClassJob]:
    units = plan_units(run)
    by_class = {c.label: u for u in units for c in u.classes}
    missing = [u.name for u in units if not unit_is_complete(run, u)] if require_adapters else []
    if missing:
        raise UserError(
            f"{len(missing)} adapter(s) missing in {run.layout.adapters} (first: {missing[0]});"
            " run `datadream adapt RUN` first"
        )
    cfg = run.config
    jobs = []
    for cls in run.manifest.classes:
        adapter = by_class.get(cls.label)
        inputs = {
            "synthesize": result_settings(cfg.synthesize),
            "seed": cfg.runtime.seed,
            "precision": cfg.runtime.precision,
            "prompt": cls.prompt,
            "adapter": adapter.fingerprint if adapter else None,
        }
        jobs.append(ClassJob(cls, adapter, run.layout.synthetic_class(cls.slug), stable_hash(inputs)))
    return jobs


def pending_batches(job: ClassJob, total: int, batch_size: int) -> list[range]:
    batches = [range(start, min(start + batch_size, total)) for start in range(0, total, batch_size)]
    return [b for b in batches if not all((job.folder / image_name(i, total)).is_file() for i in b)]


def check_marker(job: ClassJob) -> dict | None:
    """The class's marker (claiming the folder for this job's settings when it has none); a
    folder made with other settings is refused, never mixed."""
    marker = job.folder / CLASS_MARKER
    recorded = read_marker(marker)
    if recorded is not None:
        if recorded.get("fingerprint") != job.fingerprint:
            raise UserError(
                f"{job.folder} holds images made with other settings or another adapter; move it"
                " away to regenerate it, or use a new run folder"
            )
        return recorded
    atomic.write_json(marker, {"class": job.cls.name, "fingerprint": job.fingerprint})
    return None


def drop_damaged_images(job: ClassJob, marker: dict | None) -> None:
    """Delete recorded images whose size changed since they were written (cheap: one stat each),
    so that they are generated again; they are ours, inside the run."""
    for name, record in ((marker or {}).get("images") or {}).items():
        path = job.folder / name
        try:
            size = os.lstat(path).st_size
        except OSError:
            continue
        if not isinstance(record, dict) or size != record.get("size"):
            log.warning("synthesize: %s is damaged (size %d, recorded %s); generating it again", path, size,
                        record.get("size") if isinstance(record, dict) else "?")
            path.unlink()


def finish_class(job: ClassJob, total: int, written: dict[str, dict]) -> None:
    """Mark the class complete, recording every image: those written by this process from the
    bytes written, the rest (written before an interruption) from their files."""
    names = [image_name(i, total) for i in range(total)]
    images = {name: written.get(name) or file_record(job.folder / name) for name in names}
    atomic.write_json(job.folder / CLASS_MARKER,
                      {"class": job.cls.name, "fingerprint": job.fingerprint, "images": images})


def class_is_complete(job: ClassJob, marker: dict | None, total: int) -> bool:
    images = (marker or {}).get("images")
    return isinstance(images, dict) and len(images) == total and all(
        (job.folder / image_name(i, total)).is_file() for i in range(total))


def synthesize(run_dir: Path) -> Path:
    """Generate every missing image of the run; returns the path of the index."""
    run = open_run(run_dir)
    with stage_lock(run, "synthesize"):
        return _synthesize(run)


def _synthesize(run: Run) -> Path:
    cfg = run.config.synthesize
    total = cfg.images_per_class
    jobs = plan_jobs(run)
    atomic.check_writable(run.layout.synthetic)
    todo = []
    for job in jobs:
        atomic.remove_stale_temporaries(job.folder)
        marker = check_marker(job)
        drop_damaged_images(job, marker)
        batches = pending_batches(job, total, cfg.batch_size)
        if batches:
            todo.append((job, batches))
        elif not class_is_complete(job, marker, total):  # killed after its last image
            finish_class(job, total, {})
    remaining = sum(len(b) for _, batches in todo for b in batches)
    log.info("synthesize: %d of %d image(s) to generate", remaining, total * len(jobs))
    if todo:
        started = time.time()
        Generator(run).generate(todo, remaining)
        log_timing(run.layout.timings, {"stage": "synthesize", "images": remaining,
                                        "seconds": round(time.time() - started, 2)})
    return write_index(run, jobs)


@dataclass
class OpenClass:
    """A class whose images are generated but maybe not all written yet."""

    job: ClassJob
    writes: list[Future]


class Generator:
    def __init__(self, run: Run):
        runtime = run.config.runtime
        self.run = run
        self.cfg = run.config.synthesize
        self.device = resolve_device(runtime.device)
        dtype = resolve_dtype(runtime.precision, self.device)
        self.pipeline = load_stable_diffusion(run.config.generator.model, dtype=dtype,
                                              config=run.config.generator.config).to(self.device)
        if self.cfg.sampler == "dpm++":
            from diffusers import DPMSolverMultistepScheduler

            self.pipeline.scheduler = DPMSolverMultistepScheduler.from_config(
                self.pipeline.scheduler.config, algorithm_type="dpmsolver++")
        units = {u.name: run.layout.adapter(u.name) for u in plan_units(run)}
        self.adapters = AdapterSwapper(self.pipeline, units, self.cfg.lora_scale)
        self.compiled = not self.cfg.compile

    def _compile_once(self) -> None:
        """After the first adapter built the LoRA layers: later swaps only copy weights, so the
        compiled graph stays valid."""
        if not self.compiled:
            self.pipeline.unet = compile_module(self.pipeline.unet)
            self.compiled = True

    def generate(self, todo: list[tuple[ClassJob, list[range]]], remaining: int) -> None:
        total = self.cfg.images_per_class
        bar = progress(total=remaining, desc="synthesize", unit="img", leave=True)
        pending: list[Future] = []
        open_classes: list[OpenClass] = []
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="png-writer") as writer:
            for job, batches in todo:
                self.adapters.activate(job.adapter.name if job.adapter else None)
                self._compile_once()
                seeds = job.seeds(self.run.config.runtime.seed, total)
                current = OpenClass(job, [])
                open_classes.append(current)
                for batch in batches:
                    images = self._sample(job.cls.prompt, [seeds[i] for i in batch])
                    for index, image in zip(batch, images):
                        future = writer.submit(write_png, job.folder / image_name(index, total), image)
                        pending.append(future)
                        current.writes.append(future)
                    bar.update(len(batch))
                    pending = _drain(pending, keep=MAX_PENDING_WRITES)
                    open_classes = _finish_written(open_classes, total)
            _drain(pending, keep=0)
            _finish_written(open_classes, total, sampling_over=True)
        bar.close()

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
        ).images


def write_png(path: Path, image) -> tuple[str, dict]:
    """Write one image; returns its name and record (size, sha256 of the bytes written)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    atomic.write_bytes(path, data, sync_directory=False)  # the class marker's write syncs the folder
    return path.name, {"size": len(data), "sha256": sha256_bytes(data)}


def _drain(pending: list[Future], keep: int) -> list[Future]:
    """Wait for the oldest writes until at most `keep` remain; re-raises a writer's error."""
    while len(pending) > keep:
        pending.pop(0).result()
    return pending


def _finish_written(open_classes: list[OpenClass], total: int, sampling_over: bool = False) -> list[OpenClass]:
    """Mark complete every class all of whose images are written (the one being sampled only once
    `sampling_over`); returns those still open. Nothing waits for a write: the GPU stays busy."""
    still_open = []
    for position, entry in enumerate(open_classes):
        sampling_done = sampling_over or position < len(open_classes) - 1
        if sampling_done and all(f.done() for f in entry.writes):
            finish_class(entry.job, total, dict(f.result() for f in entry.writes))
        else:
            still_open.append(entry)
    return still_open


def write_index(run: Run, jobs: list[ClassJob]) -> Path:
    """RUN/synthetic/index.jsonl, one row per image, rebuilt from the plan and the class markers
    (never appended to), so that it is complete and identical after any number of interruptions."""
    atomic.write_text(run.layout.synthetic_index, index_text(run, jobs))
    return run.layout.synthetic_index


def index_text(run: Run, jobs: list[ClassJob]) -> str:
    total = run.config.synthesize.images_per_class
    rows = []
    for job in jobs:
        records = (read_marker(job.folder / CLASS_MARKER) or {}).get("images") or {}
        for index, seed in enumerate(job.seeds(run.config.runtime.seed, total)):
            name = image_name(index, total)
            rows.append(json.dumps({
                "file": f"{job.cls.slug}/{name}",
                "label": job.cls.label,
                "class_name": job.cls.name,
                "prompt": job.cls.prompt,
                "seed": seed,
                "adapter": job.adapter.name if job.adapter else None,
                "sha256": (records.get(name) or {}).get("sha256"),
            }, ensure_ascii=False))
    return "\n".join(rows) + "\n"


def synthetic_fingerprint(run: Run) -> str:
    """What the run's synthetic set is made from, from the settings alone (no file is read)."""
    return stable_hash([job.fingerprint for job in plan_jobs(run, require_adapters=False)])


def completed_synthetic_set(run: Run) -> tuple[list[Sample], str]:
    """The synthetic images, each with the sha256 recorded when it was written, and a fingerprint
    of the whole set. Taken only from the class folders inside RUN/synthetic/ whose markers vouch
    for every image; the index must be the one synthesize wrote. Adapters are not needed."""
    jobs = plan_jobs(run, require_adapters=False)
    total = run.config.synthesize.images_per_class
    redo = f"run `datadream synthesize {run.layout.root}`"
    samples = []
    for job in jobs:
        marker = read_marker(job.folder / CLASS_MARKER)
        if marker is None or marker.get("fingerprint") != job.fingerprint or not class_is_complete(job, marker, total):
            raise UserError(f"the synthetic set of {run.layout.root} is not complete (first: {job.folder.name}); {redo} first")
        for index in range(total):
            name = image_name(index, total)
            path, record = job.folder / name, marker["images"].get(name)
            if not isinstance(record, dict) or path.is_symlink() or path.stat().st_size != record.get("size"):
                raise UserError(f"synthetic image {path} is damaged (it differs from what synthesize recorded);"
                                f" {redo} to generate it again")
            samples.append(Sample(str(path), job.cls.label, SYNTHETIC, sha256=str(record.get("sha256"))))
    index = run.layout.synthetic_index
    if not index.is_file() or index.read_text(encoding="utf-8", errors="replace") != index_text(run, jobs):
        raise UserError(f"{index} is missing or was changed since synthesize wrote it; {redo} to rewrite it")
    return samples, synthetic_fingerprint(run)
