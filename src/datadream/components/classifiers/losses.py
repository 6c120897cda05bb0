"""The classifier's loss: cross-entropy on soft targets, weighted by where each sample came from."""

from __future__ import annotations

import torch


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy against (possibly mixed) probability targets."""
    return -(targets * logits.float().log_softmax(dim=-1)).sum(dim=-1)


def origin_weighted_loss(logits: torch.Tensor, targets: torch.Tensor, is_real: torch.Tensor,
                         real_weight: float | None, batch_is_real: torch.Tensor | None = None) -> torch.Tensor:
    """`real_weight * CE(real part) + (1 - real_weight) * CE(synthetic part)`, each part averaged
    over its own samples; a part absent from the batch contributes nothing (its weight is not
    handed to the other part). With `real_weight=None`: the plain mean over the batch.

    `batch_is_real`: the origins of the whole global batch when `logits` are one data-parallel
    process's share of it (datadream.components.distributed). The parts are then averaged over the
    global batch's counts, so that the shares' losses (and gradients) sum to the global batch's."""
    per_sample = soft_cross_entropy(logits, targets)
    if batch_is_real is not None:
        return _share_of_loss(per_sample, is_real, real_weight, batch_is_real)
    if real_weight is None:
        return per_sample.mean()
    loss = per_sample.new_zeros(())
    if is_real.any():
        loss = loss + real_weight * per_sample[is_real].mean()
    if (~is_real).any():
        loss = loss + (1 - real_weight) * per_sample[~is_real].mean()
    return loss


def _share_of_loss(per_sample: torch.Tensor, is_real: torch.Tensor, real_weight: float | None,
                   batch_is_real: torch.Tensor) -> torch.Tensor:
    if real_weight is None:
        return per_sample.sum() / len(batch_is_real)
    loss = per_sample.new_zeros(())
    real = int(batch_is_real.sum())
    if real:
        loss = loss + real_weight * per_sample[is_real].sum() / real
    if len(batch_is_real) - real:
        loss = loss + (1 - real_weight) * per_sample[~is_real].sum() / (len(batch_is_real) - real)
    return loss
