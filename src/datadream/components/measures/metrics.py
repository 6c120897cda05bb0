"""Accuracy counted per sample (never averaged per batch), per class with empty classes kept
apart from zero."""

from __future__ import annotations

from typing import Any

import torch


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Bool per sample: is the label among the k highest logits? (k is capped at the class count.)"""
    k = min(k, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == labels.unsqueeze(-1)).any(dim=-1)


def accuracy_text(metrics: dict[str, Any]) -> str:
    """"top-1 x%  top-5 y%" for people; top-5 only where it means something (over 5 classes)."""
    text = f"top-1 {metrics['top1']:.2f}%"
    return text if metrics.get("top5") is None else f"{text}  top-5 {metrics['top5']:.2f}%"


def summarize(labels: torch.Tensor, top1: torch.Tensor, top5: torch.Tensor, class_names: list[str]) -> dict:
    """top1/top5 in percent over all samples; per_class: name -> percent, or None without samples.
    top5 is None with 5 classes or fewer, where it is 100% by construction and says nothing."""
    n = int(labels.numel())
    per_class: dict[str, float | None] = {}
    for label, name in enumerate(class_names):
        mask = labels == label
        count = int(mask.sum())
        per_class[name] = round(100.0 * float(top1[mask].float().mean()), 4) if count else None
    return {
        "n": n,
        "top1": round(100.0 * float(top1.float().mean()), 4) if n else None,
        "top5": round(100.0 * float(top5.float().mean()), 4) if n and len(class_names) > 5 else None,
        "per_class": per_class,
        "per_class_count": {name: int((labels == i).sum()) for i, name in enumerate(class_names)},
    }


def macro_accuracy(per_class: dict[str, float | None]) -> float | None:
    """The mean of the per-class accuracies (classes without test images left out): every class
    weighs the same, however many test images it has."""
    values = [v for v in per_class.values() if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def confusion_summary(labels: torch.Tensor, predicted: torch.Tensor, class_names: list[str], top: int = 20) -> dict:
    """The most frequent mistakes (true -> predicted, count, share of the true class's images)
    and each class's precision (of the images predicted as it, the share that are it)."""
    classes = len(class_names)
    matrix = torch.bincount(labels * classes + predicted, minlength=classes * classes).view(classes, classes)
    support = matrix.sum(dim=1)
    mistakes = matrix.clone()
    mistakes.fill_diagonal_(0)
    # Sorted by count, ties in label order (topk's order among ties is not fixed): identical runs
    # write identical files.
    found = sorted((-int(mistakes[t, g]), t, g) for t, g in torch.nonzero(mistakes).tolist())
    pairs = [{"true": class_names[t], "predicted": class_names[g], "count": -n,
              "share": round(100.0 * -n / int(support[t]), 4)} for n, t, g in found[:top]]
    predicted_count = matrix.sum(dim=0)
    precision = {name: (round(100.0 * int(matrix[i, i]) / int(predicted_count[i]), 4) if int(predicted_count[i]) else None)
                 for i, name in enumerate(class_names)}
    return {"top_confused_pairs": pairs, "mistakes": int(mistakes.sum()), "per_class_precision": precision}
