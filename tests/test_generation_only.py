"""Generation only: `run --until synthesize` makes the synthetic set without the classifier's model,
and the same `run` without `--until` finishes the run later, reusing everything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli, tiny_config, write_config
from test_errors import assert_one_line_error


@pytest.fixture()
def config_file(tmp_path, tiny_models, toy_data) -> Path:
    """The classifier named by a folder that does not exist yet (offline: neither cached nor on disk)."""
    return write_config(tmp_path / "exp.yaml", tiny_config(
        tiny_models, toy_data / "train", data={"test": str(toy_data / "test")},
        classifier={"model": str(tmp_path / "clip-later"), "train_on": "synthetic"}))


def _timing_rows(run: Path, stage: str) -> int:
    timings = run / "logs" / "timings.jsonl"
    lines = timings.read_text().splitlines() if timings.is_file() else []
    return sum(json.loads(line)["stage"] == stage for line in lines)


@pytest.mark.slow
def test_generation_only_run_then_the_classifier_later(tmp_path, config_file, tiny_models):
    run = tmp_path / "run"
    result = run_cli("run", config_file, run, "--until", "synthesize")
    assert result.returncode == 0, result.stderr
    assert "stopped after synthesize" in result.stdout and "datadream export" in result.stdout
    assert not (run / "classifier").exists() and (run / "synthetic" / "index.jsonl").is_file()
    assert (run / "report" / "index.html").is_file()
    status = run_cli("status", run).stdout
    assert "complete up to synthesize" in status and "train" not in status and "inspect" not in status
    # inspect measures in the classifier's feature space: without its model, one line says so.
    assert_one_line_error(run_cli("inspect", run), "classifier.model", "clip-later")
    images = sorted(p.name for p in (run / "synthetic").glob("*/*.png"))
    assert len(images) == 4 * 3

    out = tmp_path / "exported"
    assert run_cli("export", run, out, "--what", "dataset").returncode == 0
    import datasets

    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(loaded) == 12 and sorted(set(loaded["class_name"])) == ["circle", "square", "stripes", "triangle"]

    # The classifier's model appears; the same command, without --until, finishes the run.
    shutil.copytree(tiny_models["clip"], tmp_path / "clip-later")
    adapted, synthesized = _timing_rows(run, "adapt"), _timing_rows(run, "synthesize")
    result = run_cli("run", config_file, run)
    assert result.returncode == 0, result.stderr
    assert "test top-1" in result.stdout and (run / "classifier" / "metrics.json").is_file()
    assert (_timing_rows(run, "adapt"), _timing_rows(run, "synthesize")) == (adapted, synthesized)


@pytest.mark.slow
def test_until_adapt_trains_only_the_adapters(tmp_path, config_file):
    run = tmp_path / "run"
    result = run_cli("run", config_file, run, "--until", "adapt")
    assert result.returncode == 0, result.stderr
    assert len(list((run / "adapters").iterdir())) == 4 and not (run / "synthetic").exists()
    assert "stopped after adapt" in result.stdout


def test_plan_of_a_generation_only_run_has_no_classifier_stage(tmp_path, config_file):
    result = run_cli("run", config_file, tmp_path / "run", "--until", "synthesize", "--dry-run")
    assert result.returncode == 0, result.stderr
    stages = [line.split()[0] for line in result.stdout.splitlines() if line and not line.startswith(" ")]
    assert "adapt" in stages and "synthesize" in stages and "train" not in stages and "evaluate" not in stages
    assert "stops after synthesize (--until)" in result.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("until, setting, message", [
    ("sample", "adapt.mode=class", "runtime.until must be one of adapt, synthesize, evaluate"),
    ("adapt", "adapt.mode=none", "adapt.mode=none trains no adapter"),
    ("synthesize", "classifier.train_on=real", "classifier.train_on=real uses no synthetic images"),
])
def test_until_a_stage_the_method_does_not_have_is_one_line(tmp_path, config_file, until, setting, message):
    result = run_cli("run", config_file, tmp_path / "run", "--until", until, "--set", setting)
    assert_one_line_error(result, message)
    assert not (tmp_path / "run").exists()


def test_classifier_is_checked_when_the_classifier_stages_come(tmp_path, config_file):
    """Without --until, the missing classifier stops the run before anything is written."""
    result = run_cli("run", config_file, tmp_path / "run")
    assert_one_line_error(result, "clip-later")
    assert not (tmp_path / "run").exists()
