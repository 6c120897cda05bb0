"""The two seams every runner and stage plugs into: the registry of runners (datadream.registry)
and the stage functions `execute` calls (datadream.runners.execute)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from datadream import api
from datadream.config import RuntimeConfig, field_help, load_config
from datadream.errors import UserError
from datadream.registry import RUNNERS, Runner, get_runner
from datadream.runners import execute as execute_module
from datadream.units import STAGES, WorkUnit

CALLS: list[tuple[list[Path], RuntimeConfig]] = []


def record(runs: list[Path], runtime: RuntimeConfig) -> None:
    """A runner, registered by the tests below as test_runners:record."""
    CALLS.append((runs, runtime))


def test_runtime_runner_offers_exactly_the_registered_runners():
    from dataclasses import fields

    [runner_field] = [f for f in fields(RuntimeConfig) if f.name == "runner"]
    assert runner_field.metadata["choices"] == tuple(RUNNERS) == ("local", "ray")
    for name, runner in RUNNERS.items():
        assert f"{name}: {runner.summary}" in field_help()["runtime.runner"]


def test_every_registered_runner_has_the_one_signature():
    for name in RUNNERS:
        assert list(inspect.signature(get_runner(name)).parameters) == ["runs", "runtime"], name


def test_an_unknown_runner_is_one_line_naming_the_registered_ones():
    with pytest.raises(UserError) as caught:
        get_runner("slurm")
    assert str(caught.value) == "runtime.runner=slurm: no runner of that name; registered: local, ray"
    with pytest.raises(UserError, match="runtime.runner must be one of local, ray; got 'slurm'"):
        load_config(None, ["runtime.runner=slurm"])


def test_the_registry_imports_no_runner():
    code = ("import sys, datadream.config, datadream.registry;"
            " print(sorted(m for m in ('ray', 'torch', 'datadream.runners.local', 'datadream.runners.ray_runner')"
            " if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_run_units_gives_each_run_once_to_the_runner_its_runtime_names(tmp_path, tiny_models, toy_data, monkeypatch):
    monkeypatch.setitem(RUNNERS, "record", Runner("test_runners:record", "remembers what it was given"))
    monkeypatch.setitem(RUNNERS, "local", RUNNERS["record"])  # what the runs' own config names
    config = load_config(None, [f"{k}={v}" for k, v in (("data.train", toy_data / "train"), ("data.shots", 3),
                                                         ("generator.model", tiny_models["sd"]),
                                                         ("classifier.model", tiny_models["clip"]))])
    runs = [api.init_run(config, tmp_path / name).layout.root for name in ("a", "b")]
    CALLS.clear()
    given = RuntimeConfig(runner="record", ray_address="head:6379")
    api.run_units([runs[0], runs[1], runs[0]], given)
    api.run_units([str(runs[1])])
    api.run_units([])
    assert CALLS[0] == (runs, given)
    assert CALLS[1][0] == [runs[1]] and CALLS[1][1].runner == "local" and len(CALLS) == 2
    with pytest.raises(UserError, match="is not a datadream run"):
        api.run_units([tmp_path])


# --- stages -------------------------------------------------------------------------------------

def test_every_stage_has_its_function():
    assert set(execute_module.STAGE_FUNCTIONS) == set(STAGES)


def unit(stage: str, run: Path, members: tuple[str, ...] = ()) -> WorkUnit:
    return WorkUnit(run, stage, f"{stage}/{'+'.join(members)}", f"{stage}:{members}", (), members, 0.0)


def test_execute_hands_a_stage_its_units_in_one_call(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("datadream.threads.use_threads", lambda setting: 1)  # torch is not needed here
    monkeypatch.setitem(execute_module.STAGE_FUNCTIONS, "adapt", lambda run, units: calls.append((run, units)))
    units = [unit("adapt", tmp_path, ("cat", "dog")), unit("adapt", tmp_path, ("emu",))]
    execute_module.execute(units)
    execute_module.execute(units[1])
    execute_module.execute([])
    assert calls == [(tmp_path, units), (tmp_path, units[1:])]
    with pytest.raises(ValueError, match="units of one stage of one run at a time"):
        execute_module.execute([units[0], unit("train", tmp_path)])
    with pytest.raises(ValueError, match="unknown stage 'paint'"):
        execute_module.execute(unit("paint", tmp_path))
