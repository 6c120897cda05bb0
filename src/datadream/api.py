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
runner calls), `api.run_ray([RUN, ...])` runs them as Ray tasks, `api.status(RUN)` and
`api.store_gc(STORE_OR_RUN, dry_run=True)` say what is there.
"""

from datadream.components.tiny import build_tiny_models
from datadream.config import Config, load_config
from datadream.errors import UserError
from datadream.export import export
from datadream.pipeline import Summary
from datadream.pipeline import run_all as run
from datadream.plan import make_plan as plan
from datadream.report import write_report as report
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


def run_ray(runs, address: str = ""):
    """Every unit of `runs` (initialised run folders) as Ray tasks; needs `pip install 'datadream[ray]'`."""
    from datadream.runners.ray_runner import run_ray_or_fail

    return run_ray_or_fail(runs, address)

__all__ = ["Config", "Run", "Summary", "UserError", "WorkUnit", "adapt", "build_tiny_models", "evaluate", "execute",
           "export", "init_run", "load_config", "open_run", "plan", "plan_work", "predict", "report", "run", "run_ray",
           "status", "store_gc", "synthesize", "train"]
