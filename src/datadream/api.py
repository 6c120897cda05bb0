"""The Python API the CLI is a thin layer over: every stage, the whole run, the plan, the report,
predict and export.

    from datadream import api

    config = api.load_config("exp.yaml", ["data.train=photos", "data.test=photos-test"])
    api.plan(config).stages                  # estimated cost per stage, nothing written
    summary = api.run(config, "runs/mine")   # init, adapt, synthesize, train, evaluate, report
    api.predict("runs/mine", ["new-photo.jpg"], top_k=3)
    api.export("runs/mine", "exported-classifier", "classifier")

or stage by stage: `api.init_run(config, RUN)`, then `api.adapt(RUN)`, `api.synthesize(RUN)`,
`api.train(RUN)`, `api.evaluate(RUN)`, `api.report(RUN)`; each resumes where it stopped.
Scaling out: `api.plan_work(RUN)` lists the run's units, `api.execute(unit)` does one (what every
runner calls), `api.run_units([RUN, ...], runtime)` does them with a registered runner
(`api.RUNNERS`: local, ray), `api.run_ray([RUN, ...])` as Ray tasks, `api.status(RUN)` and
`api.store_gc(STORE_OR_RUN, dry_run=True)` say what is there. `api.quality_metrics(real, synthetic)`
gives inspect's data-quality figures for feature matrices of your own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from datadream.components.tiny import build_tiny_models
from datadream.config import Config, RuntimeConfig, load_config
from datadream.errors import UserError
from datadream.export import export
from datadream.pipeline import Summary
from datadream.pipeline import run_all as run
from datadream.plan import make_plan as plan
from datadream.report import write_report as report
from datadream.runners import RUNNERS, get_runner
from datadream.runners.execute import execute
from datadream.stages.adapt import adapt
from datadream.stages.evaluate import evaluate
from datadream.stages.predict import predict
from datadream.runs import Run, init_run, open_run
from datadream.stages.synthesize import synthesize
from datadream.stages.train import train
from datadream.status import gc_text as store_gc
from datadream.status import status_text as status
from datadream.units import WorkUnit, plan_work


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


def quality_metrics(real_features, synthetic_features, *, l2_normalize: bool = True, seed: int = 0) -> dict:
    """The figures `datadream inspect` reports for one class, for features of your own: numpy arrays
    or torch tensors of shape (n, d), one row per image, the same d for both, at least 2 rows each.

    `l2_normalize=True` (the default, as inspect, whose image features are L2-normalised) scales
    every row to unit length first; with False the features are measured as given, FD in their
    units (see datadream.components.quality for each metric). Returns the dict inspect writes per
    class, numbers to 4 significant digits: n_real, n_synth, fd, fd_std, kd, kd_std, precision,
    recall, density, coverage, prdc_k, diversity_real, diversity_synth, near_copy_share,
    near_copy_expected_share (what fresh samples would give), near_copy_count, near_copy_threshold,
    near_copy_pairs; kd_std is None below 3 rows in a set, near-copy figures with a single distinct
    real row. `seed` drives the bootstraps behind fd_std and kd_std (inspect derives one per class
    from runtime.seed).
    Bad input is one UserError line.
    """
    from datadream.components import quality

    try:
        real, synthetic = quality.feature_sets(real_features, synthetic_features, l2_normalize=l2_normalize)
    except ValueError as error:
        raise UserError(f"quality_metrics: {error}") from None
    return quality.summarise(real, synthetic, seed=seed)


__all__ = ["RUNNERS", "Config", "Run", "RuntimeConfig", "Summary", "UserError", "WorkUnit", "adapt", "build_tiny_models",
           "evaluate", "execute", "export", "init_run", "load_config", "open_run", "plan", "plan_work", "predict",
           "quality_metrics", "report", "run", "run_ray", "run_units", "status", "store_gc", "synthesize", "train"]
