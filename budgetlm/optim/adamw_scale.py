"""AdamW with RMS-scaled step sizes (the nanoT5 recipe, ARCHITECTURE.md §4.2).

Each parameter's step is multiplied by max(1e-3, RMS(parameter)), as in Adafactor's relative step:
large weights move proportionally more, which lets T5 train at lr 2e-2 without diverging. Weight
decay is decoupled (applied to the weights, scaled by lr only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def rms_step_size(p: torch.Tensor, lr: float, floor: float) -> torch.Tensor:
    """lr x max(floor, RMS(p)) as a float64 scalar tensor on p's device, without a host sync:
    computed as the Python float `lr * max(floor, p.float().norm().item() / sqrt(n))` was.

    `p.addcmul_(u, -step)` then moves p as `p.add_(u, alpha=-lr * max(...))` did, bit for bit
    on CPU: a 0-dim tensor does not promote p's dtype, so it is rounded once, from float64 to
    p's dtype, as an `alpha` is. (A NaN RMS stays NaN where Python's max gave the floor.)"""
    rms = p.float().norm(2).double() / math.sqrt(p.numel())
    return rms.clamp_min(floor) * lr


class AdamWScale(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
    ) -> None:
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid AdamWScale settings: lr={lr} betas={betas} eps={eps}")
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's Optimizer signature
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                # The step count lives on the CPU (torch keeps an optimizer's "step" there
                # through load_state_dict too): reading it is no device sync.
                step = state["step"].item()
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = group["lr"]
                if group["correct_bias"]:
                    step_size *= math.sqrt(1 - beta2**step) / (1 - beta1**step)
                # x max(1e-3, RMS(p)), kept on the device (no host sync per parameter); it
                # rounds as the Python float alpha it replaced.
                scaled = rms_step_size(p, step_size, 1e-3)
                update = exp_avg / exp_avg_sq.sqrt().add_(group["eps"])
                p.addcmul_(update.to(p.dtype), scaled.neg())
                if group["weight_decay"] > 0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])
        return loss
