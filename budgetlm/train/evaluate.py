"""Held-out loss on fixed batches (fixed split, fixed masks), without gradients."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
from torch import nn


def heldout_loss(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """Token-weighted mean loss over all batches, with every layer active."""
    return loss_metrics(*heldout_sums(model, batches, device, autocast))


@torch.no_grad()
def heldout_sums(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
) -> tuple[float, int]:
    """(summed loss over target tokens, number of target tokens): what ranks add together."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast or contextlib.nullcontext():
                out = model(batch)
            n = int(out.n_targets)
            total += float(out.loss.float()) * n
            count += n
    finally:
        model.train(was_training)
    return total, count


def loss_metrics(total: float, count: int) -> dict[str, float]:
    if count == 0:
        raise ValueError("held-out evaluation saw no target tokens")
    loss = total / count
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": count}
