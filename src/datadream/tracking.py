"""Where training curves go: TensorBoard always, Weights & Biases when asked for and installed.

`runtime.wandb_project` (default empty: off) names the W&B project; the run is named after the
run folder and carries the resolved config. wandb is imported only here, and only when asked
for; when it is not installed the run goes on with TensorBoard alone and says so once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from datadream.config import Config
from datadream.layout import slugify

log = logging.getLogger(__name__)


class CurveWriter:
    """The add_scalar / close surface of a SummaryWriter, fanned out to W&B when it is on."""

    def __init__(self, tensorboard: Any, wandb_run: Any = None):
        self.tensorboard, self.wandb_run = tensorboard, wandb_run

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.tensorboard.add_scalar(tag, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log({tag: value}, step=step)

    def close(self) -> None:
        self.tensorboard.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def curve_writer(log_dir: Path, purge_step: int, config: Config, run_name: str) -> CurveWriter:
    from torch.utils.tensorboard import SummaryWriter

    tensorboard = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
    return CurveWriter(tensorboard, _wandb_run(config, run_name))


def _wandb_run(config: Config, run_name: str) -> Any:
    project = config.runtime.wandb_project
    if not project:
        return None
    try:
        import wandb
    except ImportError:
        log.warning("runtime.wandb_project=%s but wandb is not installed (pip install wandb);"
                    " curves go to TensorBoard only", project)
        return None
    # resume="allow" with a stable id: a resumed training continues the same W&B run.
    return wandb.init(project=project, name=run_name, id=f"{slugify(run_name)}-{config.digest()}", resume="allow",
                      config=config.to_dict())
