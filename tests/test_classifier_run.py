"""Stage 3 and `datadream run` end to end on tiny models: every training source, zero-shot,
model selection, metrics checked against an independent recomputation, resume after kill -9."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli, tiny_config, write_config
from datadream.components.classifiers.augment import center_crop, normalize, to_uint8_tensor
from datadream.components.classifiers.backbones import image_normalisation
from datadream.config import load_config
from datadream.data.images import list_images, load_rgb
from datadream.pipeline import run_all
from test_pipeline import kill_when, start_stage

FAST_LEARNER = {"lr": 3e-3}


def run_config(tmp_path: Path, models, toy: Path, name="exp", **sections) -> Path:
    sections.setdefault("data", {})
    sections["data"] = {"test": str(toy / "test"), **sections["data"]}
    sections["classifier"] = {**FAST_LEARNER, **sections.get("classifier", {})}
    return write_config(tmp_path / f"{name}.yaml", tiny_config(models, toy / "train", **sections))


def recompute_top1(run: Path, models, test_root: Path) -> tuple[float, int]:
    """Top-1 through stock transformers + peft: CLIPModel's own forward (logit_scale x cosine)."""
    from peft import PeftModel
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(models["clip"])
    marker = json.loads((run / "classifier" / "train.json").read_text())
    if marker["train_on"] != "none":
        model = PeftModel.from_pretrained(model, run / "classifier" / "lora")
    model.eval()
    prompts = json.loads((run / "classifier" / "prompts.json").read_text())
    tokens = AutoTokenizer.from_pretrained(models["clip"])(prompts["prompts"], padding=True, return_tensors="pt")
    stats = image_normalisation(str(models["clip"]))
    correct = total = 0
    for label, name in enumerate(sorted(p.name for p in test_root.iterdir())):
        for path in list_images(test_root / name):
            pixels = normalize(to_uint8_tensor(center_crop(load_rgb(path), 32)).unsqueeze(0), *stats)
            with torch.no_grad():
                logits = model(**tokens, pixel_values=pixels).logits_per_image
            correct += int(logits.argmax(-1).item() == label)
            total += 1
    return 100.0 * correct / total, total


@pytest.mark.parametrize("train_on", ["synthetic", "synthetic+real", "real", "none"])
def test_run_each_training_source(tmp_path, tiny_models, toy_data, train_on):
    config = run_config(tmp_path, tiny_models, toy_data, classifier={"train_on": train_on})
    summary = run_all(load_config(config), tmp_path / "run")
    run = summary.run
    metrics = json.loads((run / "classifier" / "metrics.json").read_text())
    assert {"split", "n", "top1", "top5", "per_class", "config_hash"} <= metrics.keys()
    assert metrics["split"] == "test" and metrics["n"] == 12 and metrics["train_on"] == train_on
    assert set(metrics["per_class"]) == {"circle", "square", "stripes", "triangle"}
    top1, n = recompute_top1(run, tiny_models, toy_data / "test")
    assert n == metrics["n"] and metrics["top1"] == pytest.approx(top1, abs=100.0 / n + 1e-9)
    assert metrics["top5"] is None  # four classes: top-5 would be 100% by construction
    assert metrics["macro_top1"] == pytest.approx(sum(metrics["per_class"].values()) / 4, abs=1e-3)
    rows = list(csv.DictReader((run / "classifier" / "predictions.csv").open(encoding="utf-8")))
    assert len(rows) == 12 and metrics["top1"] == pytest.approx(100.0 * sum(int(r["correct"]) for r in rows) / 12)
    for row in rows:
        probabilities = [float(p) for p in row["top5_probabilities"].split(";")]
        assert len(probabilities) == 4 and probabilities == sorted(probabilities, reverse=True)  # 4 classes
        assert row["predicted_class"] == row["top5_classes"].split(";")[0] and Path(row["file"]).is_file()
    assert sum(p["count"] for p in metrics["confusion"]["top_confused_pairs"]) == sum(
        1 - int(r["correct"]) for r in rows)
    has_synthetic = train_on.startswith("synthetic")
    assert (run / "synthetic" / "index.jsonl").exists() == has_synthetic
    marker = json.loads((run / "classifier" / "train.json").read_text())
    if train_on != "none":
        assert len(marker["history"]) == 2 and (run / "classifier" / "lora" / "adapter_model.safetensors").is_file()
        assert list((run / "logs" / "train").glob("events.out.tfevents.*")), "TensorBoard scalars"
        assert not (run / ".partial-classifier").exists()
    report = (run / "report" / "index.html").read_text()
    assert "circle" in report and "top-1" in report and "Where the classifier errs" in report
    # The report stands alone: every image it shows is a file inside report/.
    sources = re.findall(r'<img src="([^"]+)"', report)
    assert sources and all((run / "report" / src).resolve().is_relative_to(run / "report") for src in sources)
    assert all((run / "report" / src).is_file() for src in sources)
    # 3 synthetic images a class, and as many un-adapted previews (the adapted row shows the same files).
    assert len({s for s in sources if "-synthetic-" in s}) == (4 * 3 if has_synthetic else 0)
    assert len({s for s in sources if "-unadapted-" in s}) == (4 * 3 if has_synthetic else 0)
    assert ("What adaptation changed" in report) == has_synthetic and "No un-adapted preview" not in report
    if train_on == "synthetic":  # a store without previews (an older run): the report says so per class
        shutil.rmtree(run.parent / "datadream-store" / "previews")
        from datadream.report import write_report

        page = write_report(run).read_text()
        assert page.count("No un-adapted preview for this class") == 4 and "No un-adapted previews in the store" in page
    assert "tiny models built by datadream: random weights" in report  # the tiny models say what they are


def test_report_banner_only_for_random_weight_models_and_pages_for_many_classes(tmp_path, tiny_models, toy_data,
                                                                               monkeypatch):
    import shutil

    from datadream import report as report_module
    from datadream.components.testmodels.tiny import TINY_MODEL_MARKER
    from datadream.report import write_report

    clip = tmp_path / "clip-copy"
    shutil.copytree(tiny_models["clip"], clip)
    (clip / TINY_MODEL_MARKER).unlink()  # as if a real checkpoint
    config = run_config(tmp_path, tiny_models, toy_data, classifier={"train_on": "none", "model": str(clip)})
    run = run_all(load_config(config), tmp_path / "run").run
    page = write_report(run).read_text()
    assert "tiny models built by datadream" not in page and "<h2>Settings</h2>" in page and "Per class, worst first" in page
    monkeypatch.setattr(report_module, "CLASSES_PER_PAGE", 3)  # 4 classes: pages of 3 and 1
    page = write_report(run).read_text()
    assert 'href="classes-1.html"' in page and 'href="classes-2.html"' in page and "<h3>0. circle" not in page
    assert "3. triangle" in (run / "report" / "classes-2.html").read_text()


def test_lora_targets_and_frozen_base(tmp_path, tiny_models, toy_data):
    config = run_config(tmp_path, tiny_models, toy_data, classifier={"train_on": "real", "epochs": 1})
    run = run_all(load_config(config), tmp_path / "run").run
    adapter_config = json.loads((run / "classifier" / "lora" / "adapter_config.json").read_text())
    assert (adapter_config["r"], adapter_config["lora_alpha"], adapter_config["lora_dropout"]) == (16, 32, 0.1)
    weights = load_file(run / "classifier" / "lora" / "adapter_model.safetensors")
    layers = {k.split(".lora_")[0] for k in weights}
    assert all(k.endswith(("q_proj", "v_proj")) for k in layers)
    assert sum("text_model" in k for k in layers) == 2 * 2 and sum("vision_model" in k for k in layers) == 2 * 2


def test_selection_uses_val_and_training_never_reads_test(tmp_path, tiny_models, toy_data):
    config = run_config(tmp_path, tiny_models, toy_data, data={"val": str(toy_data / "val")},
                        classifier={"train_on": "real", "epochs": 3})
    run = tmp_path / "run"
    assert run_cli("init", config, run).returncode == 0
    moved = tmp_path / "test-elsewhere"
    shutil.move(toy_data / "test", moved)  # training must not need the test split at all
    result = run_cli("train", run)
    assert result.returncode == 0, result.stderr
    marker = json.loads((run / "classifier" / "train.json").read_text())
    history = marker["history"]
    assert marker["selected_by"] == "val top-1"
    best = max(range(3), key=lambda i: (history[i]["val_top1"], -i))
    assert marker["selected_epoch"] == best + 1
    shutil.move(moved, toy_data / "test")
    assert run_cli("evaluate", run).returncode == 0


def test_class_without_test_images_is_reported_as_such(tmp_path, tiny_models, toy_data):
    shutil.rmtree(toy_data / "test" / "stripes")
    config = run_config(tmp_path, tiny_models, toy_data, classifier={"train_on": "none"})
    metrics = run_all(load_config(config), tmp_path / "run").metrics
    assert metrics["per_class"]["stripes"] is None and metrics["n"] == 9


def test_unadapted_generator_baseline(tmp_path, tiny_models, toy_data):
    """adapt.mode=none: synthesis from the stock generator, no adapters, same seeds."""
    from test_pipeline import stock_image

    config = run_config(tmp_path, tiny_models, toy_data, adapt={"mode": "none"},
                        classifier={"train_on": "synthetic", "epochs": 1})
    run = run_all(load_config(config), tmp_path / "run").run
    assert not (run / "adapters").exists() or not any((run / "adapters").iterdir())
    rows = [json.loads(line) for line in (run / "synthetic" / "index.jsonl").read_text().splitlines()]
    assert {r["adapter"] for r in rows} == {None}
    assert "What adaptation changed" not in (run / "report" / "index.html").read_text()
    import numpy as np
    from PIL import Image

    ours = np.asarray(Image.open(run / "synthetic" / rows[0]["file"]), dtype=np.int16)
    assert np.abs(ours - stock_image(tiny_models, None, rows[0]["prompt"], rows[0]["seed"], steps=3)).max() <= 2


@pytest.mark.slow
def test_run_resumes_after_kill_during_training(tmp_path, tiny_models, toy_data):
    config = run_config(tmp_path, tiny_models, toy_data, classifier={"train_on": "real", "epochs": 30})
    reference = run_all(load_config(config), tmp_path / "a")
    expected = load_file(reference.run / "classifier" / "lora" / "adapter_model.safetensors")

    twin = tmp_path / "b"
    assert run_cli("init", config, twin).returncode == 0
    partial = twin / ".partial-classifier" / "state.json"

    def epochs_done() -> int:
        try:
            return json.loads(partial.read_text())["meta"]["epoch"]
        except (OSError, ValueError):
            return 0

    process = start_stage("train", twin)
    kill_when(process, lambda: epochs_done() >= 2)
    assert not (twin / "classifier").exists()
    result = run_cli("run", config, twin)
    assert result.returncode == 0, result.stderr
    assert "resuming after epoch" in result.stderr and "test top-1" in result.stdout
    resumed = load_file(twin / "classifier" / "lora" / "adapter_model.safetensors")
    assert all(torch.equal(resumed[k], expected[k]) for k in expected), "resume must replay the same training"
    assert json.loads((twin / "classifier" / "metrics.json").read_text())["top1"] == reference.metrics["top1"]
