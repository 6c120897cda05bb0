"""Classifier backbones: a tiny random SigLIP through run / evaluate / predict / inspect / export,
its own normalisation and tokenisation, LoRA only on the q/v projections of both towers, the
image size read from the model, and one line for a model family we do not support."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY, tiny_config, write_config
from datadream.components.classifiers import backbones
from datadream.components.classifiers.augment import center_crop, normalize
from datadream.data.images import load_rgb
from datadream.errors import UserError


@pytest.fixture(scope="module")
def siglip(tmp_path_factory) -> Path:
    from datadream.components.testmodels.tiny import build_tiny_siglip

    return build_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip") / "siglip")


@pytest.fixture(scope="module")
def siglip_run(tmp_path_factory, tiny_models, siglip) -> dict:
    from datadream.config import load_config
    from datadream.data.toy import write_toy_dataset
    from datadream.pipeline import run_all

    root = tmp_path_factory.mktemp("siglip-run")
    toy = write_toy_dataset(root / "data", {"train": 3, "val": 2, "test": 2}, size=40)
    config = tiny_config(tiny_models, toy / "train", data={"val": str(toy / "val"), "test": str(toy / "test")},
                         classifier={"model": str(siglip), "train_on": "synthetic+real", "epochs": 1})
    summary = run_all(load_config(write_config(root / "exp.yaml", config)), root / "run")
    return {"root": root, "toy": toy, "summary": summary}


def test_siglip_loads_with_its_own_normalisation_and_tokenisation(siglip):
    classifier = backbones.load_pretrained(str(siglip))
    assert isinstance(classifier, backbones.SiglipClassifier) and type(classifier.model).__name__ == "SiglipModel"
    assert classifier.normalisation == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    tokens = classifier.tokenize(["a photo of a cat", "dog"])
    assert list(tokens) == ["input_ids"] and tokens["input_ids"].shape == (2, classifier.text_length)
    # Everything that scores images normalises with the model's statistics: white becomes 1.
    white = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    assert torch.allclose(normalize(white, *classifier.normalisation), torch.ones(1, 3, 4, 4))


def test_every_backbone_is_registered_under_its_model_type():
    assert backbones.BACKBONES == {"clip": backbones.ClipClassifier, "siglip": backbones.SiglipClassifier}


def test_siglip2_reads_prompts_lower_cased_and_other_towers_as_written(siglip):
    """SigLIP 2 is a SigLIP model with Gemma's tokenizer, trained on lower-cased text."""
    classifier = backbones.load_pretrained(str(siglip))
    tokenizer = classifier.tokenizer
    prompts = ["a aircraft photo of a Boeing 737-800", "a photo of a F/A-18"]
    assert classifier.model_text(prompts) == prompts

    class GemmaTokenizerFast:  # stands for SigLIP 2's tokenizer; records what it is given
        def __call__(self, texts, **options):
            self.seen = texts
            return tokenizer(texts, **options)

    classifier.tokenizer = gemma = GemmaTokenizerFast()
    classifier.tokenize(prompts)
    assert gemma.seen == ["a aircraft photo of a boeing 737-800", "a photo of a f/a-18"]


def test_siglip_logits_are_its_own_forward(siglip):
    classifier = backbones.load_pretrained(str(siglip))
    classifier.model.eval()
    tokens = classifier.tokenize(["a photo of a cat", "a dog"])
    pixels = torch.randn(3, 3, TINY, TINY)
    with torch.no_grad():
        ours = classifier.logits(classifier.image_features(pixels), classifier.text_features(tokens))
        stock = classifier.model(**tokens, pixel_values=pixels).logits_per_image
    assert torch.allclose(ours, stock, atol=1e-5)


@pytest.mark.parametrize("builder", ["clip", "siglip"])
def test_lora_only_on_q_and_v_of_both_towers(tmp_path, builder):
    from datadream.components.testmodels import tiny

    folder = getattr(tiny, f"build_tiny_{builder}")(tmp_path / builder)
    classifier = backbones.load_pretrained(str(folder))
    classifier.add_lora(4, 8, 0.0)
    trainable = [n for n, p in classifier.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n and (".q_proj." in n or ".v_proj." in n) for n in trainable)
    for tower in ("text_model", "vision_model"):
        for layer in range(2):
            for proj in ("q_proj", "v_proj"):
                assert any(f"{tower}.encoder.layers.{layer}.self_attn.{proj}.lora_A" in n for n in trainable)
    assert not any(".head." in n for n in trainable)  # SigLIP's pooling head stays frozen


@pytest.mark.parametrize("builder", ["clip", "siglip"])
def test_saved_preprocessing_has_the_tokenizer_as_published(tmp_path, builder):
    """A fast tokenizer keeps the padding and truncation of its last call: the export must not
    carry the classifier's into the tokenizer a user loads."""
    from datadream.components.testmodels import tiny

    folder = getattr(tiny, f"build_tiny_{builder}")(tmp_path / builder)
    classifier = backbones.load_pretrained(str(folder))
    classifier.tokenize(["a photo of a cat", "a dog"])
    classifier.save_preprocessing(tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()


def test_image_size_is_read_from_the_model(tmp_path):
    from transformers import CLIPModel

    from datadream.components.testmodels.tiny import build_tiny_clip

    folder = build_tiny_clip(tmp_path / "clip48")
    model = CLIPModel.from_pretrained(folder)
    model.config.vision_config.image_size = 48
    CLIPModel(model.config).save_pretrained(folder)  # position embeddings for 48 px
    loaded = backbones.load_pretrained(str(folder))
    assert loaded.image_size == 48
    with torch.no_grad():
        assert loaded.image_features(torch.randn(2, 3, 48, 48)).shape == (2, 32)


def test_unsupported_model_type_is_one_line_before_anything_trains(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}), encoding="utf-8")
    for load in (backbones.load_pretrained, backbones.check_classifier_reachable):
        with pytest.raises(UserError, match=r"^classifier\.model: .* is a 'bert' model; supported .*clip, siglip") as err:
            load(str(folder))
        assert "\n" not in str(err.value)


def test_siglip_run_trains_evaluates_inspects_predicts_and_exports(siglip_run, siglip, tmp_path):
    from transformers import AutoImageProcessor, SiglipModel

    from datadream.export import export
    from datadream.predict import predict

    summary = siglip_run["summary"]
    run = summary.run
    assert summary.metrics is not None and "top1" in json.dumps(summary.metrics)
    assert (run / "inspect.json").is_file()
    marker = json.loads((run / "classifier" / "train.json").read_text())
    assert marker["model"] == str(siglip) and marker["train_on"] == "synthetic+real"
    images = sorted((siglip_run["toy"] / "test").rglob("*.png"))[:3]
    exact = tmp_path / "exact"
    exact.mkdir()
    for i, path in enumerate(images):
        center_crop(load_rgb(path), TINY).save(exact / f"{i}.png")
    exact_images = sorted(exact.glob("*.png"))
    predictions = predict(run, exact_images, top_k=4)
    ours = torch.zeros(len(predictions), 4)
    for row, p in enumerate(predictions):
        ours[row, p.labels] = torch.tensor(p.probabilities)
    # The export, read with stock transformers: merged SiglipModel, image processor, class features.
    out = export(run, tmp_path / "export", "classifier")
    model = SiglipModel.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    assert tuple(processor.image_mean) == (0.5, 0.5, 0.5)
    classes = json.loads((out / "datadream_classes.json").read_text(encoding="utf-8"))
    pixels = processor(images=[load_rgb(p) for p in exact_images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        features = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    logits = classes["logit_scale"] * features @ torch.tensor(classes["text_features"]).t() + classes["logit_bias"]
    assert torch.allclose(logits.softmax(-1), ours, atol=1e-5)


def test_siglip_zero_shot_run(tmp_path, tiny_models, siglip, toy_data):
    from datadream.config import load_config
    from datadream.pipeline import run_all

    config = tiny_config(tiny_models, toy_data / "train", data={"test": str(toy_data / "test")},
                         classifier={"model": str(siglip), "train_on": "none"})
    summary = run_all(load_config(write_config(tmp_path / "exp.yaml", config)), tmp_path / "run")
    marker = json.loads((summary.run / "classifier" / "train.json").read_text())
    assert marker["train_on"] == "none" and summary.metrics is not None
