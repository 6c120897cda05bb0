"""GPU-only checks (skipped without CUDA): the paths a CPU cannot take — the group-size memory
probe, channels-last, pinned memory, bf16 on the device."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config, write_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_gpu_run_with_probed_group_size(tmp_path, tiny_models, toy_data):
    from datadream.config import load_config
    from datadream.pipeline import run_all

    config = write_config(tmp_path / "exp.yaml", tiny_config(
        tiny_models, toy_data / "train", data={"test": str(toy_data / "test")},
        runtime={"device": "cuda", "precision": "auto"}, classifier={"epochs": 1, "workers": 2}))
    summary = run_all(load_config(config, ["adapt.group_size=0"]), tmp_path / "run")
    marker = json.loads((summary.run / "adapters" / "000-circle" / "unit.json").read_text())
    assert marker["engine"] == "batched" and marker["device"].startswith("cuda")
    assert summary.metrics["n"] == 12
