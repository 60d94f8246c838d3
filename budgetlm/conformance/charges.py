"""Is every pass a run makes charged? What the model really ran, step by step, against the
`Work` the clock was charged.

The budget is only fair if every forward a method runs (selection forwards, Hessian passes) is
declared in `plan.extra_passes`, and a method that trains on shorter sequences says so in
`plan.seq_len`. Nothing in the loop can enforce that, so the suite watches from outside:

- global module hooks (torch's `register_module_forward_pre_hook`), not hooks on one model:
  growth and stacking replace the model mid-run, and whatever model runs is counted. A whole
  model's forward (GPT, BERT, T5) gives the rows and sequence length of its batch; each
  transformer `Block` run inside it adds its rows to the block-rows (rows x blocks run: what
  `active_layers` charges); a block output that gets a gradient adds its rows to the
  back-propagated block-rows (a pass with a backward must be charged as a `train` pass).
- `Trainer.evaluate` pauses the count: held-out evaluation is outside the budget by design.
- `Clock.charge` is wrapped: each charge closes a step, taking everything counted since the
  previous one (planning forwards included: they run after the previous charge).

The hooks only read shapes and add tensor hooks that return nothing, so the run computes the
same numbers with or without them.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)

from budgetlm.budget.clock import Pass, Work
from budgetlm.models import BERT, GPT, T5
from budgetlm.models.blocks import Block

MODEL_CLASSES = (GPT, BERT, T5)


@dataclass
class Forward:
    """One whole-model forward: its batch's rows and sequence length (None: the batch could not
    be read), and the block-rows run inside it."""

    rows: int | None
    seq_len: int | None
    block_rows: int = 0


@dataclass
class StepCharge:
    """One optimizer step: what ran (forwards; block-rows run outside any whole-model forward;
    block-rows back-propagated) and the passes the clock was charged."""

    step: int
    forwards: list[Forward]
    stray_block_rows: int
    backward_block_rows: int
    passes: tuple[Pass, ...]


@dataclass
class ForwardCounter:
    """Counts model and block forwards while installed (a context manager)."""

    forwards: list[Forward] = field(default_factory=list)
    stray_block_rows: int = 0
    backward_block_rows: int = 0
    _open: list[Forward] = field(default_factory=list)
    _paused: int = 0
    _handles: list[Any] = field(default_factory=list)

    def __enter__(self) -> ForwardCounter:
        self._handles = [
            register_module_forward_pre_hook(self._before),
            register_module_forward_hook(self._after),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def take(self) -> tuple[list[Forward], int, int]:
        """What was counted since the last call, and start afresh."""
        taken = (self.forwards, self.stray_block_rows, self.backward_block_rows)
        self.forwards, self.stray_block_rows, self.backward_block_rows = [], 0, 0
        self._open = []
        return taken

    # -- the hooks ---------------------------------------------------------------------------
    def _before(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._paused:
            return
        if isinstance(module, MODEL_CLASSES):
            rows, seq_len = _batch_size(args)
            self._open.append(Forward(rows, seq_len))
        elif isinstance(module, Block):
            rows = _leading(args)
            if self._open:
                self._open[-1].block_rows += rows
            else:
                self.stray_block_rows += rows

    def _after(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._paused:
            return
        if isinstance(module, MODEL_CLASSES) and self._open:
            self.forwards.append(self._open.pop())
        elif (
            isinstance(module, Block) and isinstance(output, torch.Tensor) and output.requires_grad
        ):
            rows = output.shape[0]
            output.register_hook(lambda grad: self._backward(rows))

    def _backward(self, rows: int) -> None:
        self.backward_block_rows += rows


def _batch_size(args: tuple[Any, ...]) -> tuple[int | None, int | None]:
    batch = args[0] if args else None
    ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
    if not isinstance(ids, torch.Tensor) or ids.dim() < 2:
        return None, None
    return int(ids.shape[0]), int(ids.shape[1])


def _leading(args: tuple[Any, ...]) -> int:
    x = args[0] if args else None
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else 0


def watch(trainer: Any, counter: ForwardCounter) -> list[StepCharge]:
    """Record, per charged step of `trainer`, what `counter` saw and the passes charged; pause
    the counter during held-out evaluation. Returns the list it fills as the run goes."""
    steps: list[StepCharge] = []
    clock = trainer.state.clock
    charge = clock.charge
    evaluate = trainer.evaluate

    def charged(work: Work, *args: Any, **kwargs: Any) -> Any:
        forwards, stray, backward = counter.take()
        steps.append(StepCharge(trainer.state.step, forwards, stray, backward, work.passes))
        return charge(work, *args, **kwargs)

    def evaluated(*args: Any, **kwargs: Any) -> Any:
        with counter.paused():
            return evaluate(*args, **kwargs)

    clock.charge = charged
    trainer.evaluate = evaluated
    return steps


# -- the comparison -----------------------------------------------------------------------------


def _layers(p: Pass) -> int:
    return sum(n for _, n in p.active_layers)


def _describe_passes(passes: tuple[Pass, ...]) -> str:
    groups = Counter((p.kind, p.purpose, p.batch_size) for p in passes)
    parts = [
        f"{n} {kind} pass{'es' if n > 1 else ''} of {rows} rows ({purpose})"
        for (kind, purpose, rows), n in groups.items()
    ]
    return ", ".join(parts) or "no passes"


def _seq_len(p: Pass) -> int | None:
    return getattr(p.shape, "seq_len", None) if p.shape is not None else None


def step_mismatches(step: StepCharge) -> list[str]:
    """Why what ran in this step is not what was charged (empty when it matches)."""
    s, passes, forwards = step.step, step.passes, step.forwards
    charged_rows = sum(p.batch_size for p in passes)
    if any(f.rows is None for f in forwards):
        return [
            f"step {s}: a model was called without a batch the suite can read (call it as "
            "model(batch, active=...), with batch['input_ids'])"
        ]
    ran_rows = sum(f.rows or 0 for f in forwards)
    charged = _describe_passes(passes)
    if ran_rows != charged_rows:
        return [
            f"step {s}: the model ran {ran_rows} rows in {len(forwards)} forwards but the clock "
            f"was charged for {charged_rows} rows ({charged}); declare every pass a method runs "
            "in plan.extra_passes (budgetlm.budget.work.forward_pass / train_pass)"
        ]
    problems = []
    ran_len = Counter()
    for f in forwards:
        ran_len[f.seq_len] += f.rows or 0
    charged_len = Counter()
    for p in passes:
        charged_len[_seq_len(p)] += p.batch_size
    if None not in charged_len and ran_len != charged_len:
        problems.append(
            f"step {s}: the model ran {_by_length(ran_len)} but the clock charged "
            f"{_by_length(charged_len)}; a method that shortens the sequences must set "
            "plan.seq_len and cut the batches in before_batch (and a method after it in the "
            "`+` spec must not replace the cut batches)"
        )
    ran_blocks = sum(f.block_rows for f in forwards) + step.stray_block_rows
    charged_blocks = sum(p.batch_size * _layers(p) for p in passes)
    if ran_blocks != charged_blocks:
        stray = (
            f" ({step.stray_block_rows} outside a whole-model forward)"
            if step.stray_block_rows
            else ""
        )
        problems.append(
            f"step {s}: the model ran {ran_blocks} block-rows (rows x blocks){stray} but the "
            f"clock charged {charged_blocks} ({charged}); plan.active must name the blocks "
            "that run"
        )
    trained_blocks = sum(p.batch_size * _layers(p) for p in passes if p.kind == "train")
    if step.backward_block_rows > trained_blocks:
        problems.append(
            f"step {s}: {step.backward_block_rows} block-rows were back-propagated but the train "
            f"passes charged cover {trained_blocks} ({charged}); a pass with a backward must be "
            "declared as a train pass (budgetlm.budget.work.train_pass)"
        )
    return problems


def _by_length(counts: Counter) -> str:
    return ", ".join(f"{rows} rows of length {n}" for n, rows in sorted(counts.items()))


def charge_problems(steps: list[StepCharge]) -> list[str]:
    """What the first step with a mismatch ran and was charged, and at how many steps the same
    happened (empty: every pass of every step was charged)."""
    bad = [(step.step, problems) for step in steps if (problems := step_mismatches(step))]
    if not bad:
        return []
    first = list(bad[0][1])
    if len(bad) > 1:
        others = [s for s, _ in bad[1:]]
        listed = ", ".join(map(str, others[:8])) + (", ..." if len(others) > 8 else "")
        first.append(f"(and at {len(others)} more of the {len(steps)} steps: {listed})")
    return first
