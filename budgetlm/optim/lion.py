"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), optionally RMS-scaled.

Per parameter, with gradient g and momentum m (ARCHITECTURE.md §4.3):

    update = sign(beta1 * m + (1 - beta1) * g)
    p     <- p * (1 - lr * wd) - lr * scale * update
    m     <- beta2 * m + (1 - beta2) * g

`scale` is 1, or with `rms_scale` max(rms_floor, RMS(p)) as in nanoT5's AdamW (adamw_scale.py):
NoTrainNoGain trained T5 with Lion this way. Weight decay is decoupled and, as in AdamWScale, not
RMS-scaled. The state is one momentum tensor per parameter (half of Adam's), so it checkpoints
through the ordinary optimizer state dict.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from budgetlm.optim.adamw_scale import rms_step_size

PAPER_BETAS = (0.9, 0.99)


@dataclass
class LionOptions:
    """`optim.options.*` for optim.name=lion."""

    rms_scale: bool = False  # multiply each step by max(rms_floor, RMS(param)) (nanoT5 style)
    rms_floor: float = 1e-3


class Lion(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-4,
        betas: tuple[float, float] = PAPER_BETAS,
        weight_decay: float = 0.0,
        rms_scale: bool = False,
        rms_floor: float = 1e-3,
    ) -> None:
        if lr < 0 or not (0 <= betas[0] <= 1 and 0 <= betas[1] <= 1) or rms_floor < 0:
            raise ValueError(f"invalid Lion settings: lr={lr} betas={betas} rms_floor={rms_floor}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            weight_decay=weight_decay,
            rms_scale=rms_scale,
            rms_floor=rms_floor,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's Optimizer signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lion_update(group, self.state)
        return loss


def lion_update(group: Mapping[str, Any], state: Mapping[torch.Tensor, dict]) -> None:
    """One Lion step for the parameters of `group` (the pure update rule; state is mutated)."""
    beta1, beta2 = group["betas"]
    lr, wd = group["lr"], group["weight_decay"]
    for p in group["params"]:
        if p.grad is None:
            continue
        grad = p.grad.float()
        s = state[p]
        if not s:
            # fp32 moments even for low-precision weights: a sign of a bf16 EMA is too noisy.
            s["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
        m = s["exp_avg"]
        update = (m * beta1).add_(grad, alpha=1 - beta1).sign_()
        if group["rms_scale"]:
            # RMS of the weight before this step, as AdamWScale measures it, kept on the
            # device: no host sync per parameter (rms_step_size says why it rounds as before).
            step = rms_step_size(p, lr, group["rms_floor"])
            if wd != 0:
                p.mul_(1 - lr * wd)
            p.addcmul_(update.to(p.dtype), step.neg())
        else:
            if wd != 0:
                p.mul_(1 - lr * wd)
            p.add_(update.to(p.dtype), alpha=-lr)
        m.mul_(beta2).add_(grad, alpha=1 - beta2)


def build(
    model: nn.Module,
    *,
    lr: float,
    betas: tuple[float, float] | None,
    eps: float | None,
    weight_decay: float,
    device: torch.device | str,
    options: Mapping[str, Any],
) -> Lion:
    """Lion over the model, weight decay on matrices only (factory.param_groups).

    `eps` is unused (Lion takes a sign, not a ratio). `betas=None` means the paper's (0.9, 0.99).
    """
    from budgetlm.config import build_dataclass
    from budgetlm.optim.factory import param_groups

    opts = build_dataclass(LionOptions, dict(options), "optim.options.")
    if betas is None:
        betas = PAPER_BETAS
    elif tuple(betas) != PAPER_BETAS:
        warnings.warn(
            f"Lion with optim.betas={tuple(betas)}; the paper's are {PAPER_BETAS}",
            stacklevel=2,
        )
    return Lion(
        param_groups(model, weight_decay),
        lr=lr,
        betas=tuple(betas),
        weight_decay=weight_decay,
        rms_scale=opts.rms_scale,
        rms_floor=opts.rms_floor,
    )
