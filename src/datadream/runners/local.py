"""The local runner: this process works through each run's units, one stage after another.

Several processes may run it on one run (or on runs that share a store) at once: each takes the
units nobody holds, then waits for the others' (datadream.locks), so two GPUs of one machine can
share a run with `CUDA_VISIBLE_DEVICES=0 datadream run ... & CUDA_VISIBLE_DEVICES=1 datadream run ...`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from datadream.config import RuntimeConfig
from datadream.progress import format_duration
from datadream.runners.execute import execute
from datadream.units import STAGES, plan_work

log = logging.getLogger(__name__)


def run_units(runs: list[Path], runtime: RuntimeConfig) -> None:
    """Registered as "local". Every unit of a stage goes to one `execute`, so the stage loads its
    model once for all of them; complete units are skipped there. No runtime setting is read here:
    a unit's own run says how it is done."""
    for position, root in enumerate(runs, 1):
        if len(runs) > 1:
            log.info("local: run [%d/%d] %s", position, len(runs), root)
        units = plan_work(root)
        for stage in STAGES:
            mine = [u for u in units if u.stage == stage]
            if mine:
                started = time.monotonic()
                execute(mine)
                log.info("%s: wall time %s", stage, format_duration(time.monotonic() - started))
