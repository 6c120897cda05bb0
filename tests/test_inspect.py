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
    for key in ("fd", "fd_std", "kd", "kd_std", "precision", "recall", "diversity_real", "diversity_synth",
                "near_copy_share", "clip_score_synth"):
        assert key in square, key
    assert result["overall"]["n_classes"] == 4 and "fd" in result["meaning"] and "kd" in result["meaning"]
    assert "not comparable with published FID or KID values" in result["comparable"]
    page = (inspected_run / "report" / "index.html").read_text()
    assert "Synthetic data quality" in page and "not comparable with published FID or KID values" in page


def test_figures_from_before_the_kernel_distance_are_computed_again(inspected_run):
    """An inspect.json written when the file held KID (fingerprint without the figures' version)
    is not taken for the current figures."""
    from datadream.config import result_settings, stable_hash
    from datadream.runs import open_run
    from datadream.stages.inspect import inspect
    from datadream.units import synthetic_fingerprint

    run = open_run(inspected_run)
    before = stable_hash({"synthetic": synthetic_fingerprint(run), "fewshot": run.manifest.digest(),
                          "model": run.config.classifier.model, "precision": run.config.runtime.precision,
                          "data": result_settings(run.config.data)})
    old = json.loads((inspected_run / "inspect.json").read_text())
    old["fingerprint"] = before
    old["overall"]["kid"] = old["overall"].pop("kd")
    (inspected_run / "inspect.json").write_text(json.dumps(old))
    assert "kd" in inspect(inspected_run)["overall"]
    assert "kid" not in json.loads((inspected_run / "inspect.json").read_text())["overall"]


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


def test_inspect_and_compare_on_real_photos(tmp_path, tiny_models):
    """Real photographs (matplotlib ships two), cut into a two-class dataset with a held-out
    (validation) folder: the figures exist against the shots and against the held-out photos."""
    import math

    from test_images import sample_photo

    from datadream.compare import compare
    from datadream.config import load_config
    from datadream.data.images import load_rgb
    from datadream.pipeline import run_all

    sources = {"hopper": sample_photo("grace_hopper.jpg"), "pack": sample_photo("Minduka_Present_Blue_Pack.png")}
    for name, source in sources.items():
        image = load_rgb(source)
        width, height = image.size
        side = min(width, height) // 2
        for index in range(7):  # 7 different crops of the photo: 3 to draw shots from, 2 held out, 2 test
            split = "train" if index < 3 else "val" if index < 5 else "test"
            left, top = (index * (width - side)) // 6, (index * (height - side)) // 6
            folder = tmp_path / "photos" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            image.crop((left, top, left + side, top + side)).resize((64, 64)).save(folder / f"{index}.jpg")
    config = write_config(tmp_path / "exp.yaml", tiny_config(
        tiny_models, tmp_path / "photos" / "train",
        data={"val": str(tmp_path / "photos" / "val"), "test": str(tmp_path / "photos" / "test")},
        classifier={"train_on": "synthetic", "epochs": 1}))
    run = run_all(load_config(config), tmp_path / "run").run
    result = json.loads((run / "inspect.json").read_text())
    for against in ("against_shots", "against_heldout"):
        assert set(result[against]["classes"]) == {"hopper", "pack"}
        for figures in result[against]["classes"].values():
            assert all(math.isfinite(figures[k]) for k in ("fd", "kd", "precision", "recall", "diversity_real"))
    assert result["against_heldout"]["classes"]["pack"]["n_real"] == 2
    page = compare([run], tmp_path / "cmp").read_text()
    assert "Synthetic data quality" in page
