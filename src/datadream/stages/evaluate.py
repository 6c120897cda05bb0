"""Evaluation: top-1 / top-5 / per-class accuracy of the run's classifier on a real split.

    datadream evaluate RUN

Writes RUN/classifier/metrics.json for `data.test`. The class-prompt features are computed once;
accuracies are counted per sample. The same `predict` serves model selection on `data.val`
during training; the test split is never used for any choice.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from datadream.progress import progress

from datadream import atomic
from datadream.components import clip as clip_ops
from datadream.components.augment import normalize
from datadream.components.metrics import accuracy_text, summarize, topk_correct
from datadream.components.models import resolve_device, resolve_dtype
from datadream.config import stable_hash
from datadream.data.labelled import EvalImages, Sample, split_samples
from datadream.errors import UserError
from datadream.markers import damaged_file, read_marker
from datadream.stages.run import Run, open_run, stage_lock

log = logging.getLogger(__name__)

CLASSIFIER_MARKER = "train.json"
LORA_FOLDER = "lora"
PROMPTS = "prompts.json"


def loader_workers(setting: int) -> int:
    return min(8, os.cpu_count() or 1) if setting < 0 else setting


@torch.no_grad()  # torch applies it around each step of a generator, so callers keep their grad mode
def batched_logits(model, tokens: dict[str, torch.Tensor], samples: list[Sample], size: int, batch_size: int,
                   workers: int, device: torch.device, dtype: torch.dtype, desc: str = "evaluate"):
    """Yield (logits, labels) per batch: centre-cropped images against the class prompts, whose
    features are computed once. Evaluation, validation and `datadream predict` all score here."""
    model.eval()
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with autocast:
        text = clip_ops.text_features(model, tokens)
    loader = torch.utils.data.DataLoader(EvalImages(samples, size), batch_size=batch_size, shuffle=False,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    for images, labels in progress(loader, desc=desc, unit="batch", leave=False):
        with autocast:
            features = clip_ops.image_features(model, normalize(images.to(device, non_blocking=True)))
        yield clip_ops.logits(model, features, text), labels


def predict(model, tokens: dict[str, torch.Tensor], samples: list[Sample], size: int, batch_size: int,
            workers: int, device: torch.device, dtype: torch.dtype, desc: str = "evaluate"):
    """(labels, top-1 hit, top-5 hit) per sample."""
    labels, top1, top5 = [], [], []
    for logits, batch_labels in batched_logits(model, tokens, samples, size, batch_size, workers, device, dtype, desc):
        batch_labels = batch_labels.to(device)
        labels.append(batch_labels.cpu())
        top1.append(topk_correct(logits, batch_labels, 1).cpu())
        top5.append(topk_correct(logits, batch_labels, 5).cpu())
    return torch.cat(labels), torch.cat(top1), torch.cat(top5)


def split_signature(samples: list[Sample]) -> str:
    """Which files (name, size, time) the split holds: cached metrics are only reused for it."""
    entries = []
    for sample in samples:
        try:
            stat = os.stat(sample.path)
            entries.append((sample.path, sample.label, stat.st_size, stat.st_mtime_ns))
        except OSError:
            entries.append((sample.path, sample.label, -1, -1))
    return stable_hash(entries)


def read_classifier_marker(run: Run) -> dict:
    """The trained classifier's marker, after checking its files against what it recorded."""
    folder = run.layout.classifier
    marker = read_marker(folder / CLASSIFIER_MARKER)
    if marker is None:
        raise UserError(f"{run.layout.root} has no trained classifier; run `datadream train RUN` first")
    damaged = damaged_file(folder, marker.get("files"))
    if damaged is not None or marker.get("train_on") not in ("none", "real", "synthetic", "synthetic+real"):
        raise UserError(f"classifier file {damaged or folder / CLASSIFIER_MARKER} is damaged or missing; delete"
                        f" {folder} and run `datadream train {run.layout.root}` to train it again")
    return marker


def load_classifier(run: Run, marker: dict):
    """(model, tokens on no device yet, image size) of the trained (or zero-shot) classifier."""
    model, tokenizer = clip_ops.load_clip(run.config.classifier.model)
    if marker["train_on"] != "none":
        model = clip_ops.load_lora(model, run.layout.classifier / LORA_FOLDER)
    prompts = json.loads((run.layout.classifier / PROMPTS).read_text(encoding="utf-8"))["prompts"]
    return model, clip_ops.tokenize(tokenizer, prompts), clip_ops.image_size(model)


def evaluate(run_dir: Path) -> dict:
    run = open_run(run_dir)
    with stage_lock(run, "evaluate"):
        return _evaluate(run)


def _evaluate(run: Run) -> dict:
    from datadream.stages.train import training_data

    marker = read_classifier_marker(run)
    if marker["fingerprint"] != training_data(run, with_samples=False).fingerprint:
        raise UserError(f"{run.layout.classifier} was trained with other settings; run `datadream train RUN` again"
                        " after moving it away")
    samples = split_samples(run.config.data, run.manifest, "test")
    if not samples:
        raise UserError("the dataset has no test split: set data.test (an image folder), give data.root a"
                        " test/ folder, or use a split file with 'test' entries")
    test_split = split_signature(samples)
    recorded = read_marker(run.layout.metrics)
    if recorded and recorded.get("classifier") == marker["fingerprint"] and recorded.get("test_split") == test_split:
        log.info("evaluate: metrics already computed for this classifier and test split")
        return recorded
    device = resolve_device(run.config.runtime.device)
    dtype = resolve_dtype(run.config.runtime.precision, device)
    model, tokens, size = load_classifier(run, marker)
    model.to(device)
    tokens = {k: v.to(device) for k, v in tokens.items()}
    cfg = run.config.classifier
    labels, top1, top5 = predict(model, tokens, samples, size, cfg.eval_batch_size,
                                 loader_workers(cfg.workers), device, dtype, desc="evaluate test")
    names = [c.name for c in run.manifest.classes]
    metrics = {
        "split": "test",
        **summarize(labels, top1, top5, names),
        "train_on": marker["train_on"],
        "selected_epoch": marker.get("selected_epoch"),
        "selected_by": marker.get("selected_by"),
        "config_hash": run.config.digest(),
        "classifier": marker["fingerprint"],
        "test_split": test_split,
    }
    atomic.write_json(run.layout.metrics, metrics)
    log.info("evaluate: %s on %d test images", accuracy_text(metrics), metrics["n"])
    return metrics
