"""Scoring images against class prompts with a classifier: one function for evaluation,
validation during training and `datadream predict`, so all three score alike.

`images` is any dataset of (uint8 CHW image, label) pairs (datadream.data.labelled.EvalImages)."""

from __future__ import annotations

import functools
import os
import signal
import threading
from typing import Iterator

import torch
from torch.utils.data import Dataset

from datadream.components.classifiers.backbones import Classifier
from datadream.components.classifiers.augment import normalize
from datadream.components.measures.metrics import topk_correct
from datadream.progress import progress


def loader_workers(setting: int) -> int:
    return min(8, os.cpu_count() or 1) if setting < 0 else setting


def start_loader(loader: torch.utils.data.DataLoader) -> Iterator:
    """`iter(loader)`, its worker processes forked with SIGTERM held.

    A batch scheduler stops a job with SIGTERM to all its processes. A worker takes it as a quiet
    exit (_worker_start): killed by it, it would make torch raise "worker killed" in place of the
    command's resume line. This process takes it once the iterator is whole: during the fork, an
    at-fork hook would swallow the exception its handler raises, or torch would clean up a
    half-made iterator with a traceback."""
    handler = signal.getsignal(signal.SIGTERM)
    if (handler is None or not hasattr(signal, "pthread_sigmask")  # set outside Python; Windows
            or threading.current_thread() is not threading.main_thread()):
        return iter(loader)
    loader.worker_init_fn = functools.partial(_worker_start, loader.worker_init_fn)
    pending: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: pending.append(signum))
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        signal.signal(signal.SIGTERM, handler)
        if pending:
            signal.raise_signal(signal.SIGTERM)  # to the program's own handler, now


def _worker_start(init_fn, worker_id: int) -> None:
    """A worker forked by start_loader takes SIGTERM, from here on, as a quiet exit: from a
    scheduler stopping the whole job, or from its parent (torch's last resort at shutdown, which
    must not be blocked)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    if init_fn is not None:
        init_fn(worker_id)


@torch.no_grad()  # torch applies it around each step of a generator, so callers keep their grad mode
def batched_logits(classifier: Classifier, tokens: dict[str, torch.Tensor], images: Dataset, batch_size: int,
                   workers: int, device: torch.device, dtype: torch.dtype, desc: str = "evaluate"):
    """Yield (logits, labels) per batch: centre-cropped images against the class prompts' tokens,
    whose features are computed once. Evaluation, validation and `datadream predict` all score here."""
    classifier.model.eval()
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with autocast:
        text = classifier.text_features(tokens)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    for pixels, labels in progress(start_loader(loader), len(loader), desc=desc, unit="batch", leave=False):
        with autocast:
            features = classifier.image_features(normalize(pixels.to(device, non_blocking=True),
                                                           *classifier.normalisation))
        yield classifier.logits(features, text), labels


def score(classifier: Classifier, tokens: dict[str, torch.Tensor], images: Dataset, batch_size: int,
          workers: int, device: torch.device, dtype: torch.dtype, desc: str = "evaluate"):
    """(labels, top-1 hit, top-5 hit) per image."""
    labels, top1, top5 = [], [], []
    for logits, batch_labels in batched_logits(classifier, tokens, images, batch_size, workers, device, dtype, desc):
        batch_labels = batch_labels.to(device)
        labels.append(batch_labels.cpu())
        top1.append(topk_correct(logits, batch_labels, 1).cpu())
        top5.append(topk_correct(logits, batch_labels, 5).cpu())
    return torch.cat(labels), torch.cat(top1), torch.cat(top5)


def top_predictions(classifier: Classifier, tokens: dict[str, torch.Tensor], images: Dataset, batch_size: int, workers: int,
                    device: torch.device, dtype: torch.dtype, k: int = 5, desc: str = "evaluate"):
    """(labels, top-k classes best first, their softmax probabilities) per image; k is capped at
    the class count. Hits follow from them: top-1 is column 0, top-5 any column."""
    labels, classes, probabilities = [], [], []
    for logits, batch_labels in batched_logits(classifier, tokens, images, batch_size, workers, device, dtype, desc):
        best, index = logits.float().softmax(dim=-1).topk(min(k, logits.shape[-1]), dim=-1)
        labels.append(batch_labels.cpu())
        classes.append(index.cpu())
        probabilities.append(best.cpu())
    return torch.cat(labels), torch.cat(classes), torch.cat(probabilities)
