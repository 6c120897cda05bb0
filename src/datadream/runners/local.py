"""The local runner: this process works through a run's units, one stage after another.

Several processes may run it on one run (or on runs that share a store) at once: each takes the
units nobody holds, then waits for the others' (datadream.locks), so two GPUs of one machine can
share a run with `CUDA_VISIBLE_DEVICES=0 datadream run ... & CUDA_VISIBLE_DEVICES=1 datadream run ...`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from datadream.progress import format_duration
from datadream.runners.execute import execute
from datadream.units import STAGES, plan_work

log = logging.getLogger(__name__)


def run_local(root: Path) -> None:
    units = plan_work(root)
    for stage in STAGES:
        mine = [u for u in units if u.stage == stage]
        if mine:
            started = time.monotonic()
            execute(mine)
            log.info("%s: wall time %s", stage, format_duration(time.monotonic() - started))
