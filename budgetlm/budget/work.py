"""Describe one optimizer step as `Work` for the clock, from the model shape and the plan."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from budgetlm.budget.clock import Pass, Work
from budgetlm.models import ModelShape, forward_flops

STACKS = {"gpt": ("decoder",), "bert": ("encoder",), "t5": ("encoder", "decoder")}


def stack_sizes(shape: ModelShape) -> dict[str, int]:
    if shape.family == "t5":
        return {"encoder": shape.n_layers, "decoder": shape.n_decoder_layers}
    return {STACKS[shape.family][0]: shape.n_layers}


def active_counts(
    shape: ModelShape, active: dict[str, list[int]] | None
) -> tuple[tuple[str, int], ...]:
    sizes = stack_sizes(shape)
    if active:
        sizes.update({name: len(ids) for name, ids in active.items()})
    return tuple(sorted(sizes.items()))


def train_pass(
    shape: ModelShape,
    batch_size: int,
    active: dict[str, list[int]] | None,
    purpose: str = "training",
) -> Pass:
    """A forward + backward pass over `batch_size` sequences with the given active blocks."""
    counts = active_counts(shape, active)
    flops = 3 * forward_flops(shape, batch_size, active_layers=dict(counts))
    return Pass("train", batch_size, counts, flops, shape, purpose)


def forward_pass(
    shape: ModelShape,
    batch_size: int,
    active: dict[str, list[int]] | None,
    purpose: str = "selection",
) -> Pass:
    """A forward pass without gradients (batch selection charges these)."""
    counts = active_counts(shape, active)
    flops = forward_flops(shape, batch_size, dict(counts))
    return Pass("forward", batch_size, counts, flops, shape, purpose)


class PlannedStep(Protocol):
    """What the clock needs of a step's plan (budgetlm.api.StepPlan is one): declared here so
    that the cost-accounting layer imports nothing above it."""

    batch_size: int
    micro_batches: int
    active: dict[str, list[int]] | None
    extra_passes: Sequence[Pass]
    seq_len: int | None


def step_work(
    shape: ModelShape, plan: PlannedStep, tokens_per_example: int, optimizer: str | None = None
) -> Work:
    """The training passes of the plan (its batch in micro-batches) plus its extra passes.

    A plan that trains on shorter sequences (`plan.seq_len`) is charged at that length, and its
    tokens scale with it."""
    micro = plan.batch_size // plan.micro_batches
    seq_len = plan.seq_len
    tokens = plan.batch_size * tokens_per_example
    if seq_len is not None and seq_len != shape.seq_len:
        if not 0 < seq_len <= shape.seq_len:
            raise ValueError(f"a step planned at seq_len={seq_len}, the model's is {shape.seq_len}")
        tokens = plan.batch_size * tokens_per_example * seq_len // shape.seq_len
        shape = dataclasses.replace(shape, seq_len=seq_len)
    passes = [train_pass(shape, micro, plan.active)] * plan.micro_batches
    return Work(passes=tuple(passes + list(plan.extra_passes)), tokens=tokens, optimizer=optimizer)
