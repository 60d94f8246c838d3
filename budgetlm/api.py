"""The plug-in contract of the one training loop: `Method`, `StepPlan`, `MethodState`, `RunContext`.

Both `methods/` (and optimizers with a hook, such as Sophia's Hessian pass) and `train/` import
this module, and it imports neither, so neither side closes a circle through the other.

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
resumed run continues bit-exactly. `MethodState` spells out what of the trainer's state a method
may read and replace; the loop's `TrainState` (budgetlm/train/state.py) satisfies it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import contextlib

    import torch

    from budgetlm.budget.clock import Clock, Pass
    from budgetlm.models import ModelOutput


class MethodState(Protocol):
    """What a method may touch of the training state (budgetlm/train/state.py:TrainState).

    `model` and `optimizer` may be replaced (growth, stacking); the loop always uses the current
    ones and charges by `model.shape`. `info` holds small facts that survive a resume. `data`,
    `device`, `dist` and `autocast` are runtime handles: the run's BatchStream, where to
    forward, this process's place in a data-parallel job, and the autocast context factory.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    clock: Clock
    methods: list[Method]
    step: int
    info: dict[str, Any]
    data: Any
    device: torch.device
    dist: Any
    autocast: Callable[[], contextlib.AbstractContextManager]


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

    @classmethod
    def shapes_used(cls, options: Any, shape: Any) -> list[Any]:
        """Every model shape (`budgetlm.models.ModelShape`) a run of this method trains, given
        its options and the configured `shape`: what an RST table must price before the run
        starts. The configured shape unless the method changes it (staged growth)."""
        return [shape]

    def on_start(self, state: MethodState) -> None:
        pass

    def plan_step(self, state: MethodState, plan: StepPlan) -> None:
        pass

    def adjust_lr(
        self, state: MethodState, p: float, lr: float, schedule: Callable[[float], float]
    ) -> float:
        return lr

    def before_batch(
        self, state: MethodState, plan: StepPlan, batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return batch

    def after_forward(
        self, state: MethodState, batch: dict[str, torch.Tensor], output: ModelOutput
    ) -> None:
        pass

    def before_optimizer_step(self, state: MethodState) -> None:
        pass

    def after_optimizer_step(self, state: MethodState) -> None:
        pass

    def on_progress(self, state: MethodState, p: float) -> None:
        pass

    def on_eval(self, state: MethodState, metrics: dict[str, float]) -> None:
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


@dataclass(frozen=True)
class RunContext:
    """What a method may know about the run when it is built."""

    shape: Any  # budgetlm.models.ModelShape
    config: Any  # budgetlm.config.Config
    run_dir: Any = None  # pathlib.Path
    # The run's prepared data: `.dataset` (budgetlm.data.prepare.PreparedDataset) and
    # `.objective`, for methods that key state by example (RHO-loss's IL table).
    data: Any = None
