"""Unit tests of the classifier's parts: loss weighting, mixing within origins, crops, metrics."""

import random

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from datadream.components.classifiers.augment import TrainAugment, center_crop, mix_within, random_resized_crop
from datadream.components.classifiers.losses import origin_weighted_loss
from datadream.components.measures.metrics import summarize, topk_correct


@pytest.fixture()
def batch():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 2, 3, 1, 2])
    return logits, labels, F.one_hot(labels, 4).float()


def test_loss_weighting_is_exact_for_every_batch_composition(batch):
    logits, labels, targets = batch
    ce = F.cross_entropy
    mixed = torch.tensor([True, True, False, False, False, False])
    expected = 0.8 * ce(logits[:2], labels[:2]) + 0.2 * ce(logits[2:], labels[2:])
    assert torch.allclose(origin_weighted_loss(logits, targets, mixed, 0.8), expected)
    all_real = torch.ones(6, dtype=torch.bool)
    assert torch.allclose(origin_weighted_loss(logits, targets, all_real, 0.8), 0.8 * ce(logits, labels))
    all_synthetic = torch.zeros(6, dtype=torch.bool)
    assert torch.allclose(origin_weighted_loss(logits, targets, all_synthetic, 0.8), 0.2 * ce(logits, labels))
    assert torch.allclose(origin_weighted_loss(logits, targets, mixed, None), ce(logits, labels))


def test_soft_targets_give_the_mixed_cross_entropy(batch):
    logits, labels, targets = batch
    partner = labels.roll(1)
    soft = 0.7 * targets + 0.3 * F.one_hot(partner, 4).float()
    expected = 0.7 * F.cross_entropy(logits, labels) + 0.3 * F.cross_entropy(logits, partner)
    assert torch.allclose(origin_weighted_loss(logits, soft, torch.zeros(6, dtype=torch.bool), None), expected)


@pytest.mark.parametrize("seed", range(8))
def test_mixing_never_crosses_origins(seed):
    images = torch.cat([torch.zeros(3, 3, 16, 16), torch.ones(5, 3, 16, 16)])
    labels = torch.tensor([0, 1, 0, 2, 3, 2, 3, 3])
    targets = F.one_hot(labels, 4).float()
    real, synthetic = torch.arange(3), torch.arange(3, 8)
    mix_within(images, targets, [real, synthetic], random.Random(seed))
    assert torch.all(images[:3] == 0) and torch.all(images[3:] == 1)
    assert torch.allclose(targets.sum(-1), torch.ones(8))
    assert torch.all(targets[:3, 2:] == 0) and torch.all(targets[3:, :2] == 0)


def test_cutmix_label_weight_matches_the_pasted_area():
    images = torch.cat([torch.zeros(1, 3, 20, 20), torch.ones(1, 3, 20, 20)])
    targets = torch.eye(2)
    rng = random.Random(3)
    while True:  # find a seed state that picks CutMix
        state = rng.getstate()
        if rng.choice(("mixup", "cutmix")) == "cutmix":
            rng.setstate(state)
            break
    group = torch.arange(2)
    assert mix_within(images, targets, [group], rng) == "cutmix"
    pasted = float(images[0].mean())  # sample 0 was zeros: its mean is the pasted fraction
    assert targets[0, 1].item() == pytest.approx(pasted, abs=1e-6)


def test_random_resized_crop_is_seeded_and_sized():
    image = Image.new("RGB", (300, 120), (10, 20, 30))
    a = random_resized_crop(image, 24, random.Random(5))
    b = random_resized_crop(image, 24, random.Random(5))
    assert a.size == (24, 24) and a.tobytes() == b.tobytes()
    sliver = Image.new("RGB", (400, 3))  # no box of an allowed ratio fits: the fallback path
    assert random_resized_crop(sliver, 8, random.Random(0)).size == (8, 8)
    assert center_crop(image, 32).size == (32, 32)


def test_train_augment_keeps_shape_and_normalises():
    torch.manual_seed(0)
    out = TrainAugment(32, (0.5,) * 3, (0.5,) * 3)(torch.randint(0, 256, (9, 3, 32, 32), dtype=torch.uint8))
    assert out.shape == (9, 3, 32, 32) and out.dtype == torch.float32
    assert -2.5 < float(out.min()) and float(out.max()) < 2.5


def test_metrics_count_per_sample_and_keep_empty_classes_apart():
    logits = torch.tensor([[5.0, 1, 0], [0, 5.0, 1], [5.0, 0, 1], [1, 0, 5.0]])
    labels = torch.tensor([0, 1, 1, 0])
    top1, top5 = topk_correct(logits, labels, 1), topk_correct(logits, labels, 5)
    summary = summarize(labels, top1, top5, ["a", "b", "c"])
    assert summary["n"] == 4 and summary["top1"] == 50.0
    assert summary["top5"] is None, "with 5 classes or fewer top-5 is 100% by construction: not reported"
    six = summarize(labels, top1, top5, ["a", "b", "c", "d", "e", "f"])
    assert six["top5"] == 100.0
    assert summary["per_class"] == {"a": 50.0, "b": 50.0, "c": None}
    assert summary["per_class_count"] == {"a": 2, "b": 2, "c": 0}


def test_macro_accuracy_and_confusion_summary():
    from datadream.components.measures.metrics import confusion_summary, macro_accuracy

    assert macro_accuracy({"a": 100.0, "b": 50.0, "c": None}) == 75.0  # c has no test image: left out
    assert macro_accuracy({"a": None}) is None
    # a: 3 images, 1 taken for b; b: 2 images, both taken for c; c: 1 image, right.
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 1, 2, 2, 2])
    summary = confusion_summary(labels, predicted, ["a", "b", "c"])
    assert summary["top_confused_pairs"] == [
        {"true": "b", "predicted": "c", "count": 2, "share": 100.0},
        {"true": "a", "predicted": "b", "count": 1, "share": pytest.approx(33.3333, abs=1e-4)}]
    assert summary["mistakes"] == 3
    assert summary["per_class_precision"] == {"a": 100.0, "b": 0.0, "c": pytest.approx(33.3333, abs=1e-4)}
    empty = confusion_summary(torch.tensor([0, 1]), torch.tensor([0, 1]), ["a", "b", "never"])
    assert empty["top_confused_pairs"] == [] and empty["per_class_precision"]["never"] is None
