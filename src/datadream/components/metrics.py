"""Accuracy counted per sample (never averaged per batch), per class with empty classes kept
apart from zero."""

from __future__ import annotations

import torch


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Bool per sample: is the label among the k highest logits? (k is capped at the class count.)"""
    k = min(k, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == labels.unsqueeze(-1)).any(dim=-1)


def summarize(labels: torch.Tensor, top1: torch.Tensor, top5: torch.Tensor, class_names: list[str]) -> dict:
    """top1/top5 in percent over all samples; per_class: name -> percent, or None without samples."""
    n = int(labels.numel())
    per_class: dict[str, float | None] = {}
    for label, name in enumerate(class_names):
        mask = labels == label
        count = int(mask.sum())
        per_class[name] = round(100.0 * float(top1[mask].float().mean()), 4) if count else None
    return {
        "n": n,
        "top1": round(100.0 * float(top1.float().mean()), 4) if n else None,
        "top5": round(100.0 * float(top5.float().mean()), 4) if n else None,
        "per_class": per_class,
        "per_class_count": {name: int((labels == i).sum()) for i, name in enumerate(class_names)},
    }
