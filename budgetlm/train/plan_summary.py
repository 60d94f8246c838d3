"""What a run's budget means before it starts: steps, tokens and epochs, for `budgetlm train`.

A budget in steps says exactly how many steps the run takes. Any other deterministic budget
(tokens, FLOPs, reference-system time) is turned into steps with the cost the clock charges one
plain step: the whole batch through the full model, as the loop plans it at p = 0 before any
method edits the plan. Methods change that cost (layer dropping makes later steps cheaper,
selection adds forward passes), so for them it is an estimate. A wall-clock budget has no
cost known in advance: its steps are left unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from budgetlm.api import StepPlan
from budgetlm.budget.work import step_work
from budgetlm.models import count_params, flops_per_token

# More epochs than this and the run mostly re-reads a corpus it has already seen.
MANY_EPOCHS = 4.0


@dataclass(frozen=True)
class PlanSummary:
    family: str
    params: int
    params_non_embedding: int
    flops_per_token: float  # training (forward + backward) FLOPs per input token
    budget: str  # as the clock formats it
    unit: str
    steps: int | None  # the whole run's steps; None for wall-clock budgets
    exact: bool  # steps come from a step budget (not from a per-step cost)
    batch_size: int
    tokens_per_step: int
    train_examples: int  # training windows in one epoch
    train_tokens: int  # tokens of the training split
    start_step: int  # > 0 when resuming
    start_progress: float
    methods: tuple[str, ...]

    @property
    def tokens(self) -> int | None:
        return None if self.steps is None else self.steps * self.tokens_per_step

    @property
    def epochs(self) -> float | None:
        return None if self.steps is None else self.steps * self.batch_size / self.train_examples


def summarize_plan(trainer) -> PlanSummary:  # noqa: ANN001 - a budgetlm.train.loop.Trainer
    """The plan of `trainer`'s run from its current state (a resumed run keeps its step)."""
    state, cfg = trainer.state, trainer.cfg
    clock, shape = state.clock, state.model.shape
    micro = cfg.micro_batch_size or cfg.batch_size // trainer.dist.world  # as the loop plans
    plan = StepPlan(
        step=state.step, batch_size=cfg.batch_size, micro_batches=cfg.batch_size // micro
    )
    work = step_work(shape, plan, trainer.tokens_per_example, trainer.optimizer_name)
    unit = clock.budget.unit
    steps = None
    if unit == "steps":
        steps = math.ceil(clock.budget.amount * (1 - 1e-9))  # the clock's stop rule
    elif unit != "seconds":
        per_step = clock.predicted_cost(work)
        steps = state.step + math.ceil(clock.left() * (1 - 1e-9) / per_step)
    return PlanSummary(
        family=shape.family,
        params=count_params(shape),
        params_non_embedding=count_params(shape, embeddings=False),
        flops_per_token=flops_per_token(shape),
        budget=str(clock.budget),
        unit=unit,
        steps=steps,
        exact=unit == "steps",
        batch_size=cfg.batch_size,
        tokens_per_step=work.tokens,
        train_examples=trainer.stream.num_examples,
        train_tokens=len(trainer.stream.tokens),
        start_step=state.step,
        start_progress=clock.progress,
        methods=tuple(m.name for m in state.methods),
    )


def format_plan(s: PlanSummary) -> list[str]:
    """The start-of-run summary, a few lines for stderr."""
    lines = []
    if s.start_step:
        p = f"{s.start_progress:.2f}" if s.start_progress >= 0.01 else f"{s.start_progress:.2g}"
        lines.append(f"resuming from step {s.start_step} (p = {p} of the budget)")
    lines.append(
        f"model: {s.family}, {_si(s.params)} parameters ({_si(s.params_non_embedding)} without "
        f"embeddings), {_si(s.flops_per_token)} training FLOPs per token"
    )
    if s.steps is None:
        epoch = math.ceil(s.train_examples / s.batch_size)
        lines.append(
            f"budget: {s.budget} of wall clock; steps unknown until they are timed "
            f"({s.batch_size} sequences per step; one epoch is {epoch} steps)"
        )
        return lines
    approx = "" if s.exact else "~"
    steps = f"{s.steps} steps" if s.exact else f"{s.budget} = ~{s.steps} steps"
    lines.append(
        f"budget: {steps} x {s.batch_size} sequences = {approx}{_si(s.tokens)} tokens "
        f"= {approx}{s.epochs:.3g} epochs of {_si(s.train_tokens)} training tokens"
    )
    if not s.exact:
        changed = f"; methods ({', '.join(s.methods)}) change it" if s.methods else ""
        lines.append(f"estimated from the cost of one step of the full model at p = 0{changed}")
    if s.epochs > MANY_EPOCHS:
        lines.append(
            f"warning: the run reads its training data {s.epochs:.1f} times; its results then "
            "measure memorisation of a small corpus more than language modelling"
        )
    return lines


def _si(x: float) -> str:
    for suffix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"
