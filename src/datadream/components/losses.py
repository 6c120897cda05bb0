"""The classifier's loss: cross-entropy on soft targets, weighted by where each sample came from."""

from __future__ import annotations

import torch


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy against (possibly mixed) probability targets."""
    return -(targets * logits.float().log_softmax(dim=-1)).sum(dim=-1)


def origin_weighted_loss(logits: torch.Tensor, targets: torch.Tensor, is_real: torch.Tensor,
                         real_weight: float | None) -> torch.Tensor:
    """`real_weight * CE(real part) + (1 - real_weight) * CE(synthetic part)`, each part averaged
    over its own samples; a part absent from the batch contributes nothing (its weight is not
    handed to the other part). With `real_weight=None`: the plain mean over the batch."""
    per_sample = soft_cross_entropy(logits, targets)
    if real_weight is None:
        return per_sample.mean()
    loss = per_sample.new_zeros(())
    if is_real.any():
        loss = loss + real_weight * per_sample[is_real].mean()
    if (~is_real).any():
        loss = loss + (1 - real_weight) * per_sample[~is_real].mean()
    return loss
