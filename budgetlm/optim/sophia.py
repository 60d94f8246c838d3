"""Sophia-G (Liu et al. 2023): clipped, diagonally preconditioned momentum with a cheap Hessian.

Per parameter, with gradient g, momentum m and diagonal Hessian estimate h (ARCHITECTURE.md §4.3):

    m <- beta1 * m + (1 - beta1) * g                            every step
    p <- p * (1 - lr * wd) - lr * sign(m) * min(|m| / (rho * h + eps), 1)
    h <- beta2 * h + (1 - beta2) * N * g_hat**2                 every k steps (the Hessian pass)

g_hat is the gradient of the mean loss over N target tokens against labels *sampled from the
model's own softmax* (the Gauss-Newton-Bartlett estimator): N * g_hat**2 estimates the diagonal of
the Gauss-Newton matrix. Storing N * g_hat**2 makes `rho * h` equal to the paper's (and official
code's) rho * bs * h. The element-wise clip at 1 bounds every coordinate's step by lr, which is what
keeps Sophia stable where the curvature estimate is stale or tiny.

The Hessian pass is extra work the loop must run and charge: `method_for` returns `SophiaHessian`,
a Method that runs it in `plan_step` on the scheduled steps (step % k == 0, so step 0 already has
an estimate) and declares it as train passes in `plan.extra_passes`. h lives in the optimizer
state, so it checkpoints with the moments.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from budgetlm.api import Method, MethodState, RunContext, StepPlan

PAPER_BETAS = (0.965, 0.99)
PAPER_EPS = 1e-15
IGNORE_INDEX = -100
_SAMPLE_SALT = 0x50F1A  # keeps the label-sampling stream apart from other seeded streams


@dataclass
class SophiaOptions:
    """`optim.options.*` for optim.name=sophia."""

    rho: float = 0.01  # gamma in the paper: scales the curvature in the denominator
    hessian_interval: int = 10  # k: refresh the Hessian estimate every k optimizer steps
    hessian_batch: int | None = None  # examples per Hessian pass (default: one micro-batch)


class SophiaG(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-4,
        betas: tuple[float, float] = PAPER_BETAS,
        rho: float = 0.01,
        eps: float = PAPER_EPS,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or rho < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid Sophia settings: lr={lr} betas={betas} rho={rho} eps={eps}")
        defaults = dict(lr=lr, betas=tuple(betas), rho=rho, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.hessian_interval = 10
        self.hessian_batch: int | None = None

    def _state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.state[p]
        if not s:
            s["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
            s["hessian"] = torch.zeros_like(p, dtype=torch.float32)
        return s

    @torch.no_grad()
    def update_hessian(self, n_targets: int) -> None:
        """Fold the current gradients (of a sampled-label loss over n_targets) into h."""
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                self._state(p)["hessian"].mul_(beta2).addcmul_(g, g, value=(1 - beta2) * n_targets)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's Optimizer signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1 = group["betas"][0]
            lr, wd, rho, eps = group["lr"], group["weight_decay"], group["rho"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                s = self._state(p)
                m, h = s["exp_avg"], s["hessian"]
                m.mul_(beta1).add_(p.grad.float(), alpha=1 - beta1)
                if wd != 0:
                    p.mul_(1 - lr * wd)
                ratio = (m.abs() / (rho * h + eps)).clamp_(max=1.0)
                p.add_((m.sign() * ratio).to(p.dtype), alpha=-lr)
        return loss


def sampled_label_loss(logits: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
    """Sum of cross-entropies against labels drawn from softmax(logits), and the target count.

    `logits` are (B, T, V) against (B, T) labels (GPT, T5), or already gathered (N, V) rows of the
    N target positions (BERT's masked tokens); only positions with a real label are sampled.
    """
    rows = (logits[labels != IGNORE_INDEX] if logits.dim() == 3 else logits).float()
    with torch.no_grad():
        sampled = torch.multinomial(rows.softmax(-1), 1, generator=generator).squeeze(1)
    return F.cross_entropy(rows, sampled, reduction="sum"), rows.shape[0]


def _mix_seed(seed: int, step: int) -> int:
    """A generator seed that is a pure function of (run seed, step): resume needs no RNG state."""
    words = np.random.SeedSequence([seed, _SAMPLE_SALT, step]).generate_state(2, dtype=np.uint32)
    return int(words[0]) << 32 | int(words[1])


def _count_targets(batch: Mapping[str, torch.Tensor]) -> int:
    return int((batch["labels"] != IGNORE_INDEX).sum())


class SophiaHessian(Method):
    """Runs Sophia's Gauss-Newton-Bartlett pass every k steps and charges it."""

    name = "sophia_hessian"

    def __init__(self, optimizer: SophiaG, seed: int, batch_size: int) -> None:
        self.optimizer = optimizer
        self.seed = seed
        self.interval = optimizer.hessian_interval
        self.batch = optimizer.hessian_batch
        self.train_batch_size = batch_size
        self.refreshes = 0

    def due(self, step: int) -> bool:
        return step % self.interval == 0

    def plan_step(self, state: MethodState, plan: StepPlan) -> None:
        if not self.due(plan.step):
            return
        from budgetlm.budget.work import train_pass

        micro = plan.batch_size // plan.micro_batches
        n = self.batch or micro
        optimizer = state.optimizer
        if not isinstance(optimizer, SophiaG):
            raise RuntimeError("sophia_hessian needs state.optimizer to be SophiaG")
        model = state.model
        # The same examples as the start of this step's batch: a pure function of (seed, step).
        chunks = [
            state.data.batch(plan.step, start, min(start + micro, n))
            for start in range(0, n, micro)
        ]
        total = max(1, sum(_count_targets(c) for c in chunks))
        gen = torch.Generator(device=state.device)
        gen.manual_seed(_mix_seed(self.seed, plan.step))
        was_training = model.training
        model.train()
        optimizer.zero_grad(set_to_none=True)
        for chunk in chunks:
            batch = {k: v.to(state.device) for k, v in chunk.items()}
            with state.autocast():
                out = model(batch, active=plan.active, return_logits=True)
            loss, _ = sampled_label_loss(out.logits, batch["labels"], gen)
            (loss / total).backward()
            plan.extra_passes.append(
                train_pass(model.shape, len(chunk["labels"]), plan.active, purpose="hessian")
            )
        optimizer.update_hessian(total)
        # The training step starts from clean gradients (the loop zeroes them too).
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
        self.refreshes += 1

    def summary(self) -> dict[str, Any]:
        return {"hessian_interval": self.interval, "hessian_refreshes": self.refreshes}

    def state_dict(self) -> dict[str, Any]:
        return {"refreshes": self.refreshes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.refreshes = int(state["refreshes"])


def build(
    model: nn.Module,
    *,
    lr: float,
    betas: tuple[float, float] | None,
    eps: float | None,
    weight_decay: float,
    device: torch.device | str,
    options: Mapping[str, Any],
) -> SophiaG:
    """Sophia-G, weight decay on matrices only. None for betas/eps means the paper's values."""
    from budgetlm.config import build_dataclass
    from budgetlm.optim.factory import param_groups

    opts = build_dataclass(SophiaOptions, dict(options), "optim.options.")
    if opts.hessian_interval < 1:
        raise ValueError("optim.options.hessian_interval must be >= 1")
    if opts.hessian_batch is not None and opts.hessian_batch < 1:
        raise ValueError("optim.options.hessian_batch must be >= 1")
    betas = PAPER_BETAS if betas is None else tuple(betas)
    eps = PAPER_EPS if eps is None else eps
    if betas != PAPER_BETAS or eps != PAPER_EPS:
        # The config's defaults are AdamW's; Sophia's denominator rho*h is tiny early on (h is
        # an EMA started at 0), so an Adam-sized eps (1e-8) changes the update a lot.
        warnings.warn(
            f"Sophia with optim.betas={betas}, optim.eps={eps}; the paper uses "
            f"betas={PAPER_BETAS}, eps={PAPER_EPS}",
            stacklevel=2,
        )
    opt = SophiaG(
        param_groups(model, weight_decay),
        lr=lr,
        betas=betas,
        rho=opts.rho,
        eps=eps,
        weight_decay=weight_decay,
    )
    opt.hessian_interval = opts.hessian_interval
    opt.hessian_batch = opts.hessian_batch
    return opt


def method_for(optimizer: SophiaG, context: RunContext) -> SophiaHessian:
    """The Hessian pass, as a Method the loop runs and charges."""
    from budgetlm.config import ConfigError

    train = context.config.train
    if optimizer.hessian_batch is not None and optimizer.hessian_batch > train.batch_size:
        raise ConfigError(
            f"optim.options.hessian_batch={optimizer.hessian_batch} is larger than "
            f"train.batch_size={train.batch_size}: the Hessian pass reads the step's own batch"
        )
    return SophiaHessian(optimizer, seed=context.config.run.seed, batch_size=train.batch_size)
