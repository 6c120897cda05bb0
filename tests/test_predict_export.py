"""`predict` and `export` on one tiny run (class names with '/', "'" and accents): predictions
checked against stock transformers + peft, the exported classifier against the README's lines,
the kohya adapter against stock diffusers, the dataset against the `datasets` imagefolder loader."""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, tiny_config, write_config
from datadream.components.classifiers.augment import center_crop, normalize, to_uint8_tensor
from datadream.components.classifiers.backbones import image_normalisation
from datadream.config import load_config
from datadream.data.images import load_rgb
from datadream.errors import UserError
from datadream.export import export
from datadream.pipeline import run_all
from datadream.predict import format_predictions, predict

NAMES = ["F/A-18", "colt's foot", "crème brûlée", "triangle"]  # labels, never path components
README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.slow  # the module's run takes about half a minute on 2 CPU cores


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_models) -> dict:
    """One complete run (adapters rank 4 / alpha 8, synthetic set, trained classifier) and a few
    test images of exactly the classifier's input size (so preprocessing resamples nothing)."""
    from datadream.data.toy import write_toy_dataset

    root = tmp_path_factory.mktemp("made")
    toy = write_toy_dataset(root / "data", {"train": 3, "test": 2}, size=40)
    (root / "names.txt").write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    config = tiny_config(tiny_models, toy / "train", data={"classnames": str(root / "names.txt")},
                         classifier={"train_on": "synthetic", "epochs": 1, "lr": 3e-3})
    run = run_all(load_config(write_config(root / "exp.yaml", config)), root / "run").run
    exact = root / "exact" / "nested"
    exact.mkdir(parents=True)
    for i, path in enumerate(sorted((toy / "test").rglob("*.png"))[:3]):
        center_crop(load_rgb(path), TINY).save(exact / f"{i}.png")
    return {"root": root, "run": run, "images": sorted(exact.glob("*.png")), "toy": toy}


def stock_probabilities(models, run: Path, images: list[Path], lora: bool = True) -> torch.Tensor:
    """CLIPModel's own forward (logit_scale x cosine) through stock transformers + peft."""
    from peft import PeftModel
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(models["clip"])
    if lora:
        model = PeftModel.from_pretrained(model, run / "classifier" / "lora")
    prompts = json.loads((run / "classifier" / "prompts.json").read_text(encoding="utf-8"))["prompts"]
    tokens = AutoTokenizer.from_pretrained(models["clip"])(prompts, padding=True, return_tensors="pt")
    pixels = normalize(torch.stack([to_uint8_tensor(center_crop(load_rgb(p), TINY)) for p in images]),
                       *image_normalisation(str(models["clip"])))
    with torch.no_grad():
        return model.eval()(**tokens, pixel_values=pixels).logits_per_image.softmax(-1)


def as_matrix(predictions, classes: int) -> torch.Tensor:
    out = torch.zeros(len(predictions), classes)
    for row, p in enumerate(predictions):
        out[row, p.labels] = torch.tensor(p.probabilities)
    return out


def test_predict_equals_stock_clip_and_caps_top_k(made, tiny_models):
    images = sorted((made["toy"] / "test").rglob("*.png"))
    predictions = predict(made["run"], [made["toy"] / "test"], top_k=10, batch_size=3)
    assert [p.path for p in predictions] == images  # the folder, read recursively, in order
    assert all(len(p.labels) == len(NAMES) for p in predictions)  # top-k capped at the classes
    assert all(p.probabilities == sorted(p.probabilities, reverse=True) for p in predictions)
    assert all(p.class_names == [NAMES[i] for i in p.labels] for p in predictions)
    expected = stock_probabilities(tiny_models, made["run"], images)
    assert torch.allclose(as_matrix(predictions, len(NAMES)), expected, atol=1e-6)
    top2 = predict(made["run"], images[:2], top_k=2, device="cpu")
    assert [p.labels for p in top2] == [p.labels[:2] for p in predictions[:2]]


def test_output_formats(made, capsys):
    from datadream.cli import main

    predictions = predict(made["run"], made["images"], top_k=2)
    assert main(["predict", str(made["run"]), str(made["images"][0].parent.parent), "--top-k", "2", "--format",
                 "json", "--batch-size", "2", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in printed] == [str(p.path) for p in predictions]
    for row, p in zip(printed, predictions):  # other batch size: float rounding may differ slightly
        assert [e["label"] for e in row["predictions"]] == p.labels
        assert [e["probability"] for e in row["predictions"]] == pytest.approx(p.probabilities, abs=1e-6)
    rows = format_predictions(predictions, "csv").splitlines()
    assert rows[0] == "file,rank,label,class_name,probability" and len(rows) == 1 + 2 * len(predictions)
    parsed = json.loads(format_predictions(predictions, "json"))
    assert parsed[0]["file"] == str(made["images"][0])
    assert [e["class_name"] for e in parsed[0]["predictions"]] == predictions[0].class_names
    table = format_predictions(predictions, "table").splitlines()
    assert len(table) == len(predictions) and predictions[0].class_names[0] in table[0]


def test_predict_names_the_bad_file(made, tmp_path, capsys):
    from datadream.cli import main

    broken = tmp_path / "photos" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"not an image")
    with pytest.raises(UserError, match="broken.jpg"):
        predict(made["run"], [made["images"][0], broken.parent])
    with pytest.raises(UserError, match="missing.png: no such file"):
        predict(made["run"], [tmp_path / "missing.png"])
    assert main(["predict", str(made["run"]), str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unreadable image" in err and "broken.jpg" in err


def readme_snippet() -> str:
    text = README.read_text(encoding="utf-8").split("#### Use the classifier elsewhere", 1)[1]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_exported_classifier_runs_with_the_readme_lines(made, tiny_models):
    out = export(made["run"], made["root"] / "classifier-export", "classifier")
    predictions = predict(made["run"], made["images"], top_k=len(NAMES))
    ours = as_matrix(predictions, len(NAMES))
    for row, image in enumerate(made["images"]):
        code = readme_snippet().replace('"pets-classifier', f'"{out}').replace('"photo.jpg"', f'"{image}"')
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)
        assert torch.allclose(scope["probs"], ours[row], atol=1e-5), "README lines disagree with predict"
        assert scope["model"].config.id2label[predictions[row].labels[0]] == predictions[row].class_names[0]
    # Without the text tower: the exported, normalised class features.
    from transformers import CLIPModel

    classes = json.loads((out / "datadream_classes.json").read_text(encoding="utf-8"))
    assert classes["class_names"] == NAMES and classes["labels"] == [0, 1, 2, 3]
    model = CLIPModel.from_pretrained(out).eval()
    pixels = normalize(torch.stack([to_uint8_tensor(load_rgb(p)) for p in made["images"]]),
                       *image_normalisation(str(tiny_models["clip"])))
    with torch.no_grad():
        features = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    logits = classes["logit_scale"] * features @ torch.tensor(classes["text_features"]).t()
    assert torch.allclose(logits.softmax(-1), ours, atol=1e-5)


def test_zero_shot_classifier_predicts_and_exports(tmp_path, tiny_models, made):
    from datadream.runs import init_run
    from datadream.stages.train import train

    config = tiny_config(tiny_models, made["toy"] / "train", classifier={"train_on": "none"})
    run = init_run(load_config(write_config(tmp_path / "zs.yaml", config)), tmp_path / "zs").layout.root
    train(run)
    predictions = predict(run, made["images"], top_k=4)
    expected = stock_probabilities(tiny_models, run, made["images"], lora=False)
    assert torch.allclose(as_matrix(predictions, 4), expected, atol=1e-6)
    out = export(run, tmp_path / "zs-export", "classifier")
    assert (out / "model.safetensors").is_file() and (out / "datadream_classes.json").is_file()


def generate(pipe, prompt: str, seed: int) -> np.ndarray:
    image = pipe(prompt, num_inference_steps=3, guidance_scale=2.0, height=TINY, width=TINY,
                 generator=torch.Generator().manual_seed(seed)).images[0]
    return np.asarray(image)


def test_kohya_adapter_loads_in_stock_diffusers_and_reproduces_our_image(made, tiny_models):
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    out = export(made["run"], made["root"] / "adapters-export", "adapters")
    unit = "001-colt-s-foot"
    kohya_file = out / "kohya" / f"{unit}.safetensors"
    assert (out / "diffusers" / unit / "pytorch_lora_weights.safetensors").is_file()
    with safe_open(kohya_file, "pt") as handle:
        keys = list(handle.keys())
        alphas = {float(handle.get_tensor(k)) for k in keys if k.endswith(".alpha")}
        prompts = json.loads(handle.metadata()["datadream_prompts"])
    assert alphas == {8.0}  # lora_alpha, not the rank (4)
    assert all(re.fullmatch(r"lora_(unet|te_text_model_encoder_layers_\d+_self_attn)_\w+\.(lora_down\.weight|"
                            r"lora_up\.weight|alpha)", k) for k in keys), keys[:3]
    assert any(k.startswith("lora_te_") for k in keys) and any(k.startswith("lora_unet_") for k in keys)

    def pipeline(adapter: Path):
        pipe = StableDiffusionPipeline.from_pretrained(tiny_models["sd"], safety_checker=None,
                                                       requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("diffusers").addHandler(handler)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pipe.load_lora_weights(str(adapter), adapter_name="x")
        finally:
            logging.getLogger("diffusers").removeHandler(handler)
        messages = [r.getMessage() for r in records] + [str(w.message) for w in caught]
        assert not [m for m in messages if "unexpected" in m.lower() or "missing" in m.lower()], messages
        return pipe

    ours, stock = pipeline(out / "diffusers" / unit), pipeline(kohya_file)
    for part in ("unet", "text_encoder"):
        a = get_peft_model_state_dict(getattr(ours, part), adapter_name="x")
        b = get_peft_model_state_dict(getattr(stock, part), adapter_name="x")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
        config = getattr(stock, part).peft_config["x"]
        assert (config.r, config.lora_alpha) == (4, 8), part
    assert np.array_equal(generate(ours, prompts[0], 7), generate(stock, prompts[0], 7))


def test_exported_dataset_reads_with_datasets_imagefolder(made):
    datasets = pytest.importorskip("datasets")
    out = export(made["run"], made["root"] / "dataset-export", "dataset")
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["000-f-a-18", "001-colt-s-foot", "002-creme-brulee", "003-triangle"]
    index = [json.loads(line) for line in (made["run"] / "synthetic" / "index.jsonl").read_text().splitlines()]
    data = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(made["root"] / "hf-cache"))["train"]
    assert len(data) == len(index) == 4 * 3
    rows = sorted(({k: v for k, v in row.items() if k != "image"} for row in data), key=lambda r: r["seed"])
    expected = sorted(({k: r[k] for k in ("label", "class_name", "prompt", "seed", "adapter")} for r in index),
                      key=lambda r: r["seed"])
    assert rows == expected
    assert {r["class_name"] for r in rows} == set(NAMES)
    first = json.loads((out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert (out / first["file_name"]).read_bytes() == (made["run"] / "synthetic" / index[0]["file"]).read_bytes()


def test_export_refuses_a_non_empty_folder(made, tmp_path, capsys):
    from datadream.cli import main

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["export", str(made["run"]), str(taken), "--what", "dataset"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    with pytest.raises(UserError, match="inside the run"):
        export(made["run"], made["run"] / "exported", "dataset")
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
