"""`optim.name=schedule_free_adamw`: schedule-free AdamW, a budgetlm optimizer from outside the
package.

Method card
-----------
**What.** AdamW without a decaying schedule (Defazio et al., "The Road Less Scheduled",
NeurIPS 2024, arXiv:2405.15682; the `schedulefree` package, whose AdamW was the core of the
winning entry of the self-tuning track of MLCommons' AlgoPerf 2024 challenge). The gradient is
taken at y, an interpolation between the fast iterate z (plain Adam steps) and x, a running
weighted average of the z's; x is the model to evaluate. Run it with `schedule.name=constant`:
the run's schedule does the warm-up (the optimizer's own `warmup_steps` is off by default), then
the learning rate stays at its peak, and the average takes the place of the decay. Tune its
learning rate: the package's authors find 1-10x the rate of a scheduled AdamW works, and that it
is more sensitive to beta1 than momentum usually is.

**Train and eval weights.** The parameters hold y while training and x while evaluating. The
torch optimizer has `train()` and `eval()`; budgetlm's loop calls `eval()` around every held-out
evaluation and checkpoint and `train()` after (budgetlm/optim/modes.py), so the model saved in a
checkpoint, and fine-tuned or exported from it, is x.

**Bit-exact resume.** `schedulefree`'s `eval()` moves the parameters from y to x and `train()`
moves them back, each by a `lerp` with z; in floating point the round trip does not give y back
bit for bit (it differs in the last bits). A run that saves where the uninterrupted run did not
(`--stop-after`, a SIGTERM) would then resume from a slightly different y. `AdamWScheduleFreeExact`
below keeps the training point y in the optimizer state while in eval mode and puts it back on
`train()`, so an evaluation or a checkpoint changes nothing of the training, and a checkpoint
(saved in eval mode) holds y too: a resumed run continues bit for bit. The cost: one more copy of
the parameters in the checkpoint's optimizer state.

**Options** (`optim.options.*`): `warmup_steps`, `r`, `weight_lr_power`, as in `schedulefree`.
`optim.betas` / `optim.eps` unset mean schedulefree's defaults, (0.9, 0.999) and 1e-8. Weight
decay applies to matrices and embeddings only (budgetlm's parameter groups), at y as in
schedulefree.

**Incompatible methods.**
- `staged` rebuilds the optimizer for the grown model and carries per-parameter state over by
  moment order: z, a point in weight space, is scaled like a gradient moment (halved by a width
  growth) while the weights are not; and the new optimizer's group state starts over: k = 0 and
  weight_sum = 0, so its first step sets x to z, dropping the average; it also starts in eval
  mode, so its first step raises, unless an evaluation happens to switch it to train mode
  first, which moves the weights as if they were x.
- `layer_stacking` with its `reset_new` / `reset_all` policies starts new blocks' second moments
  from zero under the group's step count k, which is not reset: bias correction (1 - beta2^(k+1))
  is then ~1 instead of ~1 - beta2, and those blocks take steps ~1/sqrt(1 - beta2) (about 30x)
  too large; `reset_all` also drops z, the average's anchor. Only the `copy` policy would be
  consistent, and `incompatible` refuses a method by name, whatever its options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import schedulefree
import torch

from budgetlm.api import OptimizerPlugin
from budgetlm.optim.factory import param_groups

TRAIN_POINT = "train_point"  # the optimizer-state entry holding y while in eval mode


class AdamWScheduleFreeExact(schedulefree.AdamWScheduleFree):
    """`schedulefree.AdamWScheduleFree` whose `train()` restores, bit for bit, the training
    weights that `eval()` left (they are kept in the state, so checkpoints carry them)."""

    @torch.no_grad()
    def eval(self) -> None:
        for group in self.param_groups:
            if group["train_mode"]:
                for p in group["params"]:
                    state = self.state[p]
                    if "z" in state:
                        state[TRAIN_POINT] = p.detach().clone()
        super().eval()

    @torch.no_grad()
    def train(self) -> None:
        kept = [
            (p, self.state[p].pop(TRAIN_POINT))
            for group in self.param_groups
            if not group["train_mode"]
            for p in group["params"]
            if TRAIN_POINT in self.state[p]
        ]
        super().train()
        for p, y in kept:
            p.copy_(y)


@dataclass(frozen=True)
class ScheduleFreeOptions:
    warmup_steps: int = 0
    """the optimizer's own linear warm-up, in steps; 0: leave warm-up to the run's schedule"""
    r: float = 0.0
    """polynomial weighting of the average: step k weighs k^r"""
    weight_lr_power: float = 2.0
    """the average weighs each step by lr_max^weight_lr_power (lr_max: the largest lr so far)"""


class ScheduleFreeAdamW(OptimizerPlugin):
    name = "schedule_free_adamw"
    Options = ScheduleFreeOptions
    # Methods that rebuild or reset optimizer state in ways z and the group state do not
    # follow (see the module docstring).
    incompatible = ("staged", "layer_stacking")

    @classmethod
    def build(
        cls,
        model: torch.nn.Module,
        *,
        lr: float,
        betas: tuple[float, float] | None,
        eps: float | None,
        weight_decay: float,
        device: Any,
        options: ScheduleFreeOptions,
    ) -> torch.optim.Optimizer:
        if options.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {options.warmup_steps}")
        if options.r < 0 or options.weight_lr_power < 0:
            raise ValueError(
                f"r and weight_lr_power must be >= 0, got {options.r}, {options.weight_lr_power}"
            )
        defaults: dict[str, Any] = {}
        if betas is not None:
            defaults["betas"] = tuple(betas)
        if eps is not None:
            defaults["eps"] = eps
        return AdamWScheduleFreeExact(
            param_groups(model, weight_decay),
            lr=lr,
            warmup_steps=options.warmup_steps,
            r=options.r,
            weight_lr_power=options.weight_lr_power,
            **defaults,
        )
