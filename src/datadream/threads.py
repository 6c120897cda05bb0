"""How many CPU threads torch uses for a unit of work: one number, whoever runs the unit.

CPU float reductions (a matmul, a sum) split their work by thread, so the last bits of a result
depend on the thread count. A Ray task gets one thread unless told otherwise (Ray sets
OMP_NUM_THREADS to the task's CPUs), a local run every core: without a rule, the same unit made
different bytes under different runners, and in a shared store a run's bytes depended on which
process computed each unit first. So every unit sets the count itself (`use_threads`):

    runtime.threads, when set;
    else the cores a runner gave the unit (the Ray runner asks Ray for that many CPUs and passes
         the number to the task, see `given`);
    else OMP_NUM_THREADS, when the user (or torchrun) set it;
    else the CPUs this process may run on (its affinity: SLURM's --cpus-per-task, taskset).

The same count on the same kind of machine with the same library versions gives the same bytes
(docs/scaling.md). Torch-free until `use_threads` runs: the Ray driver and `status` import it.
"""

from __future__ import annotations

import os
from pathlib import Path

_given: int | None = None  # set by a runner that reserved cores for the unit it is about to run


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def local_default() -> int:
    """What `runtime.threads: 0` means in a process that no runner gave cores to."""
    try:
        from_env = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        from_env = 0
    return from_env if from_env > 0 else available_cores()


def given(cores: int | None) -> None:
    """Say how many cores the runner reserved for the units this process runs next."""
    global _given
    _given = cores


def resolve(setting: int) -> int:
    if setting > 0:
        return setting
    return _given if _given else local_default()


def run_setting(run_dir: Path) -> int:
    """runtime.threads of the run in `run_dir` (0 where it has no config to read), from its
    config alone: every runner asks before each unit."""
    from datadream.config import read_config_file
    from datadream.layout import RunLayout

    config = RunLayout(Path(run_dir)).config
    return read_config_file(config).runtime.threads if config.is_file() else 0


def use_threads(setting: int) -> int:
    """Set torch's intra-op thread count for the unit about to run; returns it."""
    import torch

    count = resolve(setting)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
