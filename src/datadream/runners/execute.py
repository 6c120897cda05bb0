"""The one function every runner calls to do units of work.

Importing this module does not import torch: the stages are imported when a unit runs, so a Ray
driver or `datadream status` never loads a model. Every unit is idempotent and safe to run twice
at once: complete work is skipped, a unit is done under its lock, and its output appears by an
atomic rename with its done-marker last.
"""

from __future__ import annotations

from datadream.units import WorkUnit


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
    from datadream.threads import run_setting, use_threads

    use_threads(run_setting(run))  # the same bytes whoever runs the unit
    if stage == "adapt":
        from datadream.stages.adapt import adapt

        adapt(run, groups=[u.members for u in units])
    elif stage == "synthesize":
        from datadream.stages.synthesize import synthesize

        synthesize(run, shards=[m for u in units for m in u.members])
    elif stage == "index":
        from datadream.stages.synthesize import write_index

        write_index(run)
    elif stage == "inspect":
        from datadream.stages.inspect import inspect

        inspect(run)
    elif stage == "train":
        from datadream.stages.train import train

        train(run)
    elif stage == "evaluate":
        from datadream.stages.evaluate import evaluate

        evaluate(run)
    else:
        raise ValueError(f"execute: unknown stage {stage!r}")
