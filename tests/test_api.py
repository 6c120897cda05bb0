"""The Python API covers every command that works on a run, and is the same code the CLI calls."""

from __future__ import annotations

from datadream import api, cli

RUN_COMMANDS = {"init": "init_run", "adapt": "adapt", "synthesize": "synthesize", "train": "train",
                "evaluate": "evaluate", "run": "run", "report": "report", "predict": "predict",
                "export": "export", "plan": "plan"}


def test_every_run_command_has_an_api_function():
    commands = set(cli.build_parser()._subparsers._group_actions[0].choices)
    assert set(RUN_COMMANDS) <= commands
    for name in RUN_COMMANDS.values():
        assert name in api.__all__ and callable(getattr(api, name)), name


def test_plan_through_the_api_writes_nothing(tmp_path):
    plan = api.plan(api.load_config(None, ["data.dataset=eurosat"]))
    assert plan.counts["adapt_units"] == 10
    assert list(tmp_path.iterdir()) == []
