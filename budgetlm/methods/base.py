"""The plug-in interface of the one training loop.

A method is a thin object whose hooks the loop calls at named events; the transformation itself
lives in a pure function next to it (Composer style). A method never forks the loop. Events, in
the order the loop calls them for one optimizer step:

    plan_step        decide what this step will do (active layers, batch selection) before its cost
                     is computed: whatever is set on the StepPlan is what gets charged. Work done
                     here (selection forwards) counts towards the step's wall time; declare it
                     in `plan.extra_passes` so RST/FLOP budgets charge it too
    adjust_lr        may change the step's learning rate (schedule transfer after growth); it
                     gets the schedule, a pure function of progress, and must keep lr(p=1) final
    before_batch     may transform or replace each micro-batch (e.g. keep only selected examples)
    after_forward    sees each micro-batch's ModelOutput (per-example losses for selection)
    before_optimizer_step / after_optimizer_step
    on_progress      after the step is charged, with the new progress p (growth, stacking points)
    on_eval          after each held-out evaluation

Methods read and may replace `state.model` and `state.optimizer` (growth); the loop always uses
the current ones and charges by `state.model.shape`. `state.data` is the run's BatchStream
(`batch(step, start, stop)`), `state.device` and `state.autocast()` what to forward with.

State that changes during training must come back from `state_dict()` (tensors allowed) so a
resumed run continues bit-exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from budgetlm.budget.clock import Pass
    from budgetlm.models import ModelOutput
    from budgetlm.train.state import TrainState


@dataclass
class StepPlan:
    """What one optimizer step will do; methods edit it in `plan_step`.

    `active` maps a stack name to the block indices to run (None: all blocks).
    `extra_passes` are additional passes the step runs (selection forwards, Hessian passes):
    they are charged to the clock with the training passes.
    """

    step: int
    batch_size: int
    micro_batches: int
    active: dict[str, list[int]] | None = None
    extra_passes: list[Pass] = field(default_factory=list)


class Method:
    """Base class: every hook is a no-op, so a method overrides only the events it needs."""

    name: str = "method"

    def on_start(self, state: TrainState) -> None:
        pass

    def plan_step(self, state: TrainState, plan: StepPlan) -> None:
        pass

    def adjust_lr(
        self, state: TrainState, p: float, lr: float, schedule: Callable[[float], float]
    ) -> float:
        return lr

    def before_batch(
        self, state: TrainState, plan: StepPlan, batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return batch

    def after_forward(
        self, state: TrainState, batch: dict[str, torch.Tensor], output: ModelOutput
    ) -> None:
        pass

    def before_optimizer_step(self, state: TrainState) -> None:
        pass

    def after_optimizer_step(self, state: TrainState) -> None:
        pass

    def on_progress(self, state: TrainState, p: float) -> None:
        pass

    def on_eval(self, state: TrainState, metrics: dict[str, float]) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        """What the run's summary.json reports for this method. An `uncharged` entry
        ({unit: amount}) is work done for the run but outside its budget (e.g. RHO-loss's
        irreducible-loss model): the summary then also gives totals including it."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
