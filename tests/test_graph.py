"""The task graph every scheduling runner shares (datadream.runners.graph), without Ray or torch:
units of many runs merged by key, dependencies first, and the runner's account of what finished."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from datadream.errors import UserError
from datadream.runners.graph import GraphResult, Task, Tracker, UnitFailure, collect_tasks, pending_line


@dataclass(frozen=True)
class Unit:
    run: Path
    id: str
    key: str
    deps: tuple[str, ...] = ()
    gpu_memory: float = 0.0


def two_runs(shared_adapter: bool = True) -> dict[Path, list[Unit]]:
    """Per run: adapt -> synthesize -> train; run b lists its units backwards."""
    plans = {}
    for name in ("a", "b"):
        run = Path("/runs") / name
        adapt_key = "adapt:shared" if shared_adapter else f"adapt:{name}"
        plans[run] = [Unit(run, "adapt", adapt_key, (), 10.0),
                      Unit(run, "synthesize", f"synthesize:{name}", ("adapt",), 30.0),
                      Unit(run, "train", f"train:{name}", ("synthesize",), 20.0)]
    plans[Path("/runs/b")].reverse()
    return plans


def never_complete(unit: Unit) -> str:
    return "pending"


def test_units_that_share_a_key_are_one_task_after_its_dependencies():
    plans = two_runs()
    tasks, complete = collect_tasks(list(plans), plans.__getitem__, never_complete)
    order = [task.key for task in tasks]
    assert complete == 0
    assert order == ["adapt:shared", "synthesize:a", "train:a", "synthesize:b", "train:b"]
    [adapt] = [task for task in tasks if task.key == "adapt:shared"]
    assert [unit.run.name for unit in adapt.units] == ["a", "b"] and adapt.label == "adapt"
    assert [task.deps for task in tasks[1:]] == [{"adapt:shared"}, {"synthesize:a"}, {"adapt:shared"}, {"synthesize:b"}]
    assert pending_line("ray", tasks, 2, complete) == "ray: 5 unit(s) to run over 2 run(s), 1 shared between runs"


def test_complete_units_are_counted_and_nothing_waits_on_them():
    plans = two_runs(shared_adapter=False)
    tasks, complete = collect_tasks(list(plans), plans.__getitem__,
                                    lambda unit: "complete" if unit.id == "adapt" else "running")
    assert complete == 2 and [task.key for task in tasks] == ["synthesize:a", "train:a", "synthesize:b", "train:b"]
    assert tasks[0].deps == set() and tasks[0].gpu_memory == 30.0
    assert pending_line("local", tasks, 2, complete) == "local: 4 unit(s) to run over 2 run(s), 2 already complete"


def test_a_dependency_outside_the_plan_or_a_cycle_is_a_bug_named_by_its_unit():
    run = Path("/runs/a")
    missing = {run: [Unit(run, "train", "train:a", ("index",))]}
    with pytest.raises(ValueError, match="unit train of /runs/a depends on index, which the run's plan does not hold"):
        collect_tasks([run], missing.__getitem__, never_complete)
    cycle = {run: [Unit(run, "x", "x", ("y",)), Unit(run, "y", "y", ("x",))]}
    with pytest.raises(ValueError, match="dependencies form a cycle through x"):
        collect_tasks([run], cycle.__getitem__, never_complete)


def tracked(plans: dict[Path, list[Unit]]) -> tuple[list[Task], Tracker, list[str]]:
    tasks, complete = collect_tasks(list(plans), plans.__getitem__, never_complete)
    lines: list[str] = []
    return tasks, Tracker("ray", GraphResult(len(tasks), already_complete=complete), True, lines.append), lines


def test_tracker_says_each_task_and_skips_the_dependents_of_a_failure():
    tasks, tracker, lines = tracked(two_runs())
    adapt, synth_a, train_a, synth_b, train_b = tasks
    tracker.done(adapt, 1.25, "node-1")
    tracker.failed(synth_a, "OSError: disk full", False)
    tracker.failed(train_a, "never said: the cause was", False)  # its dependency failed first
    tracker.done(synth_b, 2.0, "node-2")
    tracker.done(train_b, 3.0, "node-2")
    tracker.close()
    result = tracker.result
    assert (result.done, result.not_run, result.ok) == (3, 1, False)
    assert result.failures == [UnitFailure("synthesize", Path("/runs/a"), "OSError: disk full", False)]
    assert lines[:2] == ["ray: [1/5] adapt (run a) done in 1.2s on node node-1",
                         "ray: [2/5] FAILED synthesize in run /runs/a: OSError: disk full"]
    assert lines[-2] == "ray: 1 unit(s) not run because a unit they depend on failed"
    assert lines[-1].startswith("ray: 3 done, 1 failed, 1 not run, in ")
    assert not any("never said" in line for line in lines)


def test_a_failed_shared_task_names_the_other_runs_it_stopped():
    tasks, tracker, lines = tracked(two_runs())
    tracker.failed(tasks[0], "class 'dog' has 2 images", True)
    [failure] = tracker.result.failures
    assert failure.user_error and failure.other_runs == 1
    assert lines == ["ray: [1/5] FAILED adapt in run /runs/a (and 1 other run): class 'dog' has 2 images"]


def test_progress_is_said_once_per_interval():
    tasks, tracker, lines = tracked(two_runs())
    tracker.progress()
    assert lines == [] and 0 < tracker.seconds_to_progress() <= tracker.interval
    tracker.done(tasks[0], 1.0, "node-1")
    tracker.last_progress -= tracker.interval  # as if an interval had passed
    assert tracker.seconds_to_progress() == 0
    tracker.progress()
    tracker.progress()
    assert [line for line in lines if "units finished" in line] == ["ray: 1/5 units finished, 0s elapsed"]


def test_result_of_failures_is_one_user_error():
    assert GraphResult(submitted=3, done=3).raise_if_failed() is None
    failed = GraphResult(submitted=3, done=1, not_run=1,
                         failures=[UnitFailure("train", Path("/runs/a"), "OSError: disk full", False)])
    with pytest.raises(UserError) as caught:
        failed.raise_if_failed()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("1 unit(s) failed and 1 were not run (first: FAILED train in run /runs/a: OSError")
    assert message.endswith("run the same command again: finished units are kept")


def test_the_graph_imports_neither_ray_nor_torch():
    code = "import sys, datadream.runners.graph; print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
