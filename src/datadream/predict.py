"""Classify new images with a run's classifier (the trained one, or zero-shot CLIP with
classifier.train_on=none).

    datadream predict RUN photo.jpg more-photos/ --top-k 3 --format csv

Probabilities are the softmax of exactly the logits `evaluate` scores (CLIP's logit scale x
cosine(image feature, class-prompt feature), centre-cropped images), computed by the same
function; folders are read recursively.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from datadream.artifacts import read_classifier_marker
from datadream.classifier_files import class_prompts, load_classifier
from datadream.components.classifiers.scoring import batched_logits, loader_workers
from datadream.components.loading.models import resolve_device, resolve_dtype
from datadream.data.images import IMAGE_EXTENSIONS, list_images
from datadream.data.labelled import EvalImages
from datadream.data.samples import REAL, Sample
from datadream.errors import UserError
from datadream.runs import open_run

FORMATS = ("table", "csv", "json")


@dataclass(frozen=True)
class Prediction:
    path: Path
    labels: list[int]  # best first
    class_names: list[str]
    probabilities: list[float]


def collect_images(inputs: list[Path]) -> list[Path]:
    """The given files, and the images under the given folders (recursively), in the order given."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images = list_images(item)
            if not images:
                raise UserError(f"no images under {item} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
            found += images
        elif item.is_file():
            found.append(item)
        else:
            raise UserError(f"{item}: no such file or folder; give image files or folders of images")
    if not found:
        raise UserError("no images given; pass image files or folders, e.g. `datadream predict RUN photo.jpg`")
    return found


def predict(run_dir: Path, inputs: list[Path], top_k: int = 5, batch_size: int | None = None,
            device: str | None = None) -> list[Prediction]:
    """The `top_k` most probable classes (capped at the number of classes) of every image.
    `batch_size` and `device` default to the run's classifier.eval_batch_size and runtime.device."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, not {top_k}")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}")
    run = open_run(run_dir)
    images = collect_images(inputs)
    marker = read_classifier_marker(run)
    cfg = run.config.classifier
    torch_device = resolve_device(device or run.config.runtime.device)
    dtype = resolve_dtype(run.config.runtime.precision, torch_device)
    classifier = load_classifier(run, marker).to(torch_device)
    _, prompts = class_prompts(run)
    tokens = classifier.tokenize(prompts, torch_device)
    names = [c.name for c in run.manifest.classes]
    k = min(top_k, len(names))
    samples = [Sample(str(path), -1, REAL) for path in images]  # label unknown: never read
    batch_size = batch_size or cfg.eval_batch_size
    # No more loader processes than batches: starting eight workers for one photo costs seconds.
    workers = min(loader_workers(cfg.workers), math.ceil(len(samples) / batch_size))
    probabilities = []
    for logits, _ in batched_logits(classifier, tokens, EvalImages(samples, classifier.image_size), batch_size, workers,
                                    torch_device, dtype, desc="predict"):
        probabilities.append(logits.float().softmax(dim=-1).cpu())
    best, labels = torch.cat(probabilities).topk(k, dim=-1)
    return [Prediction(path, row.tolist(), [names[i] for i in row.tolist()], p.tolist())
            for path, row, p in zip(images, labels, best)]


def format_predictions(predictions: list[Prediction], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps([
            {"file": str(p.path), "predictions": [
                {"label": label, "class_name": name, "probability": prob}
                for label, name, prob in zip(p.labels, p.class_names, p.probabilities)]}
            for p in predictions], indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["file", "rank", "label", "class_name", "probability"])
        for p in predictions:
            for rank, (label, name, prob) in enumerate(zip(p.labels, p.class_names, p.probabilities), 1):
                writer.writerow([str(p.path), rank, label, name, f"{prob:.6f}"])
        return buffer.getvalue()
    if fmt != "table":
        raise UserError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    width = max(len(str(p.path)) for p in predictions) if predictions else 0
    lines = []
    for p in predictions:
        ranked = "  ".join(f"{name} {100 * prob:.1f}%" for name, prob in zip(p.class_names, p.probabilities))
        lines.append(f"{str(p.path):<{width}}  {ranked}")
    return "\n".join(lines) + "\n"
