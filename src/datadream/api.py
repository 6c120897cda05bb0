"""The Python API, and the one surface the `datadream` command is a thin layer over: every command
is a function here.

    from datadream import api

    config = api.load_config("exp.yaml", ["data.train=photos", "data.test=photos-test"])
    api.plan(config).stages                  # estimated cost per stage, nothing written
    summary = api.run(config, "runs/mine")   # init, adapt, synthesize, train, evaluate, report
    api.predict("runs/mine", ["new-photo.jpg"], top_k=3)
    api.export("runs/mine", "exported-classifier", "classifier")

or stage by stage: `api.init_run(config, RUN)`, then `api.adapt(RUN)`, `api.synthesize(RUN)`,
`api.train(RUN)`, `api.evaluate(RUN)`, `api.inspect(RUN)`, `api.report(RUN)`; each resumes where it
stopped. `api.RunLayout(RUN)` says where a run keeps each file.

Scaling out: `api.plan_work(RUN)` lists the run's units, `api.execute(unit)` does one (what every
runner calls), `api.run_units([RUN, ...], runtime)` does them with a registered runner
(`api.RUNNERS`: local, ray), `api.run_ray([RUN, ...])` as Ray tasks; `api.status(RUN)` and
`api.store_gc(STORE_OR_RUN, dry_run=True)` say what is there.

Experiments: `api.benchmark(BENCH_YAML, OUT)` (the paper's table), `api.compare(RUNS, OUT)`,
`api.plan_text(...)` and `api.hardware_markdown(ROOT)` (the plan as `datadream plan` prints it).
Data and models: `api.CATALOG`, `api.check_dataset(KEY, ROOT)`, `api.download_model(...)`,
`api.check_model(...)`, `api.build_tiny_models(DIR)`, `api.demo(DIR)`. Config: `api.config_help()`,
`api.config_markdown()`. `api.quality_metrics(real, synthetic)` gives inspect's data-quality
figures for feature matrices of your own.

Importing this module loads no torch (`datadream config`, `plan` and `status` answer at once): the
functions that need it import it when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from datadream.benchmark import run_benchmark as benchmark
from datadream.compare import compare
from datadream.config import Config, RuntimeConfig, load_config
from datadream.config import field_help as config_help
from datadream.config import reference_markdown as config_markdown
from datadream.catalog import CATALOG
from datadream.errors import UserError
from datadream.layout import RunLayout
from datadream.model_commands import check as check_model
from datadream.model_commands import download as download_model
from datadream.pipeline import Summary, print_summary
from datadream.pipeline import run_all as run
from datadream.plan import make_plan as plan
from datadream.plan_text import hardware_markdown, plan_text
from datadream.report import write_report as report
from datadream.registry import RUNNERS, get_runner
from datadream.runners.execute import execute
from datadream.runs import Run, init_run, open_run
from datadream.status import gc_text as store_gc
from datadream.status import status_text as status
from datadream.units import WorkUnit, plan_work

if TYPE_CHECKING:  # their modules import torch or PIL: only the annotations need them
    from datadream.data.check import CheckReport
    from datadream.predict import Prediction


def _use_run_threads(run_dir: str | Path) -> None:
    """A stage called by hand does the run's units, so it sets the torch thread count every runner
    sets for them (datadream.threads): the same bytes whoever made them."""
    from datadream.threads import run_setting, use_threads

    use_threads(run_setting(Path(run_dir).resolve()))


def adapt(run_dir: str | Path, groups: list[tuple[str, ...]] | None = None) -> list[Path]:
    """Stage 1: train the run's LoRA adapters that are not in the store yet (all, or the `groups`
    of adapter names, the members of adapt units). Returns the run's adapter folders."""
    from datadream.stages.adapt import adapt as adapt_run

    _use_run_threads(run_dir)
    return adapt_run(Path(run_dir), groups)


def synthesize(run_dir: str | Path, shards: list[str] | None = None) -> Path | None:
    """Stage 2: generate the run's missing synthetic images and write their index (or only the
    `shards`, "<class slug>/<first image>", and no index). Returns the index, or None when
    classifier.train_on needs no synthetic images."""
    from datadream.stages.synthesize import synthesize as synthesize_run

    _use_run_threads(run_dir)
    return synthesize_run(Path(run_dir), shards)


def train(run_dir: str | Path) -> Path:
    """Stage 3: train the CLIP LoRA classifier on classifier.train_on. Returns its folder."""
    from datadream.stages.train import train as train_run

    _use_run_threads(run_dir)
    return train_run(Path(run_dir))


def evaluate(run_dir: str | Path) -> dict:
    """Evaluate the run's classifier on data.test; returns the metrics written to
    RUN/classifier/metrics.json (top1, top5, n, per_class, ...)."""
    from datadream.stages.evaluate import evaluate as evaluate_run

    _use_run_threads(run_dir)
    return evaluate_run(Path(run_dir))


def inspect(run_dir: str | Path) -> dict:
    """Data-quality figures of the synthetic set against the real shots (and held-out images), per
    class and "overall"; also written to RUN/inspect.json with what each figure means."""
    from datadream.stages.inspect import inspect as inspect_run

    _use_run_threads(run_dir)
    return inspect_run(Path(run_dir))


def accuracy_text(metrics: dict) -> str:
    """"top-1 x%  top-5 y%" from evaluate's metrics (top-5 only over more than 5 classes)."""
    from datadream.components.measures.metrics import accuracy_text as text

    return text(metrics)


def predict(run_dir: str | Path, images: list[str | Path], top_k: int = 5, batch_size: int | None = None,
            device: str | None = None) -> list[Prediction]:
    """Classify image files and folders (read recursively) with the run's classifier: per image,
    the `top_k` most probable classes. `batch_size` and `device` default to the run's
    classifier.eval_batch_size and runtime.device."""
    from datadream.predict import predict as predict_run

    return predict_run(Path(run_dir), [Path(image) for image in images], top_k, batch_size, device)


def format_predictions(predictions: list[Prediction], fmt: str = "table") -> str:
    """`predict`'s result as `datadream predict` prints it: "table", "csv" or "json"."""
    from datadream.predict import format_predictions as text

    return text(predictions, fmt)


def export(run_dir: str | Path, out: str | Path, what: str) -> Path:
    """Write the run's "classifier" (a transformers CLIPModel), "adapters" (diffusers and
    kohya/A1111/ComfyUI files) or "dataset" (an image folder) to the new or empty folder `out`."""
    from datadream.export import export as export_run

    return export_run(Path(run_dir), Path(out), what)


def run_units(runs: Iterable[str | Path], runtime: RuntimeConfig | None = None) -> None:
    """Do every unit of `runs` (initialised run folders) that is not complete, with the runner
    `runtime.runner` names (one of RUNNERS) and its settings; default: the runtime section of the
    first run's config. Failures end in one UserError, after what could be done is done:

        api.run_units(["runs/a", "runs/b"], api.load_config(None, ["runtime.runner=ray"]).runtime)
    """
    opened = {run.layout.root: run for run in (open_run(Path(folder)) for folder in runs)}
    if opened:
        runtime = runtime or next(iter(opened.values())).config.runtime
        get_runner(runtime.runner)(list(opened), runtime)


def run_ray(runs: Iterable[str | Path], address: str = "") -> None:
    """`run_units` with the Ray runner, on the cluster at `address` ("": a local one); needs
    `pip install 'datadream[ray]'`."""
    run_units(runs, RuntimeConfig(runner="ray", ray_address=address))


def check_dataset(key: str, root: str | Path, split_file: str | Path | None = None,
                  classnames: str | Path | None = None) -> CheckReport:
    """Check a local copy of the catalog dataset `key` (class count, split sizes, missing and
    unreadable files) before any GPU time is spent; returns a report: its `lines` to show and its
    `problems` (empty when the copy is ready)."""
    from datadream.data.check import check_dataset as check

    overrides = [f"data.dataset={key}", f"data.root={root}"]
    overrides += [f"data.split_file={split_file}"] if split_file else []
    overrides += [f"data.classnames={classnames}"] if classnames else []
    return check(key, load_config(None, overrides).data)


def build_tiny_models(folder: str | Path) -> dict[str, Path]:
    """Write tiny random-weight models, DIR/sd (diffusers) and DIR/clip (transformers), for tests
    and demos: they generate noise. Returns {"sd": folder, "clip": folder}."""
    from datadream.components.testmodels.tiny import build_tiny_models as build

    return build(Path(folder))


def demo(folder: str | Path) -> int:
    """The offline end-to-end demo on tiny models and a toy dataset (adapted vs un-adapted
    generator, and whether adaptation learned), printed as it goes; returns the exit status."""
    from datadream.demo import run_demo

    return run_demo(Path(folder))


def quality_metrics(real_features, synthetic_features, *, l2_normalize: bool = True, seed: int = 0) -> dict:
    """The figures `datadream inspect` reports for one class, for features of your own: numpy arrays
    or torch tensors of shape (n, d), one row per image, the same d for both, at least 2 rows each.

    `l2_normalize=True` (the default, as inspect, whose image features are L2-normalised) scales
    every row to unit length first; with False the features are measured as given, FD in their
    units (see datadream.components.measures.quality for each metric). Returns the dict inspect writes per
    class, numbers to 4 significant digits: n_real, n_synth, fd, fd_std, kd, kd_std, precision,
    recall, density, coverage, prdc_k, diversity_real, diversity_synth, near_copy_share,
    near_copy_expected_share (what fresh samples would give), near_copy_count, near_copy_threshold,
    near_copy_pairs; kd_std is None below 3 rows in a set, near-copy figures with a single distinct
    real row. `seed` drives the bootstraps behind fd_std and kd_std (inspect derives one per class
    from runtime.seed).
    Bad input is one UserError line.
    """
    from datadream.components.measures import quality

    try:
        real, synthetic = quality.feature_sets(real_features, synthetic_features, l2_normalize=l2_normalize)
    except ValueError as error:
        raise UserError(f"quality_metrics: {error}") from None
    return quality.summarise(real, synthetic, seed=seed)


__all__ = ["CATALOG", "RUNNERS", "Config", "Run", "RunLayout", "RuntimeConfig", "Summary", "UserError", "WorkUnit",
           "accuracy_text", "adapt", "benchmark", "build_tiny_models", "check_dataset", "check_model", "compare",
           "config_help", "config_markdown", "demo", "download_model", "evaluate", "execute", "export",
           "format_predictions", "hardware_markdown", "init_run", "inspect", "load_config", "open_run", "plan",
           "plan_text", "plan_work", "predict", "print_summary", "quality_metrics", "report", "run", "run_ray",
           "run_units", "status", "store_gc", "synthesize", "train"]
