"""The Python API covers every command that works on a run, and is the same code the CLI calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datadream import api, cli
from datadream.components.measures import quality

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
    assert plan.counts["adapters"] == 10 and plan.counts["adapt_units"] == 1  # 16 classes to a unit
    assert list(tmp_path.iterdir()) == []


def test_quality_metrics_for_features_of_ones_own():
    g = np.random.default_rng(0)
    real, synthetic = g.normal(size=(16, 32)) + 2, g.normal(size=(60, 32)) + 2
    figures = api.quality_metrics(real, synthetic)
    for key in ("fd", "fd_std", "kd", "kd_std", "precision", "recall", "density", "coverage", "diversity_real",
                "diversity_synth", "near_copy_share", "near_copy_expected_share"):
        assert figures[key] is not None, key
    # What inspect reports for a class: its metrics on L2-normalised rows.
    unit = [torch.nn.functional.normalize(torch.as_tensor(x), dim=1) for x in (real, synthetic)]
    assert figures == quality.summarise(*unit)
    assert api.quality_metrics(torch.as_tensor(real), torch.as_tensor(synthetic)) == figures  # tensors too
    # Rows are normalised: their lengths do not matter unless normalisation is turned off.
    lengths = g.uniform(0.5, 3, size=(60, 1))
    assert api.quality_metrics(real, synthetic * lengths) == figures
    assert api.quality_metrics(real, synthetic * lengths, l2_normalize=False)["fd"] != figures["fd"]
    with pytest.raises(api.UserError, match="^quality_metrics: real and synth features differ in dimension: 32 vs 31$"):
        api.quality_metrics(real, synthetic[:, :31])
    with pytest.raises(api.UserError, match="needs at least 2 feature rows, got 1"):
        api.quality_metrics(real[:1], synthetic)
    with pytest.raises(api.UserError, match="row 3 is all zeros"):
        api.quality_metrics(real, np.where(np.arange(60)[:, None] == 3, 0, synthetic))
