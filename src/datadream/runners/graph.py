"""The units of many runs as one graph of tasks, and a runner's account of them: what a runner
that hands units to a scheduler (Ray; a batch system) needs besides the scheduler's own calls.

    tasks, complete = collect_tasks(runs, plan_work, unit_state)   # dependencies first
    say(pending_line("ray", tasks, len(runs), complete))
    ... submit each task after the tasks in task.deps ...
    tracker = Tracker("ray", GraphResult(len(tasks), already_complete=complete), multi_run, say)
    tracker.done(task, seconds, node) / tracker.failed(task, message, user_error)
    tracker.close(); tracker.result.raise_if_failed()

A task is every not-complete unit that shares one `WorkUnit.key`, across runs: two runs that need
the same work (benchmark cells that share adapters through the store) share one task, and each
run's dependents wait on it. Plain Python: no torch, no Ray, tested without either.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from datadream.errors import UserError
from datadream.progress import format_duration, interval_seconds


@dataclass
class Task:
    """Every not-complete unit that shares `key`, across runs."""

    key: str
    units: list[Any]  # WorkUnits (or fakes of their shape); the first names the task in logs and failures
    deps: set[str] = field(default_factory=set)  # keys of tasks that must finish first
    gpu_memory: float = 0.0  # the most any of its units needs

    @property
    def label(self) -> str:
        return self.units[0].id


def collect_tasks(runs: Sequence[Path], plan: Callable[[Path], list], state: Callable[[Any], str]
                  ) -> tuple[list[Task], int]:
    """The tasks to submit, in an order where every task comes after the tasks it depends on,
    and the number of units already complete."""
    tasks: dict[str, Task] = {}
    complete = 0
    for run in runs:
        units = plan(run)
        key_of = {unit.id: unit.key for unit in units}
        for unit in units:
            # "running" is submitted too: `execute` waits for a live owner of the unit's lock
            # and takes over a dead one's, so the unit ends complete either way.
            if state(unit) == "complete":
                complete += 1
                continue
            task = tasks.setdefault(unit.key, Task(unit.key, []))
            task.units.append(unit)
            task.gpu_memory = max(task.gpu_memory, float(unit.gpu_memory))
            for dep in unit.deps:
                if dep not in key_of:
                    raise ValueError(f"unit {unit.id} of {run} depends on {dep}, which the run's plan does not hold")
                if key_of[dep] != unit.key:
                    task.deps.add(key_of[dep])
    for task in tasks.values():
        task.deps &= tasks.keys()  # complete dependencies need no waiting
    return _dependency_order(tasks), complete


def _dependency_order(tasks: dict[str, Task]) -> list[Task]:
    """Depth-first, in first-seen order: each run's plan order is kept where it can be (so the
    logs read stage by stage), and a key shared by two runs still comes after the dependencies
    that either run gives it."""
    order: list[Task] = []
    state: dict[str, str] = {}
    position = {key: i for i, key in enumerate(tasks)}

    def visit(key: str) -> None:
        if state.get(key) == "done":
            return
        if state.get(key) == "visiting":
            raise ValueError(f"the units' dependencies form a cycle through {tasks[key].label}")
        state[key] = "visiting"
        for dep in sorted(tasks[key].deps, key=position.__getitem__):
            visit(dep)
        state[key] = "done"
        order.append(tasks[key])

    for key in tasks:
        visit(key)
    return order


def pending_line(runner: str, tasks: list[Task], runs: int, complete: int) -> str:
    """What a runner is about to do, said before it starts."""
    shared = sum(len(task.units) for task in tasks) - len(tasks)
    return (f"{runner}: {len(tasks)} unit(s) to run over {runs} run(s)"
            + (f", {complete} already complete" if complete else "")
            + (f", {shared} shared between runs" if shared else ""))


@dataclass(frozen=True)
class UnitFailure:
    unit: str  # the unit's id in `run`
    run: Path
    message: str  # one line
    user_error: bool  # a UserError: the user can fix it; anything else is a bug or the machine
    other_runs: int = 0  # further runs that share the unit (same key) and so failed with it

    def describe(self) -> str:
        shared = f" (and {self.other_runs} other run{'s' if self.other_runs > 1 else ''})" if self.other_runs else ""
        return f"FAILED {self.unit} in run {self.run}{shared}: {self.message}"


@dataclass
class GraphResult:
    submitted: int = 0  # tasks: one per key that was not complete
    done: int = 0
    already_complete: int = 0  # units (not keys) that planning found complete: not submitted
    not_run: int = 0  # tasks skipped because a unit they depend on failed
    failures: list[UnitFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.not_run

    def raise_if_failed(self) -> None:
        """For a command line: the failures (already said one line each) as one UserError."""
        if not self.ok:
            first = self.failures[0].describe() if self.failures else "a unit's dependency failed"
            raise UserError(f"{len(self.failures)} unit(s) failed and {self.not_run} were not run (first: {first});"
                            " fix the cause and run the same command again: finished units are kept")


class Tracker:
    """A runner's account of the tasks it submitted, said as they finish: one line per task, a
    line of progress every DATADREAM_PROGRESS_SECONDS (so a batch log is never silent for hours)
    and a summary. Tasks must be reported in submission order among those that finish together,
    so that a failed dependency is seen before the dependents that it stopped."""

    def __init__(self, runner: str, result: GraphResult, multi_run: bool, say: Callable[[str], None]) -> None:
        self.runner, self.result, self.multi_run, self.say = runner, result, multi_run, say
        self.finished = 0
        self.broken: set[str] = set()  # keys that failed or were not run
        self.interval = max(1.0, interval_seconds())  # 0 would make a runner's wait spin
        self.started = self.last_progress = time.monotonic()

    def done(self, task: Task, seconds: float, node: str) -> None:
        self.finished += 1
        self.result.done += 1
        where = f" (run {task.units[0].run.name})" if self.multi_run else ""
        self._say_task(f"{task.label}{where} done in {seconds:.1f}s on node {node}")

    def failed(self, task: Task, message: str, user_error: bool) -> None:
        """`task` raised (or its worker died) after its last retry, or was not run at all because a
        task it depends on failed first (then `message` is not said: the cause already was)."""
        self.finished += 1
        self.broken.add(task.key)
        if task.deps & self.broken:
            self.result.not_run += 1
            return
        runs = list(dict.fromkeys(unit.run for unit in task.units))
        failure = UnitFailure(task.label, runs[0], message, user_error, len(runs) - 1)
        self.result.failures.append(failure)
        self._say_task(failure.describe())

    def seconds_to_progress(self) -> float:
        """How long a runner may wait for the next task before a progress line is due."""
        return max(0.0, self.last_progress + self.interval - time.monotonic())

    def progress(self) -> None:
        """A progress line, when one is due."""
        now = time.monotonic()
        if now - self.last_progress >= self.interval:
            self.last_progress = now
            failed = f" ({len(self.result.failures)} failed)" if self.result.failures else ""
            self.say(f"{self.runner}: {self.finished}/{self.result.submitted} units finished{failed},"
                     f" {format_duration(now - self.started)} elapsed")

    def close(self) -> None:
        result = self.result
        if result.not_run:
            self.say(f"{self.runner}: {result.not_run} unit(s) not run because a unit they depend on failed")
        self.say(f"{self.runner}: {result.done} done, {len(result.failures)} failed, {result.not_run} not run,"
                 f" in {format_duration(time.monotonic() - self.started)}")

    def _say_task(self, text: str) -> None:
        self.say(f"{self.runner}: [{self.finished}/{self.result.submitted}] {text}")
