"""What every model returns, and the loss functions the three families share."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


@dataclass
class ModelOutput:
    loss: Tensor  # scalar: mean over ALL target tokens of the batch (token-weighted)
    per_example_loss: Tensor  # (B,) mean over each example's own target tokens (0 if none)
    n_targets: Tensor  # scalar long: number of target tokens in the batch
    logits: Tensor | None = None


def _per_token(logits: Tensor, targets: Tensor) -> Tensor:
    # Cross-entropy in fp32 even under autocast: the softmax over a large vocab is where low
    # precision hurts most. Ignored targets give 0.
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="none")


def _output(sums: Tensor, counts: Tensor, n_targets: Tensor) -> ModelOutput:
    # Everything stays a tensor (no .item()): no host sync, no graph break.
    return ModelOutput(
        loss=sums.sum() / n_targets.clamp(min=1).to(sums.dtype),
        per_example_loss=sums / counts.clamp(min=1.0),
        n_targets=n_targets,
    )


def sequence_loss(logits: Tensor, labels: Tensor) -> ModelOutput:
    """Loss of (B, T, V) logits against (B, T) labels (-100 = ignore)."""
    per_token = _per_token(logits.flatten(0, 1), labels.flatten()).view(labels.shape)
    is_target = labels != IGNORE_INDEX
    return _output(per_token.sum(1), is_target.sum(1).to(per_token.dtype), is_target.sum())


def gathered_loss(
    logits: Tensor, targets: Tensor, example_index: Tensor, batch_size: int
) -> ModelOutput:
    """Loss of (N, V) logits for selected positions (BERT's masked ones) against (N,) targets;
    `example_index` (N,) says which example each row came from."""
    per_token = _per_token(logits, targets)
    is_target = (targets != IGNORE_INDEX).to(per_token.dtype)
    sums = per_token.new_zeros(batch_size).index_add_(0, example_index, per_token)
    counts = per_token.new_zeros(batch_size).index_add_(0, example_index, is_target)
    return _output(sums, counts, (targets != IGNORE_INDEX).sum())
