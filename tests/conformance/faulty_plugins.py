"""Plug-ins planted for the conformance suite's tests: well-behaved controls, and plug-ins that
each break one rule the suite checks (their tests expect that check, with its message, to fail).

Named by import path `faulty_plugins:<Class>` once this folder is on sys.path
(tests/conformance/conftest.py: the `plugins` fixture).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from budgetlm.api import Method, MethodState, NoOptions, OptimizerPlugin, RunContext, StepPlan
from budgetlm.budget.work import forward_pass


# -- controls -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TemperedOptions:
    alpha: float = 0.5  # the learning rate is divided by 1 + alpha * (optimizer steps so far)


class Tempered(Method):
    """Well behaved: a learning-rate decay driven by its own step count, which it checkpoints."""

    name = "tempered"
    Options = TemperedOptions

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.count = 0

    @classmethod
    def from_options(cls, options: TemperedOptions, context: RunContext) -> Tempered:
        return cls(options.alpha)

    def adjust_lr(self, state: MethodState, p: float, lr: float, schedule: Any) -> float:
        return lr / (1.0 + self.alpha * self.count)

    def after_optimizer_step(self, state: MethodState) -> None:
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])


class HonestShortening(Method):
    """Well behaved: trains on half-length sequences and says so in `plan.seq_len`."""

    name = "honest_shortening"
    Options = NoOptions
    families = ("gpt",)

    @classmethod
    def from_options(cls, options: Any, context: RunContext) -> HonestShortening:
        return cls()

    def plan_step(self, state: MethodState, plan: StepPlan) -> None:
        plan.seq_len = state.model.shape.seq_len // 2

    def before_batch(self, state: MethodState, plan: StepPlan, batch: dict) -> dict:
        return {k: v[:, : plan.seq_len] if v.dim() == 2 else v for k, v in batch.items()}


@dataclass(frozen=True)
class PlainSGDOptions:
    momentum: float = 0.9
    nesterov: bool = False


class PlainSGD(OptimizerPlugin):
    """Well behaved: SGD with momentum, refusing RHO-loss (to exercise `refuses`)."""

    name = "plain_sgd"
    Options = PlainSGDOptions
    incompatible = ("rho_loss",)

    @classmethod
    def build(cls, model, *, lr, betas, eps, weight_decay, device, options):  # noqa: ANN001, ANN206
        from budgetlm.optim.factory import param_groups

        return torch.optim.SGD(
            param_groups(model, weight_decay),
            lr=lr,
            momentum=options.momentum,
            nesterov=options.nesterov,
        )


# -- faults -------------------------------------------------------------------------------------
class HiddenState(Tempered):
    """Keeps its step count outside `state_dict()`: a resumed run starts counting from 0, so
    its learning rates (and weights) part from the uninterrupted run's."""

    name = "hidden_state"

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _score(state: MethodState, plan: StepPlan) -> None:
    """A no-gradient forward of the step's whole batch (what a selection method does)."""
    batch = {k: v.to(state.device) for k, v in state.data.batch(plan.step).items()}
    model = state.model
    model.eval()
    try:
        with torch.no_grad():
            model(batch, active=plan.active)
    finally:
        model.train()


class UndeclaredForward(Method):
    """Scores every step's batch with a forward it never declares in `plan.extra_passes`."""

    name = "undeclared_forward"
    Options = NoOptions

    @classmethod
    def from_options(cls, options: Any, context: RunContext) -> UndeclaredForward:
        return cls()

    def plan_step(self, state: MethodState, plan: StepPlan) -> None:
        _score(state, plan)


class DeclaredForward(UndeclaredForward):
    """The same forward, declared: the control of UndeclaredForward."""

    name = "declared_forward"

    def plan_step(self, state: MethodState, plan: StepPlan) -> None:
        _score(state, plan)
        plan.extra_passes.append(forward_pass(state.model.shape, plan.batch_size, plan.active))


class HiddenShortening(HonestShortening):
    """Trains on half-length sequences but leaves `plan.seq_len` unset: charged at full length."""

    name = "hidden_shortening"

    def plan_step(self, state: MethodState, plan: StepPlan) -> None:
        self.length = state.model.shape.seq_len // 2

    def before_batch(self, state: MethodState, plan: StepPlan, batch: dict) -> dict:
        return {k: v[:, : self.length] if v.dim() == 2 else v for k, v in batch.items()}


class _BackwardAsForward(Method):
    """Companion of SloppyCompanionSGD: every 4th step a forward + backward (a curvature
    estimate) declared as a forward-only pass: charged a third of what it costs."""

    name = "sloppy_companion"

    def plan_step(self, state: MethodState, plan: StepPlan) -> None:
        if plan.step % 4:
            return
        batch = {k: v.to(state.device) for k, v in state.data.batch(plan.step).items()}
        state.model(batch, active=plan.active).loss.backward()
        state.optimizer.zero_grad(set_to_none=True)
        plan.extra_passes.append(
            forward_pass(state.model.shape, plan.batch_size, plan.active, purpose="hessian")
        )


class SloppyCompanionSGD(PlainSGD):
    """An optimizer whose companion method under-declares its Hessian-style pass."""

    name = "sloppy_companion_sgd"
    incompatible = ()

    @classmethod
    def method_for(cls, optimizer: Any, context: RunContext) -> Method:
        return _BackwardAsForward()


class ForgetfulLoad(Tempered):
    """Saves its count but ignores it when loading (a `pass` left in load_state_dict)."""

    name = "forgetful_load"

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PoisonsWeights(Tempered):
    """Writes a NaN into the weights after its 3rd step: the run diverges."""

    name = "poisons_weights"

    def after_optimizer_step(self, state: MethodState) -> None:
        super().after_optimizer_step(state)
        if self.count == 3:
            with torch.no_grad():
                next(state.model.parameters()).fill_(float("nan"))


class UntypedOptions(Tempered):
    """Takes its options as a plain dict: the config cannot check them."""

    name = "untyped_options"
    Options = dict


class _LossySwap(torch.optim.SGD):
    """Weights to evaluate that differ from the ones trained (as schedule-free optimizers
    have): eval() scales the parameters by 0.1, train() scales them back by 10, which floating
    point does not undo exactly. The mode is in param_groups, so it checkpoints."""

    def _scale(self, to_train: bool) -> None:
        with torch.no_grad():
            for group in self.param_groups:
                if group.setdefault("train_mode", True) == to_train:
                    continue
                for p in group["params"]:
                    p.mul_(10.0 if to_train else 0.1)
                group["train_mode"] = to_train

    def eval(self) -> None:
        self._scale(to_train=False)

    def train(self) -> None:
        self._scale(to_train=True)


class LossySwapSGD(PlainSGD):
    """Every checkpoint perturbs the weights (an inexact eval/train swap): a run stopped and
    resumed at a step where the uninterrupted run wrote no checkpoint ends elsewhere."""

    name = "lossy_swap_sgd"
    incompatible = ()

    @classmethod
    def build(cls, model, *, lr, betas, eps, weight_decay, device, options):  # noqa: ANN001, ANN206
        from budgetlm.optim.factory import param_groups

        return _LossySwap(param_groups(model, weight_decay), lr=lr, momentum=options.momentum)
