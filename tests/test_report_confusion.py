"""The report's confusion matrix: the class order puts classes that take each other's images
together, the groups table names them, and the matrix is drawn for a few classes (with names) as
for 1,000 (an image). No model: predictions are made up with a known answer."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from datadream import report
from datadream.components.measures.confusion import MARGIN, confusion_counts, seriate
from datadream.errors import UserError


def blocks_predictions(blocks: list[list[int]], per_class: int, error: float, seed: int = 0):
    """`per_class` test images a class; a share `error` of them taken for another class of the
    same block, spread evenly over it."""
    rng = np.random.default_rng(seed)
    true, predicted = [], []
    for block in blocks:
        for label in block:
            others = [c for c in block if c != label]
            wrong = round(error * per_class) if others else 0
            true += [label] * per_class
            predicted += [label] * (per_class - wrong) + [others[k % len(others)] for k in range(wrong)]
    order = rng.permutation(len(true))
    return np.array(true)[order], np.array(predicted)[order]


def contiguous(order: list[int], block: list[int]) -> bool:
    positions = sorted(order.index(label) for label in block)
    return positions == list(range(positions[0], positions[0] + len(block)))


def test_two_shuffled_blocks_come_out_side_by_side_and_as_the_groups():
    labels = np.random.default_rng(1).permutation(10).tolist()
    first, second = sorted(labels[:6]), sorted(labels[6:])  # interleaved in label order
    true, predicted = blocks_predictions([first, second], per_class=20, error=0.4)
    result = seriate(confusion_counts(true, predicted, 10))
    assert sorted(result.order) == list(range(10))
    assert contiguous(result.order, first) and contiguous(result.order, second)
    # The bigger block loses more images within itself: it comes first.
    assert [sorted(g) for g in result.groups] == [first, second]


def test_classes_without_mistakes_are_no_group_and_follow_the_groups_in_label_order():
    true = np.array([0, 1, 2, 3, 3])
    predicted = np.array([0, 1, 2, 3, 2])  # one image of 3 taken for 2
    result = seriate(confusion_counts(true, predicted, 4))
    assert result.groups in ([[2, 3]], [[3, 2]]) and contiguous(result.order, [2, 3])
    assert result.order[:2] in ([2, 3], [3, 2]) and result.order[2:] == [0, 1]
    assert seriate(confusion_counts(np.array([0, 1]), np.array([0, 1]), 2)).groups == []


def test_scattered_single_mistakes_do_not_chain_into_one_group():
    """1,000 classes, 50 test images each: blocks of 4 that take 30% of each other's images, and
    5% of all images taken for a class at random. The blocks are found, the noise joins none."""
    rng = np.random.default_rng(2)
    blocks = rng.permutation(1000).reshape(-1, 4).tolist()
    true, predicted = blocks_predictions(blocks, per_class=50, error=0.3)
    noise = rng.random(len(true)) < 0.05
    predicted[noise] = rng.integers(0, 1000, int(noise.sum()))
    result = seriate(confusion_counts(true, predicted, 1000))
    assert sorted(result.order) == list(range(1000))
    found = {tuple(sorted(g)) for g in result.groups}
    assert {tuple(sorted(b)) for b in blocks} <= found and all(len(g) == 4 for g in result.groups)
    assert all(contiguous(result.order, block) for block in blocks)


def fake_run(names: list[str]):
    return SimpleNamespace(manifest=SimpleNamespace(classes=[SimpleNamespace(name=n, label=i)
                                                             for i, n in enumerate(names)]))


def prediction_rows(true, predicted) -> list[dict]:
    return [{"true_label": int(t), "predicted_label": int(p)} for t, p in zip(true, predicted)]


def test_many_classes_an_image_and_the_groups_table(tmp_path):
    names = [f"class {i}" for i in range(300)]
    names[17], names[212], names[5] = "husky", "malamute", "samoyed"
    noise = [[i] for i in range(300) if i not in (5, 17, 212)]
    true, predicted = blocks_predictions([[5, 17, 212], *noise], per_class=10, error=0.4)
    html = report._confusion_section(fake_run(names), prediction_rows(true, predicted), tmp_path)
    image = Image.open(tmp_path / "confusion.png")
    assert image.size == (MARGIN + 300 * 3,) * 2  # 3 pixels a class, and the groups' margin: under 1,000
    assert 'src="confusion.png"' in html and "<svg" in html  # the image, and the legend
    table = html[html.index("<h3>Groups"):]
    assert table.count("<tr>") == 2 and all(n in table for n in ("husky", "malamute", "samoyed"))
    assert "class 1<" not in table and "square-root scale" in html


def test_few_classes_a_labelled_matrix(tmp_path):
    names = ["cat", "dog", "car", "bus"]
    true, predicted = blocks_predictions([[0, 1], [2, 3]], per_class=10, error=0.2)
    html = report._confusion_section(fake_run(names), prediction_rows(true, predicted), tmp_path)
    assert not (tmp_path / "confusion.png").exists()
    svg = html[html.index("<svg"):html.index("</svg>")]
    assert all(f">{n}</text>" in svg for n in names) and svg.count("<rect") >= 16
    assert "cat → dog: 2 image(s), 20.0% of the class" in svg
    assert report._confusion_section(fake_run(["one"]), prediction_rows([0], [0]), tmp_path) == ""


def test_damaged_predictions_file_is_one_line(tmp_path):
    path = tmp_path / "predictions.csv"
    header = ["file", "true_label", "true_class", "predicted_label", "predicted_class", "correct",
              "top5_labels", "top5_classes", "top5_probabilities"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerow(["a.png", 0, "cat", 1, "dog", 0, "1;0", "dog;cat", "0.6;0.4"])
        writer.writerow(["b.png", 0, "cat", 7, "dog", 0, "7;0", "x;cat", "0.6;0.4"])  # no class 7
    with pytest.raises(UserError, match=r"predictions.csv line 3 is damaged.*datadream evaluate"):
        report._read_predictions(path, classes=2)
    assert len(report._read_predictions(Path(tmp_path / "none.csv"), classes=2)) == 0
