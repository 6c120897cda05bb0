"""`datadream inspect`: the data-quality figures of a run's synthetic set, cached features."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli, tiny_config, write_config


@pytest.fixture()
def inspected_run(tmp_path, tiny_models, toy_data):
    from datadream.config import load_config
    from datadream.pipeline import run_all

    config = write_config(tmp_path / "exp.yaml", tiny_config(
        tiny_models, toy_data / "train", data={"val": str(toy_data / "val"), "test": str(toy_data / "test")},
        classifier={"train_on": "synthetic", "epochs": 1}))
    return run_all(load_config(config), tmp_path / "run").run  # `run` inspects after synthesize


def test_run_inspects_its_synthetic_set(inspected_run):
    result = json.loads((inspected_run / "inspect.json").read_text())
    names = {"circle", "square", "stripes", "triangle"}
    assert set(result["against_shots"]["classes"]) == names == set(result["against_heldout"]["classes"])
    square = result["against_shots"]["classes"]["square"]
    assert square["n_real"] == 3 and square["n_synth"] == 3  # 3 shots, 3 synthetic images per class
    for key in ("fd", "fd_std", "kid", "kid_std", "precision", "recall", "diversity_real", "diversity_synth",
                "near_copy_share", "clip_score_synth"):
        assert key in square, key
    assert result["overall"]["n_classes"] == 4 and "fd" in result["meaning"]
    assert "Synthetic data quality" in (inspected_run / "report" / "index.html").read_text()


def test_inspect_reuses_cached_features(inspected_run, monkeypatch):
    from datadream.stages import inspect as inspect_stage

    before = json.loads((inspected_run / "inspect.json").read_text())
    (inspected_run / "inspect.json").unlink()

    def no_model(*_args, **_kwargs):
        raise AssertionError("every image's features are cached: nothing to compute")

    monkeypatch.setattr(inspect_stage.FeatureCache, "_compute", no_model)
    assert inspect_stage.inspect(inspected_run) == before
    result = run_cli("inspect", inspected_run)
    assert result.returncode == 0 and "near_copy_expected_share" in result.stdout


def test_compare_shows_the_quality_figures(inspected_run, tmp_path):
    from datadream.compare import compare

    page = compare([inspected_run], tmp_path / "cmp").read_text()
    assert "Synthetic data quality" in page and "near_copy_share" in page
