"""The registry of runners. Runners execute the units of work (datadream.units) of one or more
runs: in this process (local) or as Ray tasks (ray, an optional extra). Every runner calls the same
datadream.runners.execute, so a run's files are the same bytes whoever made them.

A runner is one function, registered here under the name `runtime.runner` takes:

    run_units(runs: list[Path], runtime: RuntimeConfig) -> None

`runs` are initialised run folders (absolute paths); `runtime` is the invocation's runtime
section, where a runner finds its own settings (runtime.ray_address). It does every unit that is
not complete, and raises one UserError when some failed (after finishing what it could).

A new runner is its module, its test and one line in RUNNERS:

    "slurm": Runner("datadream.runners.slurm:run_units", "one SLURM array job per stage (sbatch)"),

Runners are named by module path and imported only when chosen: the Ray runner imports ray, an
optional extra, and datadream.config (which takes its runtime.runner choices from RUNNERS) imports
this registry: it sits in the base layer and imports no runner.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from datadream.errors import UserError

# The second argument is a datadream.config.RuntimeConfig, not imported: config imports this module.
RunUnits = Callable[[list[Path], Any], None]


@dataclass(frozen=True)
class Runner:
    target: str  # "module:function" of its run_units
    summary: str  # what it does, for runtime.runner's help and docs/configuration.md


RUNNERS: dict[str, Runner] = {
    "local": Runner("datadream.runners.local:run_units", "this process works through the units"),
    "ray": Runner("datadream.runners.ray_runner:run_units",
                  "Ray tasks on every GPU of a Ray cluster (pip install 'datadream[ray]')"),
}


def runner_help() -> str:
    return "; ".join(f"{name}: {runner.summary}" for name, runner in RUNNERS.items())


def get_runner(name: str) -> RunUnits:
    """The run_units of the runner registered as `name` (its module imported now)."""
    if name not in RUNNERS:
        raise UserError(f"runtime.runner={name}: no runner of that name; registered: {', '.join(RUNNERS)}")
    module, _, function = RUNNERS[name].target.partition(":")
    return getattr(importlib.import_module(module), function)
