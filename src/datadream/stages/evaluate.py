"""Evaluation: top-1 / top-5 / per-class accuracy of the run's classifier on a real split.

    datadream evaluate RUN

Writes RUN/classifier/metrics.json for `data.test`. The class-prompt features are computed once;
accuracies are counted per sample. The same scoring (components/classifiers/scoring.py) serves model
selection on `data.val` during training; the test split is never used for any choice.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

from datadream import atomic, locks
from datadream.artifacts import read_classifier_marker
from datadream.classifier_files import class_prompts, load_classifier
from datadream.components.classifiers.scoring import loader_workers, top_predictions
from datadream.components.loading.models import resolve_device, resolve_dtype
from datadream.components.measures.metrics import accuracy_text, confusion_summary, macro_accuracy, summarize
from datadream.config import stable_hash
from datadream.data.labelled import EvalImages
from datadream.data.samples import Sample, split_samples
from datadream.errors import UserError
from datadream.markers import read_marker
from datadream.runs import Run, open_run
from datadream.units import classifier_fingerprint

log = logging.getLogger(__name__)


def predictions_csv(samples: list[Sample], labels, best, probabilities, names: list[str]) -> str:
    """One row per test image: its file, true and predicted class, and the top-5 classes with their
    probabilities (best first, ';'-separated), from which confusion and the worst mistakes are drawn."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "true_label", "true_class", "predicted_label", "predicted_class", "correct",
                     "top5_labels", "top5_classes", "top5_probabilities"])
    for sample, label, row, chances in zip(samples, labels.tolist(), best.tolist(), probabilities.tolist()):
        writer.writerow([sample.path, label, names[label], row[0], names[row[0]], int(row[0] == label),
                         ";".join(map(str, row)), ";".join(names[i] for i in row),
                         ";".join(f"{p:.6f}" for p in chances)])
    return buffer.getvalue()


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


def evaluate(run_dir: Path) -> dict:
    run = open_run(run_dir)
    with locks.unit_lock(run.layout.lock("evaluate"), f"the evaluation of {run.layout.root}",
                         run.config.runtime.wait_for_locks):
        return _evaluate(run)


def _evaluate(run: Run) -> dict:
    marker = read_classifier_marker(run)
    if marker["fingerprint"] != classifier_fingerprint(run):
        raise UserError(f"{run.layout.classifier} was trained with other settings; run `datadream train RUN` again"
                        " after moving it away")
    samples = split_samples(run.config.data, run.manifest, "test")
    if not samples:
        raise UserError("the dataset has no test split: set data.test (an image folder), give data.root a"
                        " test/ folder, or use a split file with 'test' entries")
    test_split = split_signature(samples)
    recorded = read_marker(run.layout.metrics)
    if (recorded and recorded.get("classifier") == marker["fingerprint"] and recorded.get("test_split") == test_split
            and run.layout.predictions.is_file()):
        log.info("evaluate: metrics already computed for this classifier and test split")
        return recorded
    device = resolve_device(run.config.runtime.device)
    dtype = resolve_dtype(run.config.runtime.precision, device)
    classifier = load_classifier(run, marker).to(device)
    _, prompts = class_prompts(run)
    cfg = run.config.classifier
    labels, best, probabilities = top_predictions(classifier, classifier.tokenize(prompts, device),
                                                  EvalImages(samples, classifier.image_size), cfg.eval_batch_size,
                                                  loader_workers(cfg.workers), device, dtype, desc="evaluate test")
    top1, top5 = best[:, 0] == labels, (best == labels.unsqueeze(-1)).any(dim=-1)
    names = [c.name for c in run.manifest.classes]
    # Written before metrics.json, the evaluation's done-marker.
    atomic.write_text(run.layout.predictions, predictions_csv(samples, labels, best, probabilities, names))
    summary = summarize(labels, top1, top5, names)
    metrics = {
        "split": "test",
        **summary,
        "macro_top1": macro_accuracy(summary["per_class"]),
        "confusion": confusion_summary(labels, best[:, 0], names),
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
