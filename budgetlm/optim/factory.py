"""Build the optimizer named in the config, with weight decay only on matrices."""

from __future__ import annotations

import torch
from torch import nn

from budgetlm.optim.adamw_scale import AdamWScale

OPTIMIZERS = ("adamw", "adamw_rms")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices and embeddings; never biases or norm gains (cramming recipe).

    Tied parameters appear once: `model.parameters()` already de-duplicates them.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    device: torch.device | str = "cpu",
) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        # The fused kernel is fastest on CUDA; on CPU the default (foreach) path is used.
        fused = torch.device(device).type == "cuda"
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)
    if name == "adamw_rms":
        return AdamWScale(groups, lr=lr, betas=betas, eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate (groups may carry an `lr_scale`, e.g. for Muon's AdamW)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
