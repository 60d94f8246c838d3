"""Layer stacking: train a shallow model, then double its depth by copying its blocks.

Progressive stacking (Gong et al. 2019) as No Train No Gain runs it: BERT 4 -> 8 -> 16 and T5
3 -> 6 -> 12 layers, doubling at p = 0.125 and p = 0.3 (ARCHITECTURE.md §4.3). The model is built
at full depth once; only the first k blocks of each stack are *active* (run and charged) until a
stacking point copies blocks 0..k-1 into k..2k-1. No model is rebuilt and no parameter is
replaced, so the optimizer keeps its parameter references, checkpoints always hold the full-depth
model, and a resume needs nothing but the stage counter.

The blocks that are not yet active get zero residual output projections (`o`, `w_out`) at the
start of a run. A pre-LN block with zero output projections is the identity, so the loop's
evaluation (which runs every block) measures exactly the shallow model being trained. They are
overwritten by copies before they ever run in training.

Optimizer state at a stacking point is an explicit policy:
    copy       each new block gets a copy of its source block's optimizer state (moments and
               step count, so Adam's bias correction matches the moments it scales)
    reset_new  new blocks start with no state (the optimizer initialises it at their first step)
    reset_all  every parameter's state is dropped, as the original code intended to do
The copy is generic over `optimizer.state[param]` entries, so it works for every optimizer that
keeps per-parameter state (AdamW, AdamW-RMS, Lion, Sophia, Muon).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from budgetlm.api import Method, MethodState, RunContext, StepPlan
from budgetlm.methods.optim_state import copy_param_state, reset_param_state

POLICIES = ("copy", "reset_new", "reset_all")
DEFAULT_POINTS = (0.125, 0.3)


# -- the transformation -------------------------------------------------------------------------


def stacking_depths(full: int, start: int, n_points: int) -> list[int]:
    """Active depth after 0, 1, ..., n_points stacking events.

    Each event doubles the depth (capped at `full`); the last one always reaches `full`, copying
    the trained blocks cyclically if one doubling is not enough.
    """
    if not 1 <= start <= full:
        raise ValueError(f"start depth {start} must be in 1..{full}")
    depths = [min(full, start * 2**i) for i in range(n_points + 1)]
    if n_points:
        depths[-1] = full
    return depths


@torch.no_grad()
def silence_blocks(blocks: nn.ModuleList, first: int) -> None:
    """Zero the residual output projections of blocks[first:], making each one the identity."""
    for block in list(blocks)[first:]:
        for module in block.modules():
            for name, child in module.named_children():
                if name in ("o", "w_out") and isinstance(child, nn.Linear):
                    child.weight.zero_()
                    if child.bias is not None:
                        child.bias.zero_()


@torch.no_grad()
def stack_blocks(
    blocks: nn.ModuleList,
    depth: int,
    new_depth: int,
    optimizer: torch.optim.Optimizer | None = None,
    policy: str = "copy",
) -> None:
    """Grow the trained prefix blocks[:depth] to blocks[:new_depth] by copying: block j gets
    the weights of block j mod depth (j = depth..new_depth-1), and optimizer state per policy."""
    if policy not in POLICIES:
        raise ValueError(f"unknown optimizer-state policy {policy!r}; choose one of {POLICIES}")
    if not 0 < depth < new_depth <= len(blocks):
        raise ValueError(f"cannot stack {depth} -> {new_depth} blocks in a stack of {len(blocks)}")
    for j in range(depth, new_depth):
        src, dst = blocks[j % depth], blocks[j]
        for p_src, p_dst in zip(src.parameters(), dst.parameters(), strict=True):
            p_dst.copy_(p_src)
            if optimizer is None:
                continue
            if policy == "copy":
                copy_param_state(optimizer, p_src, p_dst)
            else:
                reset_param_state(optimizer, p_dst)
    if optimizer is not None and policy == "reset_all":
        optimizer.state.clear()


# -- the hook -----------------------------------------------------------------------------------


class LayerStacking(Method):
    """Train the first blocks of each stack; double the active depth at each stacking point."""

    name = "layer_stacking"
    leaves_parameters_unused = True  # the blocks not in plan.active get no gradient
    incompatible = ("layer_drop", "staged")

    @dataclass
    class Options:
        # Active depth of every stack at the start; None = a quarter of its depth (at least 1):
        # BERT 16 -> 4, T5 12 -> 3, GPT-2 small 12 -> 3.
        start_layers: int | None = None
        # Progress points at which the depth doubles (a list; the last reaches full depth).
        points: Any = DEFAULT_POINTS
        # Optimizer state of the copied blocks: copy | reset_new | reset_all.
        policy: str = "copy"

    def __init__(
        self,
        full: Mapping[str, int],
        start: Mapping[str, int],
        points: Sequence[float] = DEFAULT_POINTS,
        policy: str = "copy",
    ) -> None:
        points = [float(x) for x in points]
        if any(not 0 < x < 1 for x in points) or points != sorted(set(points)):
            raise ValueError(f"stacking points must increase strictly inside (0, 1), got {points}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.points = points
        self.policy = policy
        self.full = dict(full)
        self.depths = {s: stacking_depths(n, start[s], len(points)) for s, n in self.full.items()}
        self.stage = 0  # stacking events done so far

    @classmethod
    def event_points(cls, options: Options) -> list[float]:
        """The stacking points (the conformance suite resumes around each)."""
        return [float(x) for x in options.points]

    @classmethod
    def from_options(cls, options: Options, context: RunContext) -> LayerStacking:
        if options.start_layers is not None and options.start_layers < 1:
            raise ValueError("methods.layer_stacking.start_layers must be >= 1")
        full = context.shape.stack_depths
        start = {
            s: min(n, options.start_layers) if options.start_layers else max(1, n // 4)
            for s, n in full.items()
        }
        points = options.points
        if isinstance(points, int | float):
            points = [points]
        return cls(full, start, points, options.policy)

    def depth(self, stack: str) -> int:
        """Active depth of `stack` now."""
        return self.depths[stack][self.stage]

    def on_start(self, state: MethodState) -> None:
        stacks = state.model.layer_stacks()
        found = {s: len(b) for s, b in stacks.items()}
        if found != self.full:
            raise ValueError(f"layer_stacking was set up for depths {self.full}, model has {found}")
        if state.step == 0:  # a fresh run; a resumed one has these blocks in its checkpoint
            for s, blocks in stacks.items():
                silence_blocks(blocks, self.depth(s))

    def plan_step(self, state: MethodState, plan: StepPlan) -> None:
        active = dict(plan.active or {})
        active.update({s: list(range(self.depth(s))) for s in self.full})
        plan.active = active

    def on_progress(self, state: MethodState, p: float) -> None:
        stacks = state.model.layer_stacks()
        while self.stage < len(self.points) and p >= self.points[self.stage]:
            for s, blocks in stacks.items():
                before, after = self.depths[s][self.stage], self.depths[s][self.stage + 1]
                if after > before:
                    stack_blocks(blocks, before, after, state.optimizer, self.policy)
                elif self.policy == "reset_all":
                    state.optimizer.state.clear()
            self.stage += 1

    def summary(self) -> dict[str, Any]:
        return {"stage": self.stage, "active_depth": {s: self.depth(s) for s in self.full}}

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "depths": self.depths}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("depths") not in (None, self.depths):
            raise ValueError(
                f"checkpoint stacked with depths {state['depths']}, this run has {self.depths}"
            )
        self.stage = int(state["stage"])
