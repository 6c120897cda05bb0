"""The Python API the CLI is a thin layer over.

    from datadream.api import load_config, init_run, adapt, synthesize

    run = init_run(load_config("exp.yaml", ["data.train=photos"]), "runs/mine")
    adapt(run.layout.root)
    index = synthesize(run.layout.root)   # RUN/synthetic/index.jsonl
"""

from datadream.components.tiny import build_tiny_models
from datadream.config import Config, load_config
from datadream.errors import UserError
from datadream.export import export
from datadream.stages.adapt import adapt
from datadream.stages.predict import predict
from datadream.stages.run import Run, init_run, open_run
from datadream.stages.synthesize import synthesize

__all__ = ["Config", "Run", "UserError", "adapt", "build_tiny_models", "export", "init_run", "load_config",
           "open_run", "predict", "synthesize"]
