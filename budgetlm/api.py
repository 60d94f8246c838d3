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
    batch_rows       may supply a micro-batch's rows itself (batch selection: the examples it
                     chose in plan_step); the loop then never builds the run's own rows for it
    before_batch     may transform each micro-batch (cut it, mask it)
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
    `seq_len` is the length of the sequences this step trains on when a method shortens them
    (sequence-length warm-up; None: the model's): the training passes are charged at that
    length, so the RST table must price it (declare it in `Method.shapes_used`). The method
    itself cuts the batches to that length in `before_batch`.
    `extra_passes` are additional passes the step runs (selection forwards, Hessian passes):
    they are charged to the clock with the training passes.
    """

    step: int
    batch_size: int
    micro_batches: int
    active: dict[str, list[int]] | None = None
    extra_passes: list[Pass] = field(default_factory=list)
    seq_len: int | None = None


class Method:
    """Base class: every hook is a no-op, so a method overrides only the events it needs.

    A subclass declares `name` (its options live under `methods.<name>` and its checkpointed
    state is keyed by it), an `Options` dataclass, `from_options(options, context)`, and may
    declare `incompatible` (methods it cannot be combined with), `families` (the model families
    it supports) and `event_points` (where it changes the run; the conformance suite resumes
    around each). docs/your-method.md walks through writing one.

    `leaves_parameters_unused` must be True for a method after which some parameters get no
    gradient in some steps (layers it drops or has not stacked yet, via `StepPlan.active`):
    under DDP the loop then wraps the model with `find_unused_parameters=True`, which costs a
    search of the autograd graph every step, so it is False by default. A method that runs
    every layer (batch selection, growth, a shorter sequence) leaves it False; one that skips
    parameters without declaring it fails under DDP at its second step.
    """

    name: str = "method"
    incompatible: tuple[str, ...] = ()
    families: tuple[str, ...] = ("gpt", "bert", "t5")
    leaves_parameters_unused: bool = False

    @classmethod
    def event_points(cls, options: Any) -> list[float]:
        """Budget progress points at which a run of this method changes what it trains (a
        stacking or growth point, a phase change): `budgetlm check-plugin` checkpoints just
        before, at and after each and checks that resuming there is bit-exact. None by default:
        the suite then checks resumes at a few points spread over the run."""
        return []

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

    def batch_rows(
        self, state: MethodState, plan: StepPlan, start: int, stop: int
    ) -> dict[str, torch.Tensor] | None:
        """Rows [start, stop) of this step's global batch when this method chooses the step's
        examples itself (selective backprop, RHO-loss), else None (the default): the run's
        data stream builds them. The loop asks the methods in order and the first answer wins;
        a method that would throw the stream's rows away answers here, so they are never built
        (`before_batch` still runs on what it returns)."""
        return None

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
class NoOptions:
    """The options of a plug-in that takes none."""


class OptimizerPlugin:
    """Base class of an optimizer from outside the package (docs/your-method.md).

    `build` returns a `torch.optim.Optimizer` for the model; `options` is an instance of the
    `Options` dataclass, validated from `optim.options` with did-you-mean on typos. Decay weight
    matrices only, as the built-ins do: `budgetlm.optim.factory.param_groups(model, weight_decay)`.
    `betas`/`eps` None mean the optimizer's own defaults.

    An optimizer whose weights for evaluation differ from the ones it trains (schedule-free
    methods) gives the torch optimizer `train()` and `eval()` methods: the loop calls `eval()`
    before every held-out evaluation and checkpoint (so saved weights are the ones to evaluate,
    fine-tune and export) and `train()` after, and after loading a checkpoint. Resume is
    bit-exact only if `train()` gives back the training weights bit for bit (keep them in the
    optimizer's state while in eval mode: the example's `AdamWScheduleFreeExact` does), since a
    checkpoint may be written at a step the uninterrupted run did not save at (`--stop-after`,
    a stop signal).

    Extra work the loop must run and charge for it (Sophia's Hessian passes) comes from
    `method_for`, a companion `Method` whose `plan_step` declares the passes.
    """

    name: str = "optimizer"
    Options: type = NoOptions
    incompatible: tuple[str, ...] = ()  # methods it cannot be combined with

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
        options: Any,
    ) -> torch.optim.Optimizer:
        raise NotImplementedError(f"{cls.__name__}.build")

    @classmethod
    def method_for(cls, optimizer: torch.optim.Optimizer, context: RunContext) -> Method | None:
        return None


@dataclass(frozen=True)
class RunContext:
    """What a method may know about the run when it is built."""

    shape: Any  # budgetlm.models.ModelShape
    config: Any  # budgetlm.config.Config
    run_dir: Any = None  # pathlib.Path
    # The run's prepared data: `.dataset` (budgetlm.data.prepare.PreparedDataset) and
    # `.objective`, for methods that key state by example (RHO-loss's IL table).
    data: Any = None
