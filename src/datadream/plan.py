"""What a run will do and cost, before any GPU time is spent.

    datadream plan configs/paper/datadream-class.yaml --set data.dataset=fgvc_aircraft --gpu 24
    datadream run CONFIG RUN --dry-run      # the same, counting what RUN already holds

Counts every unit of work from the config and the files alone (RUN/adapters/<unit>/unit.json,
RUN/synthetic/<class>/<i>.png, the classifier's markers): nothing is written, no model is loaded,
and this module never imports torch. Time, memory and disk come from datadream.costs and are
ESTIMATES (FLOP counts x an assumed GPU throughput), printed as such.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from datadream import artifacts, costs
from datadream.config import SECTIONS, Config, shown
from datadream.errors import UserError
from datadream.layout import DATASET_UNIT, RunLayout
from datadream.runs import Run, apply_family_defaults, open_run
from datadream.units import Outline, outline, plan_work, store_of, synthetic_specs

# The plan keeps a few numbers per class; ImageNet-21k's 21,841 classes are the largest label set
# in common use, and this bound keeps a mistyped --classes from filling the memory.
MAX_CLASSES = 100_000
# Any count in a config beyond this (steps, images, epochs, pixels) is a typo, not a run: the
# products of such counts would overflow the float arithmetic that prices them.
MAX_COUNT = 10**9


@dataclass
class DataShape:
    """What the plan knows of the dataset: enough to count, nothing to train on."""

    shots: list[int]  # real shots of each class, in label order
    val: int  # images in the validation split (0: none)
    test: int
    source: str  # where the counts come from, printed with the plan
    slugs: list[str] | None = None  # class folders inside RUN, known once a run exists

    @property
    def classes(self) -> int:
        return len(self.shots)


@dataclass
class Stage:
    name: str
    work: str  # what the whole stage does
    todo: str  # what is left of it in this run
    flops: float  # of the work left
    memory: float  # peak bytes on the GPU
    setting: str  # precision and engine the memory figure assumes
    skipped: int = 0
    units: int = 0  # units of work, as datadream.units plans them and `status` counts them
    complete: int = 0
    running: int = 0

    @property
    def pending(self) -> int:
        return self.units - self.complete - self.running

    def gpu_hours(self, gpu: costs.Gpu) -> float:
        return gpu.seconds(self.flops) / 3600


@dataclass
class Plan:
    config: Config
    data: DataShape
    gpu: costs.Gpu
    precision: str
    stages: list[Stage] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # the figures the tests add up
    disk: float = 0.0  # bytes of the synthetic set still to write

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)


def data_shape(config: Config, run: Run | None = None, classes: int | None = None) -> DataShape:
    """Class and split sizes from RUN/fewshot.json, else --classes, else the data folders, else
    the benchmark catalog (CoOp split sizes)."""
    shots = config.data.shots
    val = test = 0
    source = ""
    if config.data.dataset:
        from datadream.catalog import get_entry

        entry = get_entry(config.data.dataset)
        val, test = entry.sizes.get("val", 0), entry.sizes.get("test", 0)
        source = f"{entry.key}: class count and split sizes from the catalog (CoOp protocol)"
        counts = [shots] * entry.classes
    if run is not None:
        if not config.data.dataset:
            val, test = _split_sizes(config)
        classes_of_run = run.manifest.classes
        return DataShape([len(c.images) for c in classes_of_run], val, test, f"{run.layout.fewshot}",
                         [c.slug for c in classes_of_run])
    if classes is not None:
        return DataShape([shots] * classes, val, test, f"--classes {classes}")
    if config.data.train or config.data.root:
        from datadream.data.sources import load_view

        try:
            view = load_view(config.data)
        except UserError as err:
            if not config.data.dataset:
                raise
            # Planning before the download is the point: the catalog knows the counts.
            return DataShape(counts, val, test, f"{source}; the data folders are not readable yet: {err}")
        per_class = [0] * len(view.keys)
        for item in view.split("train"):
            per_class[item.label] += 1
        return DataShape([min(shots, n) for n in per_class], len(view.split("val")), len(view.split("test")),
                         "the data folders of the config")
    if config.data.dataset:
        return DataShape(counts, val, test, source)
    raise UserError("plan: the class count is unknown; set data.train (or data.root), data.dataset, or pass"
                    " --classes N")


def _split_sizes(config: Config) -> tuple[int, int]:
    if not (config.data.train or config.data.root):
        return 0, 0
    from datadream.data.sources import load_view

    try:
        view = load_view(config.data, splits=("val", "test"))
    except UserError:
        return 0, 0  # data moved away since init: the plan still counts the generator's work
    return len(view.split("val")), len(view.split("test"))


def with_family_defaults(config: Config) -> None:
    """The settings `init` would give the generator's family (priced as the run would do them),
    where its model_index.json can be read here; otherwise the config's own values."""
    from datadream.components.generators.families import family_of

    if config.classifier.train_on not in ("synthetic", "synthetic+real"):
        return
    try:
        apply_family_defaults(config, family_of(config.generator.model))
    except UserError:
        return


def check_counts(config: Config, classes: int | None) -> None:
    """Refuse, in one line, a count the plan cannot price."""
    if classes is not None and not 1 <= classes <= MAX_CLASSES:
        raise UserError(f"plan: --classes {classes}: give a class count from 1 to {MAX_CLASSES:,}")
    for section in SECTIONS:
        values = getattr(config, section)
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            if type(value) is int and f.name != "seed" and value > MAX_COUNT:
                raise UserError(f"plan: {section}.{f.name}={shown(value)} is more than plan prices (at most"
                                f" {MAX_COUNT:,}); give a smaller value")


def make_plan(config: Config, run: Path | None = None, gpu: str | None = None,
              classes: int | None = None) -> Plan:
    """The run's units (datadream.units) priced stage by stage; a run folder's complete units and
    images are counted as done (datadream.artifacts)."""
    check_counts(config, classes)
    config = copy.deepcopy(config)
    with_family_defaults(config)  # priced as the run will do it; a run's own config already has them
    existing = None
    if run is not None and RunLayout(run).fewshot.is_file():
        # The run's classes with this config: a speed setting given here (synthesize.shard_size,
        # say) is what the run will use once `run` records it.
        opened = open_run(Path(run).resolve())
        existing = Run(opened.layout, config, opened.manifest)
    data = data_shape(config, existing, classes)
    device = costs.find_gpu(gpu)
    precision = device.precision if config.runtime.precision == "auto" else config.runtime.precision
    plan = Plan(config, data, device, precision)
    shape = outline(config, data.shots, has_test=bool(data.test))
    states = _unit_states(existing, bool(data.test)) if existing is not None else {}
    for name in shape.stages:
        stage = PRICE[name](plan, shape, existing)
        counted = states.get(name, Counter())
        stage.units = sum(counted.values()) if existing is not None else shape.units(name)
        stage.complete, stage.running = counted["complete"], counted["running"]
        plan.stages.append(stage)
        plan.counts[f"{name}_units"] = stage.units
    return plan


def _unit_states(run: Run, has_test: bool) -> dict[str, Counter]:
    """Per stage, how many of the run's units are complete, running and pending (as `status`)."""
    facts = artifacts.RunFacts(run)
    states: dict[str, Counter] = {}
    for unit in plan_work(run, has_test=has_test):
        states.setdefault(unit.stage, Counter())[facts.state(unit)] += 1
    return states


def adapt_engine(config: Config, precision: str) -> str:
    """The engine stages/adapt.py's choose_engine picks, without torch."""
    cfg = config.adapt
    if cfg.mode != "class" or precision == "fp16" or cfg.engine == "sequential":
        return "sequential"
    return "batched"


def _adapt(plan: Plan, shape: Outline, run: Run | None) -> Stage:
    cfg, data = plan.config.adapt, plan.data
    names = [DATASET_UNIT] if cfg.mode == "dataset" else data.slugs or [f"class-{i}" for i in range(data.classes)]
    names = names[:len(shape.adapters)]
    steps_of = [cfg.epochs * math.ceil(n / cfg.batch_size) for n in shape.adapters]
    done = artifacts.adapters_complete(run) if run is not None else set()
    pending = [i for i, name in enumerate(names) if name not in done]
    steps = sum(steps_of)
    plan.counts.update(adapters=len(names), adapt_steps=steps, adapt_skipped=len(names) - len(pending),
                       adapt_pending_steps=sum(steps_of[i] for i in pending))
    if not names:
        return Stage("adapt", "adapt.mode=none: no adapter (the un-adapted generator)", "nothing", 0, 0, "-")
    prompts = 1 if cfg.mode == "class" else min(cfg.batch_size, data.classes)
    family = _family(plan)
    pixels = costs.pixels(family, cfg.resolution)
    per_sample = costs.adapt_sample_flops(family, cfg.resolution)
    flops = 0.0
    for i in pending:
        flops += cfg.epochs * shape.adapters[i] * per_sample
        if cfg.train_text_encoder:
            flops += steps_of[i] * prompts * costs.family_value(family, "text_lora_train_flops")
    engine = adapt_engine(plan.config, plan.precision)
    unit_size = max(len(unit) for unit in shape.adapt_units)
    together = unit_size if engine == "batched" else 1  # adapters in one forward/backward
    if engine == "batched" and not cfg.group_size:  # the engine measures what fits; a unit trains in parts
        fits = costs.largest_group(plan.gpu, plan.precision, cfg.batch_size, 1, cfg.train_text_encoder,
                                   cfg.gradient_checkpointing, pixels, family)
        together = max(1, min(fits, unit_size))
    memory = costs.adapt_memory(plan.precision, together, min(cfg.batch_size, max(shape.adapters)), prompts,
                                cfg.train_text_encoder, cfg.gradient_checkpointing, pixels, family)
    kind = "class-wise" if cfg.mode == "class" else f"dataset-wise on {sum(data.shots)} shots"
    per = (f"{steps_of[0]:,} steps each ({cfg.epochs} epochs x ceil({shape.adapters[0]}/{cfg.batch_size}))"
           if len(set(shape.adapters)) == 1 else "steps per class from its shots")
    units = len(shape.adapt_units)
    grouping = f" in {units} unit(s) of up to {unit_size}" if units != len(names) else ""
    setting = f"{plan.precision}, {engine} engine"
    if engine == "batched":
        setting += (f", {together} of a unit's {unit_size} classes at a time" if together < unit_size
                    else f", {together} classes at a time")
    if cfg.gradient_checkpointing:
        setting += ", gradient checkpointing"
    skipped = len(names) - len(pending)
    return Stage("adapt", f"{len(names)} adapter(s){grouping}, {kind}, {per} = {steps:,} steps",
                 f"{len(pending)} adapter(s), {skipped} complete and skipped", flops, memory, setting, skipped)


def unet_evaluations(config: Config) -> int:
    """Denoiser calls per image (costs.denoiser_evaluations)."""
    cfg = config.synthesize
    return costs.denoiser_evaluations(config.generator.family, cfg.steps, cfg.guidance, cfg.sampler)


def _synthesize(plan: Plan, shape: Outline, run: Run | None) -> Stage:
    cfg, data = plan.config.synthesize, plan.data
    total = data.classes * cfg.images_per_class
    skipped = 0
    if run is not None:
        store = store_of(run)
        skipped = sum(artifacts.images_in_complete_batches(store.synthetic_class(spec.fingerprint),
                                                           cfg.images_per_class, cfg.batch_size)
                      for spec in synthetic_specs(run))
    pending = total - skipped
    evals = unet_evaluations(plan.config)
    plan.counts.update(images=total, images_skipped=skipped, unet_evaluations=total * evals)
    family = _family(plan)
    flops = pending * costs.image_flops(family, cfg.resolution, evals)
    cfg_factor = costs.guidance_pair(family, cfg.guidance)
    memory = costs.synthesize_memory(plan.precision, cfg.batch_size, cfg_factor, costs.pixels(family, cfg.resolution),
                                     family)
    plan.disk = pending * costs.PNG_BYTES_512 * _pixels(cfg.resolution)
    guidance = f"x 2 (guidance {cfg.guidance:g})" if cfg_factor == 2 else f"(guidance {cfg.guidance:g}: no CFG)"
    # The default sampler is the model's own: PNDM for SD 2.1-base, an Euler sampler for the others.
    sampler = "DPM-Solver++" if cfg.sampler != "default" else "PNDM" if family == "sd" else "Euler"
    return Stage("synthesize", f"{total:,} images ({data.classes} classes x {cfg.images_per_class}), {sampler}"
                 f" {cfg.steps} steps ({evals // cfg_factor} UNet calls) {guidance} = {total * evals:,} UNet"
                 " evaluations",
                 f"{pending:,} images, {skipped:,} already written and skipped", flops, memory,
                 f"{plan.precision}, batch {cfg.batch_size}", skipped)


def _pixels(resolution: int) -> float:
    """The pixel count relative to 512 x 512, where the PNG size was measured."""
    return (resolution / 512) ** 2


def _family(plan: Plan) -> str:
    """The generator family the config records (`init` and `plan` read it from the model), or sd."""
    return plan.config.generator.family or "sd"


def _index(plan: Plan, shape: Outline, run: Run | None) -> Stage:
    written = run is not None and run.layout.synthetic_index.is_file()
    return Stage("index", "the run's links into the store and synthetic/index.jsonl",
                 "written, rewritten if stale" if written else "all", 0.0, 0.0, "no GPU")


def _inspect(plan: Plan, shape: Outline, run: Run | None) -> Stage:
    """Every synthetic image, the shots and the validation split through the classifier's image
    tower once (its features are cached), and the class prompts through its text tower."""
    data, cfg = plan.data, plan.config
    images = data.classes * cfg.synthesize.images_per_class + sum(data.shots) + data.val
    plan.counts.update(inspect_images=images)
    written = run is not None and run.layout.inspect.is_file()
    flops = 0.0 if written else (images * costs.value("clip_image_fwd_flops")
                                 + data.classes * costs.value("clip_text_fwd_flops"))
    return Stage("inspect", f"data-quality figures: 1 pass of the classifier's image tower over {images:,} images"
                 " (synthetic, shots, validation)", "present, reused if current" if written else "all", flops,
                 costs.evaluate_memory(cfg.classifier.eval_batch_size), plan.precision, int(written))


def train_samples(config: Config, data: DataShape) -> dict[str, int]:
    """Training images per epoch by origin (train.py: real shots repeated to about the synthetic
    count per class)."""
    cfg, per_class = config.classifier, config.synthesize.images_per_class
    out = {"synthetic": 0, "real": 0}
    if cfg.train_on in ("synthetic", "synthetic+real"):
        out["synthetic"] = data.classes * per_class
    if cfg.train_on in ("real", "synthetic+real"):
        out["real"] = sum(data.shots) * max(1, per_class // config.data.shots)
    return out


def _train(plan: Plan, shape: Outline, run: Run | None) -> Stage:
    cfg, data = plan.config.classifier, plan.data
    samples = train_samples(plan.config, data)
    n = samples["synthetic"] + samples["real"]
    steps_per_epoch = math.ceil(n / cfg.batch_size) if n else 0
    epochs = cfg.epochs_for(data.classes * plan.config.synthesize.images_per_class, n) if n else 0
    steps = epochs * steps_per_epoch
    val_passes = epochs if data.val and n else 0
    plan.counts.update(train_samples=n, train_steps=steps, val_passes=val_passes)
    complete = run is not None and run.layout.classifier_marker.is_file()
    flops = 0.0
    if not complete and n:
        flops = epochs * (n * costs.value("clip_image_lora_train_flops")
                              + steps_per_epoch * data.classes * costs.value("clip_text_lora_train_flops"))
        flops += val_passes * (data.val * costs.value("clip_image_fwd_flops")
                               + data.classes * costs.value("clip_text_fwd_flops"))
    if cfg.train_on == "none":
        work = "classifier.train_on=none: zero-shot CLIP, nothing to train"
    else:
        parts = " + ".join(f"{k} {v:,}" for k, v in samples.items() if v)
        auto = "" if cfg.epochs else " (classifier.epochs=0: the successor work's step budget)"
        work = (f"{epochs} epochs{auto} x {steps_per_epoch:,} steps = {steps:,} steps at batch {cfg.batch_size}"
                f" on {n:,} images ({parts})")
        if val_passes:
            work += f"; {val_passes} validation passes over {data.val:,} images"
    return Stage("train", work, "complete, skipped" if complete else "all", flops,
                 costs.classifier_memory(cfg.batch_size, data.classes, plan.precision) if n else
                 costs.evaluate_memory(cfg.eval_batch_size), plan.precision, int(complete))


def _evaluate(plan: Plan, shape: Outline, run: Run | None) -> Stage:
    data, cfg = plan.data, plan.config.classifier
    complete = run is not None and run.layout.metrics.is_file()
    plan.counts.update(test_passes=1)
    flops = 0.0 if complete else (data.test * costs.value("clip_image_fwd_flops")
                                  + data.classes * costs.value("clip_text_fwd_flops"))
    todo = "metrics present, reused if the split is unchanged" if complete else "all"
    return Stage("evaluate", f"1 pass over {data.test:,} test images", todo, flops,
                 costs.evaluate_memory(cfg.eval_batch_size), plan.precision,
                 int(complete))


PRICE = {"adapt": _adapt, "synthesize": _synthesize, "index": _index, "inspect": _inspect, "train": _train,
         "evaluate": _evaluate}
