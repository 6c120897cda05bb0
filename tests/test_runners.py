"""The seams every stage plugs into: the stage functions `execute` calls
(datadream.runners.execute)."""

from __future__ import annotations

from pathlib import Path

import pytest

from datadream.runners import execute as execute_module
from datadream.units import STAGES, WorkUnit


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
