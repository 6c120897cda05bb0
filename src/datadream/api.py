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
"""

from datadream.components.tiny import build_tiny_models
from datadream.config import Config, load_config
from datadream.errors import UserError
from datadream.export import export
from datadream.pipeline import Summary
from datadream.pipeline import run_all as run
from datadream.plan import make_plan as plan
from datadream.report import write_report as report
from datadream.stages.adapt import adapt
from datadream.stages.evaluate import evaluate
from datadream.stages.predict import predict
from datadream.runs import Run, init_run, open_run
from datadream.stages.synthesize import synthesize
from datadream.stages.train import train

__all__ = ["Config", "Run", "Summary", "UserError", "adapt", "build_tiny_models", "evaluate", "export",
           "init_run", "load_config", "open_run", "plan", "predict", "report", "run", "synthesize", "train"]
