"""Scale-out: one run shared by 1 and by 2 worker processes (measure), and the predicted wall time
of the paper's table and of ImageNet class-wise on 1, 8 and 64 GPUs (predict).

    # measure (default mode), CPU, tiny random models, each worker on a core of its own:
    python benchmarks/scale_out.py --classes 8 --repeats 3 --save-costs costs-cpu.json
    # measure on a GPU box: full-size random SD 2.1-base at 512 px, one GPU per worker:
    python benchmarks/scale_out.py --full --device cuda --gpus 0,1 --save-costs costs-h100.json
    # predict: FLOP-model ESTIMATES for a named GPU, or from costs measured on a GPU:
    python benchmarks/scale_out.py predict --gpu h100
    python benchmarks/scale_out.py predict --costs costs-h100.json
    # smoke tests (measure: under a minute, nothing appended to docs/benchmarks.md):
    python benchmarks/scale_out.py --quick
    python benchmarks/scale_out.py predict --quick

measure: builds models in a temporary folder, writes a class-wise config with several adapter
units and synthesize shards, then for every repetition and worker count N: `datadream init`, and
N `python -m datadream run CONFIG RUN` processes started at once on that run, each with a fresh
run folder and a fresh store (runtime.store), so nothing is reused between repetitions. The wall
time runs from starting the workers to the first worker that finishes the synthesize stage (a
worker ends a stage only when every unit of it is complete, its own or the others'), so it
includes process start-up and model loading, paid once per worker in parallel. Prints units/s
(adapter units + synthesize shards), the median wall time per N and the ratio, and appends them
to docs/benchmarks.md (not with --quick or --no-report). `--save-costs FILE` writes the per-unit
costs read from RUN/logs/timings.jsonl of the 1-worker runs (seconds per adapter, per image, per
classifier epoch), with the FLOPs of the same work by the cost model, labelled by device.

predict: torch-free. Builds the unit DAG of each workload from datadream's own planner
(datadream.plan.make_plan per run: per-stage FLOPs and counts; datadream.units.shard_ranges for
the shards) and list-schedules it on 1, 8 and 64 GPUs; see predict_text() for every assumption.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[1]
# Measure and predict the checkout this script belongs to, whatever datadream is installed.
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_report, versions  # noqa: E402

PAPER_BENCH = ROOT / "configs" / "paper" / "benchmark.yaml"
CLASS_CONFIG = ROOT / "configs" / "paper" / "datadream-class.yaml"
DP_GPUS = 8  # data-parallel units use up to this many GPUs of one node
DP_EFFICIENCY = 0.9  # ASSUMED, not measured: g GPUs train g x 0.9 as fast as one (g > 1)


# --- measure -------------------------------------------------------------------------------------

def cpu_description() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def gpu_description(gpus: list[str]) -> str:
    """nvidia-smi's names for the GPUs the workers get; no CUDA context in this process."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "GPU (nvidia-smi not available)"
    rows = {row.split(",")[0].strip(): ", ".join(p.strip() for p in row.split(",")[1:])
            for row in out.splitlines() if row.strip()}
    return "; ".join(f"GPU {g}: {rows.get(g, '?')}" for g in gpus)


@dataclass
class Workload:
    """The measured run's settings: enough adapter units and shards for two workers to share."""

    classes: int
    shots: int
    adapt_epochs: int
    group_size: int  # classes per adapter unit (the batched engine's group)
    shards: int  # per class
    shard_size: int  # images per shard (a multiple of the sampler batch)
    batch: int
    steps: int
    resolution: int
    classifier_epochs: int

    @property
    def images_per_class(self) -> int:
        return self.shards * self.shard_size

    def config(self, data: Path, models: dict[str, Path], device: str) -> dict:
        return {
            "data": {"train": str(data), "shots": self.shots},
            "generator": {"model": str(models["sd"])},
            "adapt": {"mode": "class", "epochs": self.adapt_epochs, "batch_size": min(8, self.shots),
                      "group_size": self.group_size, "resolution": self.resolution},
            "synthesize": {"images_per_class": self.images_per_class, "shard_size": self.shard_size,
                           "batch_size": self.batch, "steps": self.steps, "resolution": self.resolution},
            # No loader processes: on a CPU they would take cores from the other worker.
            "classifier": {"model": str(models["clip"]), "epochs": self.classifier_epochs,
                           "workers": 0 if device == "cpu" else -1},
            "runtime": {"device": device},
        }


def workload(args: argparse.Namespace) -> Workload:
    if args.quick:
        return Workload(classes=2, shots=2, adapt_epochs=1, group_size=1, shards=2, shard_size=2, batch=2,
                        steps=2, resolution=32, classifier_epochs=1)
    if args.full:  # the published per-image and per-step settings; fewer images and epochs
        return Workload(classes=args.classes, shots=16, adapt_epochs=2, group_size=args.group_size,
                        shards=args.shards, shard_size=10, batch=10, steps=50, resolution=512,
                        classifier_epochs=1)
    # Units long enough (about a second each on one core) that start-up does not hide them.
    return Workload(classes=args.classes, shots=4, adapt_epochs=20, group_size=args.group_size,
                    shards=args.shards, shard_size=8, batch=4, steps=20, resolution=32, classifier_epochs=1)


def build_models(folder: Path, full: bool) -> dict[str, Path]:
    from datadream.components.testmodels.tiny import build_tiny_models

    if not full:
        return build_tiny_models(folder)
    from datadream.components.testmodels.families import build_random_sd21_base

    return {"sd": build_random_sd21_base(folder / "sd"), "clip": build_random_clip_b16(folder / "clip")}


def build_random_clip_b16(folder: Path) -> Path:
    """CLIP ViT-B/16 at full size with random weights (speed does not depend on the values), with
    the tiny byte-level tokenizer: prompt lengths are about right, words are not."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from datadream.components.testmodels.tiny import tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    config = CLIPConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                         max_position_embeddings=77, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=16),
        projection_dim=512,
    )
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@dataclass
class Worker:
    process: subprocess.Popen
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line)

    def first(self, pattern: str) -> float | None:
        return next((t for t, line in self.lines if line.startswith(pattern)), None)

    def tail(self, n: int = 40) -> str:
        return "\n".join(line for _, line in self.lines[-n:])


def _read(worker: Worker, started: float) -> None:
    # Each line is stamped when it arrives: the log carries no timestamps, and stderr is line
    # buffered (PYTHONUNBUFFERED), so arrival is when the worker wrote it.
    for line in worker.process.stdout:
        worker.lines.append((time.monotonic() - started, line.rstrip("\n")))


def worker_env(index: int, args: argparse.Namespace) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    threads = str(args.threads_per_worker)
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
    if args.device.startswith("cuda"):
        gpus = args.gpus.split(",")
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]  # one GPU per worker, as a user runs them
    return env


def datadream(*argv: str | Path) -> list[str]:
    return [sys.executable, "-m", "datadream", *map(str, argv)]


def one_repetition(config: Path, folder: Path, workers: int, args: argparse.Namespace) -> dict:
    """`datadream init`, then `workers` processes of `datadream run` on the run at once."""
    run, store = folder / "run", folder / "store"
    sets = ["--set", f"runtime.store={store}"]
    init = subprocess.run(datadream("init", config, run, *sets), capture_output=True, text=True,
                          env=worker_env(0, args), timeout=args.timeout)
    if init.returncode:
        sys.exit(f"scale_out: datadream init failed:\n{init.stdout[-2000:]}{init.stderr[-3000:]}")
    pin = args.device == "cpu" and not args.no_pin and (os.cpu_count() or 1) >= workers * args.threads_per_worker
    started = time.monotonic()
    procs = []
    for index in range(workers):
        process = subprocess.Popen(datadream("run", config, run, *sets), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=worker_env(index, args))
        if pin:
            # Each worker owns its cores, as it would own its GPU: the ratio then measures how the
            # units spread over workers (locks, waiting, model loading), not CPU threading. Set
            # from here while the child is still a single thread; its threads inherit it.
            cores = range(index * args.threads_per_worker, (index + 1) * args.threads_per_worker)
            try:
                os.sched_setaffinity(process.pid, set(cores))
            except (AttributeError, OSError):
                pass
        procs.append(Worker(process))
    readers = [threading.Thread(target=_read, args=(w, started), daemon=True) for w in procs]
    for reader in readers:
        reader.start()
    try:
        for w in procs:
            w.process.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        for w in procs:
            w.process.kill()
        sys.exit(f"scale_out: the workers ran past --timeout {args.timeout}s")
    for reader in readers:
        reader.join()
    for number, w in enumerate(procs):
        if w.process.returncode:
            sys.exit(f"scale_out: worker {number} of {workers} exited with {w.process.returncode}:\n{w.tail()}")
    # A worker ends a stage when every unit of it is complete (it waits for the others' units), so
    # the first worker to log a stage's end marks the moment the stage was done.
    if args.show_logs:
        for number, w in enumerate(procs):
            print(f"--- worker {number} of {workers} (seconds since the workers started)")
            print("\n".join(f"{t:7.1f}  {line}" for t, line in w.lines), flush=True)
    ends = {}
    for stage in ("adapt", "synthesize"):
        times = [t for t in (w.first(f"{stage}: wall time") for w in procs) if t is not None]
        if not times:
            sys.exit(f"scale_out: no worker logged the end of {stage}; output of worker 0:\n{procs[0].tail()}")
        ends[stage] = min(times)
    return {"workers": workers, "adapt_s": ends["adapt"], "wall_s": ends["synthesize"],
            **check_units(run), "timings": read_timings(run)}


def check_units(run: Path) -> dict:
    """Every adapter unit and shard complete (from the files), and none done twice (each adapter
    and each generated shard writes one timing row)."""
    from datadream.artifacts import unit_state
    from datadream.units import plan_work

    units = [u for u in plan_work(run) if u.stage in ("adapt", "synthesize")]
    incomplete = [u.id for u in units if unit_state(u) != "complete"]
    if incomplete:
        sys.exit(f"scale_out: {len(incomplete)} unit(s) of {run} are not complete, e.g. {incomplete[0]}")
    rows = read_timings(run)
    adapters = sum(len(u.members) for u in units if u.stage == "adapt")
    shards = sum(1 for u in units if u.stage == "synthesize")
    trained = sum(1 for r in rows if r.get("stage") == "adapt")
    generated = sum(r.get("shards", 0) for r in rows if r.get("stage") == "synthesize")
    return {"adapt_units": sum(1 for u in units if u.stage == "adapt"), "shards": shards,
            "units": len(units), "duplicated": max(0, trained - adapters) + max(0, generated - shards)}


def read_timings(run: Path) -> list[dict]:
    path = run / "logs" / "timings.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def unit_costs(run: Path, rows: list[dict]) -> dict[str, float]:
    """Seconds per adapter, per synthetic image and per classifier epoch of one 1-worker run."""
    from datadream.runs import open_run
    from datadream.units import adapter_groups, shard_ranges

    opened = open_run(run)
    # The batched engine logs every adapter of a group with the group's time so far: a group's
    # time is that of its last adapter. adapter_groups gives the groups exactly as they ran.
    group_of = {spec.name: i for i, group in enumerate(adapter_groups(opened)) for spec in group}
    group_seconds: dict[object, float] = {}
    adapters = 0
    for row in rows:
        if row.get("stage") == "adapt":
            adapters += 1
            key = group_of.get(row["unit"], row["unit"]) if row.get("engine") == "batched" else row["unit"]
            group_seconds[key] = max(group_seconds.get(key, 0.0), row["seconds"])
    shard_images = len(shard_ranges(opened)[0])
    synth = [r for r in rows if r.get("stage") == "synthesize"]
    train = [r for r in rows if r.get("stage") == "train"]
    out = {"seconds_per_adapter": sum(group_seconds.values()) / max(1, adapters),
           # includes loading the pipeline once (one row per synthesize call of the worker)
           "seconds_per_image": sum(r["seconds"] for r in synth)
           / max(1, sum(r["shards"] for r in synth) * shard_images)}
    if train:
        out["seconds_per_epoch"] = sum(r["seconds"] for r in train) / max(1, sum(r["epochs"] for r in train))
    return out


def model_flops(config_path: Path, classes: int) -> dict[str, float]:
    """The cost model's FLOPs of the measured work, so that `predict --costs` can scale the
    measured seconds to other settings (more epochs, steps, shots, images) by FLOPs."""
    from datadream.config import load_config
    from datadream.plan import make_plan

    config = load_config(config_path, [])
    plan = make_plan(config, classes=classes)
    epochs = config.classifier.epochs
    return {"flops_per_adapter": plan.stage("adapt").flops / max(1, plan.counts["adapters"]),
            "flops_per_image": plan.stage("synthesize").flops / max(1, plan.counts["images"]),
            "flops_per_epoch": plan.stage("train").flops / max(1, epochs),
            "images_per_epoch": plan.counts["train_samples"]}


def measure(args: argparse.Namespace) -> None:
    import yaml

    from datadream.data.toy import write_toy_dataset

    work_spec = workload(args)
    counts = [int(n) for n in args.workers.split(",")]
    repeats = 1 if args.quick else args.repeats
    command = shlex.join(["python", "benchmarks/scale_out.py", *sys.argv[1:]])
    device = (cpu_description() if args.device == "cpu" else gpu_description(args.gpus.split(",")[:max(counts)]))
    device += f"; {args.threads_per_worker} CPU thread(s) per worker"
    work = Path(tempfile.mkdtemp(prefix="datadream-scale-out-"))
    results: list[dict] = []
    costs: list[dict] = []
    try:
        models = build_models(work / "models", args.full)
        data = write_toy_dataset(work / "data", {"train": work_spec.shots}, size=work_spec.resolution,
                                 classes=tuple(f"class{i:03d}" for i in range(work_spec.classes)))
        config = work / "config.yaml"
        config.write_text(yaml.safe_dump(work_spec.config(data / "train", models, args.device), sort_keys=False),
                          encoding="utf-8")
        for repeat in range(repeats):
            # Alternate the order so that a machine that slows down (or warms up) over the run
            # does not favour one worker count.
            for workers in (counts if repeat % 2 == 0 else counts[::-1]):
                result = one_repetition(config, work / f"rep{repeat}-{workers}w", workers, args)
                results.append(result)
                print(f"repetition {repeat + 1}/{repeats}, {workers} worker(s): adapt done at {result['adapt_s']:.1f}s,"
                      f" adapt+synthesize at {result['wall_s']:.1f}s, {result['units'] / result['wall_s']:.2f} units/s"
                      f" ({result['units']} units, {result['duplicated']} done twice)", flush=True)
                if workers == 1:
                    costs.append(unit_costs(work / f"rep{repeat}-{workers}w" / "run", result["timings"]))
                shutil.rmtree(work / f"rep{repeat}-{workers}w", ignore_errors=True)
        flops = model_flops(config, work_spec.classes)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    units = results[0]["units"]
    medians = {n: statistics.median(r["wall_s"] for r in results if r["workers"] == n) for n in counts}
    adapt = {n: statistics.median(r["adapt_s"] for r in results if r["workers"] == n) for n in counts}
    base = medians[counts[0]]
    lines = ["| workers | wall s, adapt+synthesize (median) | adapt done at s | units/s | speed-up"
             " | units done twice |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n in counts:
        twice = sum(r["duplicated"] for r in results if r["workers"] == n)
        lines.append(f"| {n} | {medians[n]:.1f} | {adapt[n]:.1f} | {units / medians[n]:.2f}"
                     f" | {base / medians[n]:.2f}x | {twice} |")
    table = "\n".join(lines)
    what = (f"{'full-size random SD 2.1-base' if args.full else 'tiny random SD'} at {work_spec.resolution} px,"
            f" one class-wise run of {work_spec.classes} classes x {work_spec.shots} shots:"
            f" {results[0]['adapt_units']} adapter units ({work_spec.group_size} classes each, {work_spec.adapt_epochs}"
            f" epochs) + {results[0]['shards']} synthesize shards ({work_spec.shards} per class x"
            f" {work_spec.shard_size} images, {work_spec.steps} steps) = {units} units; N `datadream run` processes"
            " started at once on the run (fresh run folder and store each time), wall time from their start to the"
            f" end of synthesize (process start-up and model loading included), median of {repeats}")
    print(f"\n{what}.\ndevice: {device}\ncommand: {command}\n\n{table}")
    if len(counts) > 1:
        print(f"\nratio (median wall, {counts[0]} worker / {counts[-1]} workers): {base / medians[counts[-1]]:.2f}x")
    if args.save_costs:
        save_costs(Path(args.save_costs), costs, flops, work_spec, args, device, command)
    if not (args.quick or args.no_report):
        append_report("Scale-out: one run shared by several workers", what, table, device, versions(), command)


def save_costs(path: Path, costs: list[dict], flops: dict, spec: Workload, args: argparse.Namespace,
               device: str, command: str) -> None:
    def median(key: str) -> float | None:
        values = [c[key] for c in costs if key in c]
        return statistics.median(values) if values else None

    record = {
        "what": "per-unit costs of datadream, measured by benchmarks/scale_out.py (median of the 1-worker runs)",
        "device": device,
        "models": "full" if args.full else "tiny",
        "models_note": ("full-size random SD 2.1-base and CLIP ViT-B/16: representative of real runs" if args.full else
                        "TINY random models: not representative of real runs; for testing the tooling only"),
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
        "software": versions(),
        "settings": {**{k: getattr(spec, k) for k in spec.__dataclass_fields__}, "device": args.device},
        "adapt": {"seconds_per_adapter": median("seconds_per_adapter"),
                  "flops_per_adapter": flops["flops_per_adapter"]},
        "synthesize": {"seconds_per_image": median("seconds_per_image"), "flops_per_image": flops["flops_per_image"]},
        "train": {"seconds_per_epoch": median("seconds_per_epoch"), "flops_per_epoch": flops["flops_per_epoch"],
                  "images_per_epoch": flops["images_per_epoch"]},
        "note": "seconds include loading the models once per stage; FLOPs are the cost model's count of the same work",
    }
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"per-unit costs: {path}")


# --- predict -------------------------------------------------------------------------------------

@dataclass
class Unit:
    name: str  # "<run> <unit id>", the unit id starting with its stage as in plan_work
    seconds: float  # on one GPU
    deps: tuple[int, ...]
    parallel: bool = False  # may run data-parallel on up to --dp-gpus GPUs of one node
    gpu: bool = True  # the index needs no GPU (and no time worth counting)

    @property
    def stage(self) -> str:
        return self.name.rsplit(" ", 1)[-1].split("/", 1)[0]


@dataclass
class Dag:
    """Units in an order where each comes after its dependencies (as plan_work lists them)."""

    units: list[Unit] = field(default_factory=list)

    def add(self, name: str, seconds: float, deps=(), parallel: bool = False, gpu: bool = True) -> int:
        self.units.append(Unit(name, seconds, tuple(deps), parallel, gpu))
        return len(self.units) - 1

    def count(self, stage: str) -> int:
        return sum(1 for u in self.units if u.stage == stage)


class Costs:
    """Seconds of a unit from its FLOPs: the FLOP model's assumed GPU throughput (estimates), or
    the throughput achieved per stage in a measurement (a --costs file)."""

    def __init__(self, gpu: str, measured: dict | None):
        from datadream import costs

        self.gpu = costs.find_gpu(gpu)
        self.rates: dict[str, float] = {}  # FLOP/s achieved per stage, from the measurement
        if measured:
            for stage, seconds, flops in (("adapt", "seconds_per_adapter", "flops_per_adapter"),
                                          ("synthesize", "seconds_per_image", "flops_per_image"),
                                          ("train", "seconds_per_epoch", "flops_per_epoch")):
                entry = measured.get(stage) or {}
                if entry.get(seconds) and entry.get(flops):
                    self.rates[stage] = entry[flops] / entry[seconds]
            if "train" in self.rates:  # evaluation is not timed: CLIP forward passes at the training rate
                self.rates["evaluate"] = self.rates["train"]

    def seconds(self, stage: str, flops: float) -> float:
        rate = self.rates.get(stage)
        return flops / rate if rate else self.gpu.seconds(flops)


def add_generation(dag: Dag, config, classes: int, costs: Costs, tag: str) -> list[int]:
    """A run's adapter units and synthesize shards (datadream.units.plan_work's shape); returns
    the shards, on which each run's index depends."""
    from datadream.plan import make_plan
    from datadream.units import outline, shard_ranges

    plan = make_plan(config, gpu=costs.gpu.key, classes=classes)
    adapt, synth = plan.stage("adapt"), plan.stage("synthesize")
    adapter_of: list[int | None] = [None] * classes
    if config.adapt.mode == "dataset":
        unit = dag.add(f"{tag} adapt/dataset", costs.seconds("adapt", adapt.flops), parallel=True)
        adapter_of = [unit] * classes
    elif config.adapt.mode == "class":
        per_adapter = costs.seconds("adapt", adapt.flops / plan.counts["adapters"])
        for members in outline(config, plan.data.shots, has_test=False).adapt_units:  # the units a run has
            unit = dag.add(f"{tag} adapt/{len(members)}-classes", per_adapter * len(members))
            for c in members:
                adapter_of[c] = unit
    per_image = costs.seconds("synthesize", synth.flops / plan.counts["images"])
    shards = shard_ranges(SimpleNamespace(config=config))  # the planner's own shard sizes
    out = []
    for c in range(classes):
        deps = () if adapter_of[c] is None else (adapter_of[c],)
        for shard in shards:
            out.append(dag.add(f"{tag} synthesize/class-{c}/{shard.start}", per_image * len(shard), deps))
    return out


def add_classifier(dag: Dag, config, classes: int, costs: Costs, tag: str, shards: list[int] | None) -> None:
    """index (needs no GPU) -> train (data-parallel) -> evaluate, as plan_work chains them."""
    from datadream.plan import make_plan

    plan = make_plan(config, gpu=costs.gpu.key, classes=classes)
    after: tuple[int, ...] = ()
    if shards is not None:
        after = (dag.add(f"{tag} index", 0.0, shards, gpu=False),)
    train = plan.stage("train")
    if train.flops:
        after = (dag.add(f"{tag} train", costs.seconds("train", train.flops), after, parallel=True),)
    evaluate = plan.stage("evaluate")
    if evaluate is not None:
        dag.add(f"{tag} evaluate", costs.seconds("evaluate", evaluate.flops), after)


def paper_table(costs: Costs, bench_file: Path, datasets: list[str] | None = None) -> tuple[Dag, str]:
    """Every cell of the benchmark file; a generator method's adapters and synthetic set are made
    once per (dataset, seed) and shared by its settings through the store (one set of units)."""
    from datadream.benchmark import GENERATOR_METHODS, read_benchmark
    from datadream.catalog import CATALOG

    bench = read_benchmark(bench_file)
    if datasets:
        bench.datasets = {k: v for k, v in bench.datasets.items() if k in datasets}
    dag = Dag()
    shared: dict[tuple, list[int]] = {}
    cells = bench.cells()
    for cell in cells:
        config = bench.config(cell, [])
        if cell.dataset not in CATALOG:
            raise SystemExit(f"predict: {cell.dataset} is not a catalog dataset; its class count is unknown")
        classes = CATALOG[cell.dataset].classes
        tag = f"{cell.dataset}/seed{cell.seed}/{cell.folder}"
        shards = None
        if cell.method in GENERATOR_METHODS:
            key = (cell.dataset, cell.seed, cell.method)
            if key not in shared:
                shared[key] = add_generation(dag, config, classes, costs,
                                             f"{cell.dataset}/seed{cell.seed}/{cell.method}")
            shards = shared[key]
        add_classifier(dag, config, classes, costs, tag, shards)
    what = (f"{len(bench.datasets)} datasets x {len(bench.methods)} methods ({', '.join(bench.methods)}) x"
            f" {len(bench.settings)} settings for the generator methods ({', '.join(bench.settings)}) x"
            f" {len(bench.seeds)} seeds = {len(cells)} runs; each generator method's adapters and synthetic set made"
            " once per dataset and seed and shared by both settings through the store")
    return dag, what


def imagenet_class_wise(costs: Costs) -> tuple[Dag, str]:
    from datadream.config import load_config

    config = load_config(CLASS_CONFIG, ["data.dataset=imagenet"])
    dag = Dag()
    shards = add_generation(dag, config, 1000, costs, "imagenet/class-wise")
    add_classifier(dag, config, 1000, costs, "imagenet/class-wise", shards)
    return dag, (f"one run: 1000 classes x {config.data.shots} shots, {config.synthesize.images_per_class} images per"
                 f" class, classifier on {config.classifier.train_on}")


@dataclass
class Schedule:
    gpus: int
    wall: float
    work: float  # GPU-seconds on one GPU per unit: the least any schedule spends
    critical: float  # the longest chain, data-parallel units on as many GPUs as they may use
    path: list[tuple[str, float, int]]  # (unit, seconds, GPUs) along the critical path


def speedup(gpus: int, efficiency: float) -> float:
    return 1.0 if gpus <= 1 else gpus * efficiency


def simulate(dag: Dag, gpus: int, per_node: int, dp_gpus: int, efficiency: float) -> Schedule:
    """Greedy list scheduling: whenever GPUs are free, ready units start longest first, where a
    unit's length is its own time plus the longest chain of units waiting on it (its 'bottom
    level'; for independent units simply the longest unit). A data-parallel unit takes extra
    GPUs of one node only when no other ready unit is waiting for them. One unit per GPU."""
    units = dag.units
    nodes = [per_node] * (gpus // per_node) + ([gpus % per_node] if gpus % per_node else [])
    widest = min(dp_gpus, max(nodes))

    def cap(u: Unit) -> int:
        return widest if u.parallel else 1

    def best(u: Unit) -> float:
        return u.seconds / speedup(cap(u), efficiency)

    succ: list[list[int]] = [[] for _ in units]
    for i, u in enumerate(units):
        for d in u.deps:
            succ[d].append(i)
    level = [0.0] * len(units)
    for i in range(len(units) - 1, -1, -1):  # units are added after their dependencies
        level[i] = best(units[i]) + max((level[s] for s in succ[i]), default=0.0)
    waiting = [len(u.deps) for u in units]
    free, total_free = list(nodes), gpus
    ready: list[tuple[float, int]] = []
    events: list[tuple[float, int, int, int]] = []
    now = 0.0

    def finish(i: int) -> None:
        stack = [i]
        while stack:
            for s in succ[stack.pop()]:
                waiting[s] -= 1
                if waiting[s] == 0:
                    if units[s].gpu:
                        heapq.heappush(ready, (-level[s], s))
                    else:
                        stack.append(s)  # needs no GPU and no time: done as soon as it is ready

    for i, u in enumerate(units):
        if not u.deps:
            if u.gpu:
                heapq.heappush(ready, (-level[i], i))
            else:
                finish(i)
    wall = 0.0
    while ready or events:
        while ready and total_free:
            _, i = heapq.heappop(ready)
            u = units[i]
            if u.parallel:
                node = max(range(len(free)), key=lambda n: free[n])
                take = max(1, min(cap(u), free[node], total_free - len(ready)))
            else:  # best fit: keep whole nodes free for data-parallel units
                node = min((n for n in range(len(free)) if free[n]), key=lambda n: free[n])
                take = 1
            free[node] -= take
            total_free -= take
            heapq.heappush(events, (now + u.seconds / speedup(take, efficiency), i, node, take))
        end, i, node, take = heapq.heappop(events)
        now = wall = max(wall, end)
        free[node] += take
        total_free += take
        finish(i)
    # The critical path: from the unit with the longest bottom level, always the longest successor.
    path = []
    i = max((j for j, u in enumerate(units) if not u.deps), key=lambda j: level[j])
    while True:
        if units[i].gpu:
            path.append((units[i].name, best(units[i]), cap(units[i])))
        if not succ[i]:
            break
        i = max(succ[i], key=lambda s: level[s])
    return Schedule(gpus, wall, sum(u.seconds for u in units), max(level), path)


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def human(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def predict_text(args: argparse.Namespace) -> str:
    from datadream.costs import UTILISATION

    measured = json.loads(Path(args.costs).read_text(encoding="utf-8")) if args.costs else None
    costs = Costs(args.gpu, measured)
    counts = [int(n) for n in args.gpu_counts.split(",")]
    out = []
    if measured is None:
        # Headings at level 3 so that the output pastes under a section of docs/scaling.md.
        out += ["**Predicted wall times: ESTIMATES, not measurements.**",
                "",
                "ESTIMATES until measured on GPUs. Unit costs come from the FLOP model (datadream.costs): FLOPs"
                f" counted on full-size random-weight models / ({costs.gpu.name} dense bf16 peak"
                f" {costs.gpu.tflops:g} TFLOP/s x"
                f" {UTILISATION:.0%} assumed utilisation)."
                " No figure here was measured on a GPU; measure per-unit costs with"
                " `python benchmarks/scale_out.py --full --device cuda --save-costs costs.json` and predict with"
                " `--costs costs.json`."]
    else:
        stages = ", ".join(sorted(costs.rates)) or "none"
        missing = sorted({"adapt", "synthesize", "train", "evaluate"} - set(costs.rates))
        out += [f"**Predicted wall times from per-unit costs measured on {measured.get('device', '?')}.**",
                "",
                f"Costs: {args.costs} (measured {measured.get('date', '?')}: `{measured.get('command', '?')}`); the"
                f" measured FLOP/s of each stage ({stages}) scale every unit by its FLOPs."
                + (f" Not measured, so FLOP-model ESTIMATES for {costs.gpu.name}: {', '.join(missing)}."
                   if missing else "")]
        if measured.get("models") != "full":
            out += ["", "WARNING: these costs were measured on TINY random models, not on full-size SD 2.1-base and"
                    " CLIP ViT-B/16: the predictions below say nothing about real runs (use `--full` on a GPU)."]
    out += ["",
            f"Assumed, not measured: classifier training and dataset-wise adaptation run data-parallel on up to"
            f" {args.dp_gpus} GPUs of one {args.gpus_per_node}-GPU node at {args.dp_efficiency:.0%} efficiency"
            f" (g GPUs are {args.dp_efficiency:g} x g times as fast as one; `accelerate launch`, docs/ddp.md); every"
            " other unit uses one GPU, one unit per GPU at a time; model loading, start-up, file I/O and scheduling"
            " overhead are not counted.",
            "",
            "Schedule: list scheduling over the unit DAG of datadream's planner (adapter units -> synthesize shards of"
            " synthesize.shard_size images -> index -> classifier training -> evaluation): whenever GPUs are free,"
            " the ready unit with the longest remaining chain starts first. The critical path (a classifier training"
            " waits for its whole synthetic set; a dataset-wise adapter is one long unit) bounds the speed-up: no"
            " number of GPUs makes a workload faster than its critical path."]
    workloads = [("(a) The paper's table", *paper_table(costs, Path(args.bench), args.datasets)),
                 ("(b) ImageNet class-wise", *imagenet_class_wise(costs))]
    for title, dag, what in workloads:
        kinds = {word: dag.count(word) for word in ("adapt", "synthesize", "train", "evaluate")}
        schedules = [simulate(dag, n, min(n, args.gpus_per_node), args.dp_gpus, args.dp_efficiency) for n in counts]
        single = schedules[0].wall if counts[0] == 1 else schedules[0].work
        out += ["", f"### {title}", "", f"{what}: {len(dag.units):,} units ({plural(kinds['adapt'], 'adapter unit')},"
                f" {plural(kinds['synthesize'], 'synthesize shard')}, {plural(kinds['train'], 'classifier training')},"
                f" {plural(kinds['evaluate'], 'evaluation')}), {schedules[0].work / 3600:,.0f} GPU-hours of work"
                " with one GPU per unit.",
                "",
                "| GPUs | predicted wall time | speed-up | efficiency | lower bound: work / GPUs"
                " | lower bound: critical path | limited by |",
                "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for s in schedules:
            bound = "critical path" if s.critical >= s.work / s.gpus else "total work"
            out.append(f"| {s.gpus} | {human(s.wall)} | {single / s.wall:.1f}x | {single / (s.wall * s.gpus):.0%} |"
                       f" {human(s.work / s.gpus)} | {human(s.critical)} | {bound} |")
        last = schedules[-1]
        chain = " -> ".join(f"{name} {human(sec)}" + (f" on {g} GPUs" if g > 1 else "") for name, sec, g in last.path)
        out += ["", f"Critical path with {last.gpus} GPUs ({human(last.critical)}): {chain}.",
                f"Maximum speed-up, whatever the GPU count: {last.work / last.critical:,.0f}x (work / critical path)."]
        if args.dp_gpus > 1:
            # What a runner that gives every unit one GPU (the Ray runner, local workers) gets.
            alone = simulate(dag, last.gpus, min(last.gpus, args.gpus_per_node), 1, args.dp_efficiency)
            out.append(f"Without data-parallel units (every unit on one GPU, as the Ray runner and local workers run"
                       f" them): {human(alone.wall)} on {last.gpus} GPUs (critical path {human(alone.critical)}).")
    return "\n".join(out) + "\n"


# --- command line ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["measure", "predict"], default="measure")
    parser.add_argument("--quick", action="store_true", help="a fast smoke test (measure: 2 classes, 1 repetition,"
                        " no report; predict: eurosat only for the paper's table)")
    group = parser.add_argument_group("measure")
    group.add_argument("--classes", type=int, default=8)
    group.add_argument("--shards", type=int, default=4, help="synthesize shards per class")
    group.add_argument("--group-size", type=int, default=2, help="classes per adapter unit (adapt.group_size)")
    group.add_argument("--repeats", type=int, default=3)
    group.add_argument("--workers", default="1,2", help="worker counts to compare")
    group.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per worker, see --gpus)")
    group.add_argument("--gpus", default="0,1", help="with --device cuda: CUDA_VISIBLE_DEVICES of worker 0, 1, ...")
    group.add_argument("--threads-per-worker", type=int, default=1,
                       help="CPU threads of each worker (OMP_NUM_THREADS); on a CPU each worker is pinned to its own")
    group.add_argument("--no-pin", action="store_true", help="do not pin CPU workers to cores")
    group.add_argument("--full", action="store_true", help="full-size random SD 2.1-base and CLIP ViT-B/16 (GPU)")
    group.add_argument("--timeout", type=int, default=3600, help="seconds per repetition")
    group.add_argument("--save-costs", metavar="FILE", help="write the per-unit costs (JSON) measured with 1 worker")
    group.add_argument("--no-report", action="store_true", help="print only; do not append to docs/benchmarks.md")
    group.add_argument("--show-logs", action="store_true", help="print every worker's log, each line with its time")
    group = parser.add_argument_group("predict")
    group.add_argument("--gpu", default="h100", help="GPU of the FLOP-model estimates (datadream plan's --gpu names)")
    group.add_argument("--costs", metavar="FILE", help="per-unit costs measured by this script (--save-costs)")
    group.add_argument("--gpu-counts", default="1,8,64")
    group.add_argument("--gpus-per-node", type=int, default=8)
    group.add_argument("--dp-gpus", type=int, default=DP_GPUS,
                       help="GPUs a data-parallel unit may use (1: no data parallelism)")
    group.add_argument("--dp-efficiency", type=float, default=DP_EFFICIENCY, help="ASSUMED per-GPU efficiency")
    group.add_argument("--bench", default=str(PAPER_BENCH), help="benchmark file of workload (a)")
    args = parser.parse_args(argv)
    args.datasets = ["eurosat"] if args.quick else None
    if args.mode == "predict":
        print(predict_text(args), end="")
    else:
        measure(args)


if __name__ == "__main__":
    main()
