"""Bad input through the real command: one clear line, a non-zero exit, no traceback, and nothing
already produced is changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli, tiny_config, tree_bytes, write_config


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("datadream: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture()
def config_file(tmp_path, tiny_models, toy_data) -> Path:
    return write_config(tmp_path / "exp.yaml", tiny_config(tiny_models, toy_data / "train"))


def test_unknown_key_creates_nothing(tmp_path, config_file):
    result = run_cli("init", config_file, tmp_path / "run", "--set", "adapt.rnak=4")
    assert_one_line_error(result, "unknown config key 'adapt.rnak'", "adapt.rank")
    assert not (tmp_path / "run").exists()


def test_fewer_images_than_shots_says_how_many(tmp_path, config_file):
    result = run_cli("init", config_file, tmp_path / "run", "--set", "data.shots=9")
    assert_one_line_error(result, "has 5 training image(s)", "fewer than data.shots=9")
    assert not (tmp_path / "run").exists()


def test_missing_train_folder(tmp_path, config_file):
    result = run_cli("init", config_file, tmp_path / "run", "--set", f"data.train={tmp_path / 'nope'}")
    assert_one_line_error(result, "data.train: folder not found")


def test_existing_run_with_other_config_is_left_untouched(tmp_path, config_file):
    run = tmp_path / "run"
    assert run_cli("init", config_file, run).returncode == 0
    before = tree_bytes(run)
    assert run_cli("init", config_file, run).returncode == 0, "same config: accepted, unchanged"
    result = run_cli("init", config_file, run, "--set", "adapt.rank=8")
    assert_one_line_error(result, "holds a run with a different config", "adapt.rank: 4 -> 8")
    assert tree_bytes(run) == before


def test_non_run_folder_is_refused(tmp_path, config_file):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    assert_one_line_error(run_cli("init", config_file, folder), "not empty and holds no datadream run")
    assert tree_bytes(folder) == {"keep.txt": b"mine"}


def test_mistyped_model_stops_init_and_the_fix_is_accepted(tmp_path, config_file):
    run = tmp_path / "run"
    result = run_cli("init", config_file, run, "--set", "generator.model=no-such-org/no-such-model")
    assert_one_line_error(result, "cannot load generator model 'no-such-org/no-such-model'",
                          "offline (HF_HUB_OFFLINE is set)", "datadream models download no-such-org/no-such-model")
    assert not run.exists(), "nothing is written before the models are checked"
    assert run_cli("init", config_file, run).returncode == 0


def test_folder_that_is_not_a_diffusers_model(tmp_path, config_file, tiny_models):
    run = tmp_path / "run"
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    assert_one_line_error(run_cli("init", config_file, run, "--set", f"generator.model={empty}"), "not-a-model")
    assert not run.exists()
    # A model that disappears after init is named by the stage that needs it.
    copy = tmp_path / "sd-copy"
    shutil.copytree(tiny_models["sd"], copy)
    assert run_cli("init", config_file, run, "--set", f"generator.model={copy}").returncode == 0
    shutil.rmtree(copy)
    assert_one_line_error(run_cli("adapt", run), "generator.model", "sd-copy")
    assert not list((run / "adapters").glob("*/*"))


@pytest.mark.parametrize("model", ["sd", "clip"])
def test_model_folder_without_its_weights_stops_init_and_the_fix_is_accepted(tmp_path, config_file, tiny_models,
                                                                             model):
    configs_only = tmp_path / f"{model}-configs-only"
    shutil.copytree(tiny_models[model], configs_only)
    for weights in configs_only.rglob("*.safetensors"):
        weights.unlink()
    key = {"sd": "generator.model", "clip": "classifier.model"}[model]
    run = tmp_path / "run"
    result = run_cli("init", config_file, run, "--set", f"{key}={configs_only}")
    assert_one_line_error(result, f"{key}: {configs_only}", "has its configs but not its weights",
                          "model.safetensors is missing")
    assert result.stderr.count("\n") == 1, result.stderr  # no library log line beside ours
    assert not run.exists()
    assert run_cli("init", config_file, run).returncode == 0


def test_generator_weights_removed_after_init_are_one_line_at_adapt(tmp_path, config_file, tiny_models):
    copy = tmp_path / "sd-copy"
    shutil.copytree(tiny_models["sd"], copy)
    run = tmp_path / "run"
    assert run_cli("init", config_file, run, "--set", f"generator.model={copy}").returncode == 0
    (copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    result = run_cli("adapt", run)
    assert_one_line_error(result, "sd-copy/unet has its configs but not its weights")
    assert result.stderr.count("\n") == 1, result.stderr


def test_zero_shot_run_without_test_split_reads_the_weights_and_says_nothing_was_evaluated(tmp_path, config_file,
                                                                                          tiny_models):
    damaged = tmp_path / "clip-damaged"
    shutil.copytree(tiny_models["clip"], damaged)
    (damaged / "model.safetensors").write_bytes(bytes(range(256)) * 20)
    zero_shot = ("--set", "classifier.train_on=none")
    result = run_cli("-q", "run", config_file, tmp_path / "bad", *zero_shot, "--set", f"classifier.model={damaged}")
    assert_one_line_error(result, "cannot load CLIP model", "clip-damaged", "set classifier.model to another one")
    result = run_cli("-q", "run", config_file, tmp_path / "good", *zero_shot)
    assert result.returncode == 0, result.stderr
    assert "not evaluated: the dataset has no test split (set data.test" in result.stdout


def test_synthesize_before_adapt(tmp_path, config_file):
    run = tmp_path / "run"
    assert run_cli("init", config_file, run).returncode == 0
    assert_one_line_error(run_cli("synthesize", run), "are not trained", "datadream adapt")
    assert not (run / "synthetic").exists()


def test_stage_on_a_folder_that_is_not_a_run(tmp_path):
    assert_one_line_error(run_cli("adapt", tmp_path), "is not a datadream run")


def test_shot_changed_after_init_is_named(tmp_path, config_file):
    import json

    run = tmp_path / "run"
    assert run_cli("init", config_file, run).returncode == 0
    manifest = json.loads((run / "fewshot.json").read_text())
    victim = Path(manifest["root"]) / manifest["classes"][1]["images"][0]["path"]
    Image.new("RGB", (40, 40), (9, 9, 9)).save(victim)
    assert_one_line_error(run_cli("adapt", run), "changed since fewshot.json was written", victim.name)


def test_adapter_made_with_other_settings_is_not_reused(tmp_path, config_file):
    """A hand-edited config must not silently reuse adapters trained under the old one: the new
    settings are other units, trained anew; the old adapters stay in the store, untouched."""
    run = tmp_path / "run"
    assert run_cli("init", config_file, run, "--set", "synthesize.images_per_class=1").returncode == 0
    assert run_cli("-q", "adapt", run).returncode == 0
    store = tmp_path / "datadream-store" / "adapters"
    before = tree_bytes(store)
    config = (run / "config.yaml").read_text().replace("rank: 4", "rank: 2")
    (run / "config.yaml").write_text(config)
    assert run_cli("-q", "adapt", run).returncode == 0
    after = tree_bytes(store)
    assert {k: v for k, v in after.items() if k in before} == before and len(after) == 2 * len(before)
    from safetensors import safe_open

    with safe_open(str(run / "adapters" / "000-circle" / "pytorch_lora_weights.safetensors"), "pt") as weights:
        assert weights.get_tensor(next(k for k in weights.keys() if ".down." in k)).shape[0] == 2


def test_unit_held_by_another_process_is_refused_when_not_waiting(tmp_path, config_file):
    import os

    from datadream import locks

    run = tmp_path / "run"
    assert run_cli("init", config_file, run, "--set", "runtime.wait_for_locks=false",
                   "--set", "classifier.train_on=real").returncode == 0
    held = locks.try_lock(run / ".locks" / "train.lock")
    try:
        assert_one_line_error(run_cli("train", run), "the classifier of", f"pid {os.getpid()}", "wait_for_locks")
    finally:
        held.release()
    assert not (run / "classifier").exists()


def test_classifier_model_that_cannot_be_loaded_offline(tmp_path, config_file):
    run = tmp_path / "run"
    result = run_cli("run", config_file, run, "--set", "classifier.model=no-such-org/clip")
    assert_one_line_error(result, "cannot load CLIP model 'no-such-org/clip'", "classifier.model")
    assert not (run / "adapters").exists(), "the run must stop before any training"


def test_settings_that_do_not_change_results_can_change_on_resume(tmp_path, config_file):
    run = tmp_path / "run"
    assert run_cli("init", config_file, run).returncode == 0
    result = run_cli("init", config_file, run, "--set", "adapt.group_size=2", "--set", "synthesize.batch_size=1")
    assert result.returncode == 0, result.stderr
    assert "updated adapt.group_size: 0 -> 2; synthesize.batch_size: 2 -> 1" in result.stderr
    assert "group_size: 2" in (run / "config.yaml").read_text()


def test_non_finite_numbers_are_refused(tmp_path, config_file):
    result = run_cli("init", config_file, tmp_path / "run", "--set", "classifier.real_weight=nan")
    assert_one_line_error(result, "classifier.real_weight must be a finite number")


def test_unreadable_test_image_in_a_loader_worker_is_one_line(tmp_path, config_file, toy_data):
    run = tmp_path / "run"
    overrides = ["--set", f"data.test={toy_data / 'test'}", "--set", "classifier.train_on=none",
                 "--set", "classifier.workers=1"]
    assert run_cli("init", config_file, run, *overrides).returncode == 0
    (toy_data / "test" / "square" / "001.png").write_bytes(b"not an image")
    assert run_cli("train", run).returncode == 0
    assert_one_line_error(run_cli("evaluate", run), "unreadable image", "square/001.png")


def test_damaged_marker_is_one_line(tmp_path, config_file):
    run = tmp_path / "run"
    assert run_cli("init", config_file, run, "--set", "synthesize.images_per_class=1").returncode == 0
    assert run_cli("-q", "adapt", run).returncode == 0
    (run / "adapters" / "001-square" / "unit.json").write_text("{trunc")
    assert_one_line_error(run_cli("adapt", run), "unit.json is damaged")


def test_evaluate_needs_no_adapters_or_images(tmp_path, config_file, toy_data):
    """Once the classifier is trained, the generator's outputs may be deleted to save disk."""
    import shutil

    run = tmp_path / "run"
    result = run_cli("run", config_file, run, "--set", f"data.test={toy_data / 'test'}",
                     "--set", "classifier.epochs=1")
    assert result.returncode == 0, result.stderr
    (run / "classifier" / "metrics.json").unlink()
    shutil.rmtree(run / "adapters")
    shutil.rmtree(run / "synthetic")
    result = run_cli("evaluate", run)
    assert result.returncode == 0, result.stderr
    assert (run / "classifier" / "metrics.json").is_file()
