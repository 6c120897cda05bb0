"""The one function every runner calls to do units of work, and what does each stage's units.

Importing this module does not import torch: a stage is imported when a unit of it runs, so a Ray
driver or `datadream status` never loads a model. Every unit is idempotent and safe to run twice
at once: complete work is skipped, a unit is done under its lock, and its output appears by an
atomic rename with its done-marker last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from datadream.units import WorkUnit


def _adapt(run: Path, units: list[WorkUnit]) -> None:
    from datadream.stages.adapt import adapt

    adapt(run, groups=[u.members for u in units])


def _synthesize(run: Path, units: list[WorkUnit]) -> None:
    from datadream.stages.synthesize import synthesize

    synthesize(run, shards=[m for u in units for m in u.members])


# The stages below have one unit per run: the unit is the whole stage.
def _index(run: Path, units: list[WorkUnit]) -> None:
    from datadream.stages.synthesize import write_index

    write_index(run)


def _inspect(run: Path, units: list[WorkUnit]) -> None:
    from datadream.stages.inspect import inspect

    inspect(run)


def _train(run: Path, units: list[WorkUnit]) -> None:
    from datadream.stages.train import train

    train(run)


def _evaluate(run: Path, units: list[WorkUnit]) -> None:
    from datadream.stages.evaluate import evaluate

    evaluate(run)


# A stage's name (WorkUnit.stage; datadream.units.STAGES is their order) -> what does its units of one run.
STAGE_FUNCTIONS: dict[str, Callable[[Path, list[WorkUnit]], None]] = {
    "adapt": _adapt, "synthesize": _synthesize, "index": _index, "inspect": _inspect, "train": _train,
    "evaluate": _evaluate,
}


def execute(units: WorkUnit | list[WorkUnit]) -> None:
    """Do `units` (all of one stage of one run) in this process. Several units at once let a
    stage keep its model loaded and its GPU busy across them (the local runner passes a whole
    stage; a Ray task passes one unit)."""
    units = [units] if isinstance(units, WorkUnit) else list(units)
    if not units:
        return
    stage, run = units[0].stage, units[0].run
    if any(u.stage != stage or u.run != run for u in units):
        raise ValueError("execute: units of one stage of one run at a time")
    if stage not in STAGE_FUNCTIONS:
        raise ValueError(f"execute: unknown stage {stage!r}")
    from datadream.threads import run_setting, use_threads

    use_threads(run_setting(run))  # the same bytes whoever runs the unit
    STAGE_FUNCTIONS[stage](run, units)
