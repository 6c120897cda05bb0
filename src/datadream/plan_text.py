"""The plan as text (`datadream plan`, `datadream run --dry-run`) and as docs/hardware.md.

    datadream plan --markdown > docs/hardware.md     # from the repository root

Torch-free, like datadream.plan. Every time, memory and disk figure printed here is an estimate
and says so, with its assumption.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from datadream import costs
from datadream.config import describe_differences, load_config, read_config_file
from datadream.errors import UserError
from datadream.layout import RunLayout
from datadream.plan import Plan, make_plan, with_family_defaults

GB = costs.GB
REFERENCE_DATASET = "fgvc_aircraft"  # 100 classes: the paper's headline fine-grained case
DOC_GPUS = ("16", "24", "80")


def assumption(gpu: costs.Gpu) -> str:
    return (f"ESTIMATES, not measured: GPU time = FLOPs / ({gpu.tflops:g} TFLOP/s dense {gpu.precision} peak"
            f" x {costs.UTILISATION:.0%} assumed utilisation); the generator's FLOPs were counted on each family's"
            " published architecture (SD 2.1-base, SDXL, SD 3.5 Medium, FLUX.1-dev; other sizes are not recognised)"
            " on the meta device, CLIP's and the activation sizes on a CPU, by benchmarks/cost_constants.py."
            " No GPU throughput has been measured yet (docs/benchmarks.md).")


def plan_text(config_path: Path | None, overrides: list[str], run: Path | None = None, gpu: str | None = None,
              classes: int | None = None, as_json: bool = False) -> str:
    """`datadream plan CONFIG` (CONFIG may be a run folder: its own config, its files counted) and
    `datadream run CONFIG RUN --dry-run`; with `as_json`, plan_json's object."""
    plan, title = command_plan(config_path, overrides, run, gpu, classes)
    return json.dumps(plan_json(plan, title), indent=2) + "\n" if as_json else render(plan, title)


def command_plan(config_path: Path | None, overrides: list[str], run: Path | None, gpu: str | None,
                 classes: int | None) -> tuple[Plan, str]:
    if run is None and config_path is not None and config_path.is_dir():
        run = config_path
        if not RunLayout(run).config.is_file():
            raise UserError(f"{run} is not a datadream run (no config.yaml); give a config file")
        config = read_config_file(RunLayout(run).config)
    else:
        config = load_config(config_path, overrides)
        with_family_defaults(config)
        if run is not None and RunLayout(run).config.is_file():
            changes = describe_differences(read_config_file(RunLayout(run).config), config, results_only=True)
            if changes:
                raise UserError(f"{run} holds a run with a different config ({'; '.join(changes[:3])}); the run"
                                " would refuse it: choose a new run folder")
    title = run if config_path is None or config_path.is_dir() else config_path
    return make_plan(config, run, gpu=gpu, classes=classes), str(title or "defaults")


def render(plan: Plan, title: str) -> str:
    gpu, data = plan.gpu, plan.data
    shots = sorted(set(data.shots))
    shot_text = f"{shots[0]} shots each" if len(shots) == 1 else f"{shots[0]}-{shots[-1]} shots per class"
    lines = [f"plan: {title}: {data.classes} classes, {shot_text} ({data.source})",
             f"GPU: {gpu.name} ({gpu.memory_gb:g} GB), {plan.precision}", assumption(gpu), ""]
    total = 0.0
    for stage in plan.stages:
        hours = stage.gpu_hours(gpu)
        total += hours
        lines.append(f"{stage.name:<11} {stage.work}")
        lines.append(f"{'':<11} to do: {stage.todo}")
        lines.append(f"{'':<11} estimate: {_hours(hours)} GPU-hours, peak {stage.memory / GB:.1f} GB"
                     f" ({stage.setting})" if stage.flops or stage.memory else f"{'':<11} estimate: no GPU work")
        if stage.name == "synthesize":
            lines.append(f"{'':<11} disk: {plan.disk / GB:.1f} GB of PNG to write (estimate: ~400 KiB per 512 px"
                         " image, measured on one natural photograph)")
    lines.append(f"{'total':<11} estimate: {_hours(total)} GPU-hours on one {gpu.name}")
    lines += ["", f"{'stage':<11} {'units':>6} {'complete':>9} {'running':>8} {'pending':>8}"
              "   (units of work, as `datadream status` counts them)"]
    lines += [f"{s.name:<11} {s.units:>6} {s.complete:>9} {s.running:>8} {s.pending:>8}" for s in plan.stages]
    if plan.config.runtime.until != "evaluate":
        lines.append(f"stops after {plan.config.runtime.until} (--until): no classifier is trained, and its model is"
                     " not needed")
    lines += [f"warning: {text}" for text in warnings(plan)]
    return "\n".join(lines) + "\n"


def plan_json(plan: Plan, title: str) -> dict:
    """The plan for scripts (`datadream plan --json`): the same figures as the text, in bytes,
    FLOPs and hours, each stage with its units as `datadream status` counts them."""
    stages = {s.name: {"units": s.units, "complete": s.complete, "running": s.running, "pending": s.pending,
                       "work": s.work, "todo": s.todo, "flops": s.flops, "gpu_hours": s.gpu_hours(plan.gpu),
                       "peak_memory_bytes": s.memory, "setting": s.setting} for s in plan.stages}
    data = plan.data
    return {"plan": title, "stages": stages,
            "data": {"classes": data.classes, "shots": data.shots, "val": data.val, "test": data.test,
                     "source": data.source},
            "gpu": {"name": plan.gpu.name, "memory_gb": plan.gpu.memory_gb}, "precision": plan.precision,
            "gpu_hours": sum(s["gpu_hours"] for s in stages.values()), "disk_bytes": plan.disk,
            "counts": plan.counts, "until": plan.config.runtime.until, "estimates": assumption(plan.gpu),
            "warnings": warnings(plan)}


def warnings(plan: Plan) -> list[str]:
    out = []
    generates = plan.config.classifier.train_on in ("synthetic", "synthetic+real")
    family = plan.config.generator.family
    if generates and not family:
        out.append(f"the family of {plan.config.generator.model} could not be read here (not on this machine or in"
                   " its cache): adapt and synthesize are priced as SD 2.1-base")
    elif generates and family != "sd":
        out.append(f"{family}: FLOPs are counted on its published architecture; its activation memory is SD"
                   " 2.1-base's scaled by FLOPs (an assumption), and attention above its native size costs more"
                   " than the linear scaling counts")
    for stage in plan.stages:
        if stage.memory > plan.gpu.memory_gb * GB:
            fix = {"adapt": "set adapt.gradient_checkpointing=true or adapt.group_size=1",
                   "synthesize": "lower synthesize.batch_size",
                   "train": "lower classifier.batch_size"}.get(stage.name, "lower classifier.eval_batch_size")
            out.append(f"{stage.name} may not fit in {plan.gpu.memory_gb:g} GB (estimated peak"
                       f" {stage.memory / GB:.1f} GB): {fix}")
    return out


def _hours(hours: float) -> str:
    if 0 < hours < 0.01:
        return "<0.01"
    return f"{hours:.2f}" if hours < 10 else f"{hours:.0f}"


def shipped_configs(root: Path) -> list[Path]:
    """Experiment configs under configs/ (benchmark matrices, which have a `datasets:` key, are not
    single runs and are left out)."""
    paths = sorted((root / "configs").glob("*.yaml")) + sorted((root / "configs" / "paper").glob("*.yaml"))
    return [p for p in paths if "datasets" not in (yaml.safe_load(p.read_text(encoding="utf-8")) or {})]


def hardware_markdown(root: Path) -> str:
    """docs/hardware.md: which GPU runs which shipped config, from the plan code itself."""
    lines = [
        "# Hardware: what a run needs",
        "",
        "Generated by `datadream plan --markdown > docs/hardware.md` (run from the repository root); a test"
        " keeps it in sync. Plan your own run with `datadream plan CONFIG --gpu 24` or",
        "`datadream run CONFIG RUN --dry-run`.",
        "",
        f"**Every figure is an estimate, not a measurement.** GPU time = FLOPs / (dense tensor-core peak x"
        f" {costs.UTILISATION:.0%} assumed utilisation). The generator's FLOPs and parameter counts were counted"
        " on each family's full-size architecture by torch's FlopCounterMode on the meta device"
        " (`benchmarks/cost_constants.py --families`; a test counts them again), CLIP's FLOPs and the activation"
        " sizes on full-size random-weight models on a CPU (`benchmarks/cost_constants.py`); peak memory = weights + LoRA weights, gradients and AdamW state (16 bytes per trainable"
        f" parameter) + activations + {costs.CUDA_OVERHEAD_GB:g} GB assumed CUDA overhead. docs/benchmarks.md"
        " holds no GPU measurement yet; when it does, trust it over this page.",
        "",
        f"Shipped configs, on `{REFERENCE_DATASET}` (100 classes, 16 shots, CoOp split sizes), default settings:",
        "",
        "| config | GPU | precision | adapt engine | adapt peak | synthesize peak | train peak |"
        " GPU-hours adapt / synthesize / train+eval | synthetic set on disk |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for path in shipped_configs(root):
        config = load_config(path, [f"data.dataset={REFERENCE_DATASET}"])
        for gpu in DOC_GPUS:
            plan = make_plan(config, gpu=gpu)
            hours = {s.name: s.gpu_hours(plan.gpu) for s in plan.stages}
            adapt, synth, train = plan.stage("adapt"), plan.stage("synthesize"), plan.stage("train")
            lines.append(
                f"| `{path.relative_to(root).as_posix()}` | {plan.gpu.name} ({gpu} GB) | {plan.precision}"
                f" | {adapt.setting.split(', ', 1)[1] if adapt else '-'} | {_gb(adapt)} | {_gb(synth)} | {_gb(train)}"
                f" | {_hours(hours.get('adapt', 0))} / {_hours(hours.get('synthesize', 0))} /"
                f" {_hours(hours.get('train', 0) + hours.get('evaluate', 0))} | {plan.disk / GB:.1f} GB |")
    lines += ["", *group_size_table(), "", *dataset_table(root), ""]
    return "\n".join(lines)


def _gb(stage) -> str:
    return f"{stage.memory / GB:.1f} GB" if stage else "-"


def group_size_table() -> list[str]:
    lines = [
        "## Batched class-wise adaptation: `adapt.group_size` by GPU memory",
        "",
        "Classes trained together in one forward/backward (batch 8 each, text-encoder LoRA on). An adapt unit"
        " holds `adapt.group_size` classes (0: 16); with 0 the stage measures one class on the GPU and trains"
        " a unit in parts that fill 85% of the free memory: these are the part sizes to expect, or the"
        " group sizes to set by hand. GPUs without bf16 (T4, V100) train in fp16,"
        " where the engine trains one adapter at a time (one loss scaler cannot serve K adapters).",
        "",
        "| GPU memory | bf16 | bf16 + gradient checkpointing | fp32 |",
        "| --- | ---: | ---: | ---: |",
    ]
    for memory in ("16", "24", "40", "80"):
        gpu = costs.Gpu("x", "", float(memory), 1, True)
        sizes = [costs.largest_group(gpu, p, 8, 1, True, ckpt) for p, ckpt in
                 (("bf16", False), ("bf16", True), ("fp32", False))]
        lines.append(f"| {memory} GB | " + " | ".join(str(s) if s else "does not fit" for s in sizes) + " |")
    lines += ["", "Gradient checkpointing is estimated to keep 30% of the activations (a rule of thumb) and"
              " costs about 30% more time."]
    return lines


def dataset_table(root: Path) -> list[str]:
    from datadream.catalog import CATALOG

    lines = [
        "## The ten benchmark datasets (16 shots, 500 images per class, synthetic+real)",
        "",
        "Estimated GPU-hours of a whole run on one NVIDIA A100 80 GB, and the synthetic set's size.",
        "",
        "| dataset | classes | class-wise | dataset-wise | synthetic set |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    configs = {mode: root / "configs" / "paper" / f"datadream-{mode}.yaml" for mode in ("class", "dataset")}
    for entry in CATALOG.values():
        hours, disk = {}, 0.0
        for mode, path in configs.items():
            plan = make_plan(load_config(path, [f"data.dataset={entry.key}"]), gpu="80")
            hours[mode] = sum(s.gpu_hours(plan.gpu) for s in plan.stages)
            disk = plan.disk
        lines.append(f"| {entry.key} | {entry.classes} | {_hours(hours['class'])} | {_hours(hours['dataset'])}"
                     f" | {disk / GB:.0f} GB |")
    return lines
