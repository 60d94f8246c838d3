"""`method=staged`: grow the model at given progress points of one budgeted run (Shen et al.
2022), with its optimizer state and its learning-rate schedule. The operators themselves are pure
functions in growth_operators.py.

Schedule transfer: after a growth at progress p_g, the grown model follows the target schedule
from S_grow = S_before / c (c: 1.81 width, 1.43 depth): in budget terms from position
q_g = q(p_g) / c. So that the learning rate still reaches its final value exactly when the budget
is spent, the rest of the run [p_g, 1] is mapped linearly onto [q_g, 1] of the schedule, and a
linear re-warm-up over `rewarmup` of the budget multiplies the lr from 0 to 1.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from budgetlm.api import Method, MethodState, RunContext
from budgetlm.methods.growth_operators import (
    DEFAULT_C,
    DEPTH_MODES,
    DEPTH_VARIANTS,
    OPERATORS,
    build_grown_optimizer,
    check_factor,
    grow,
)
from budgetlm.models import ModelShape

# -- schedule transfer --------------------------------------------------------------------------


@dataclass
class ScheduleTransfer:
    """Where on the target schedule the run is: q(p), linear from (anchor_p, anchor_q) to (1, 1).

    Before any growth q(p) = p. A growth at p_g with factor c moves the anchor to
    (p_g, q(p_g) / c): the grown model re-enters the schedule at S_grow = S_before / c, and the
    rest of the budget is stretched so that q reaches 1 exactly at p = 1 (the last step still
    runs at the schedule's final value).
    """

    anchor_p: float = 0.0
    anchor_q: float = 0.0
    rewarmup: float = 0.0  # fraction of the budget over which the lr ramps back up
    grown_at: float | None = None

    def position(self, p: float) -> float:
        p = min(1.0, max(self.anchor_p, p))
        if self.anchor_p >= 1.0:
            return 1.0
        return self.anchor_q + (p - self.anchor_p) * (1.0 - self.anchor_q) / (1.0 - self.anchor_p)

    def warmup_factor(self, p: float) -> float:
        """Linear 0 -> 1 over `rewarmup` after the last growth; 1 at p = 1 whatever happens."""
        if self.grown_at is None or self.rewarmup <= 0:
            return 1.0
        span = min(self.rewarmup, 1.0 - self.grown_at)
        if span <= 0:
            return 1.0
        return min(1.0, max(0.0, (p - self.grown_at) / span))

    def lr(self, p: float, schedule: Callable[[float], float]) -> float:
        return self.warmup_factor(p) * schedule(self.position(p))

    def grew(self, p: float, c: float, rewarmup: float) -> None:
        if c < 1.0:
            raise ValueError(f"the schedule-transfer factor c must be >= 1, got {c}")
        self.anchor_q = self.position(p) / c
        self.anchor_p = p
        self.grown_at = p
        self.rewarmup = rewarmup


# -- the method ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrowthEvent:
    op: str  # width | depth
    at: float | None  # progress point; None when the slope rule decides


def parse_events(spec: str) -> list[GrowthEvent]:
    """'width@0.25,depth@0.5' -> events at progress points; 'width,depth' -> slope-triggered."""
    events = []
    for item in filter(None, (x.strip() for x in spec.replace(" ", ",").split(","))):
        op, sep, at = item.partition("@")
        if op not in OPERATORS:
            raise ValueError(f"unknown growth {op!r} in {spec!r}; use {OPERATORS}")
        point = float(at) if sep else None
        if point is not None and not 0.0 < point < 1.0:
            raise ValueError(f"growth point {point} in {spec!r} must be inside (0, 1)")
        events.append(GrowthEvent(op, point))
    if not events:
        raise ValueError("methods.staged.grow names no growth")
    points = [e.at for e in events]
    if any(x is None for x in points) != all(x is None for x in points):
        raise ValueError(f"{spec!r}: give a progress point for every growth or for none")
    if points[0] is not None and points != sorted(set(points)):
        raise ValueError(f"{spec!r}: growth points must increase")
    return events


def _seed_for(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([0x6E0_3A7, seed % 2**32, step]).generate_state(1)[0])


class StagedGrowth(Method):
    """Grow the model (and its optimizer state) at given points of one budgeted run."""

    name = "staged"
    incompatible = ("layer_stacking",)

    @dataclass
    class Options:
        # Growths in order: "op@p" at budget progress p, or plain "op" to let the slope rule of
        # stage_schedule.py decide (trigger=slope). Operators: width, depth.
        grow: str = "depth@0.5"
        trigger: str = "progress"  # progress | slope
        factor: int = 2
        variant: str = "identity"  # depth growth: identity (loss-preserving) | copy
        mode: str = "interleave"  # depth growth: interleave | append
        # Width growth: relative std of noise in the off-diagonal blocks. Not 0 by default: an
        # exact copy is a fixed point of training (the copies would never differ, see above).
        noise: float = 0.01
        transfer: bool = True  # continue on the target schedule at S_before / c
        c_width: float = DEFAULT_C["width"]
        c_depth: float = DEFAULT_C["depth"]
        rewarmup: float = 0.02  # fraction of the budget
        # trigger=slope: loss points every `slope_every` of the budget, running mean `window`.
        slope_every: float = 0.02
        window: int = 5
        width_threshold: float = -0.0475
        depth_threshold: float = -0.0575

    def __init__(self, options: Options, optim: Any = None, seed: int = 0) -> None:
        o = options
        self.options = o
        self.events = parse_events(o.grow)
        if o.trigger not in ("progress", "slope"):
            raise ValueError(f"methods.staged.trigger must be progress or slope, got {o.trigger!r}")
        if (o.trigger == "slope") != (self.events[0].at is None):
            raise ValueError(
                "methods.staged: trigger=progress needs points (width@0.3), trigger=slope none"
            )
        check_factor(o.factor)
        if o.variant not in DEPTH_VARIANTS or o.mode not in DEPTH_MODES:
            raise ValueError(f"methods.staged: variant {DEPTH_VARIANTS}, mode {DEPTH_MODES}")
        if o.noise < 0 or min(o.c_width, o.c_depth) < 1 or not 0 <= o.rewarmup < 1:
            raise ValueError("methods.staged: noise >= 0, c_width/c_depth >= 1, rewarmup in [0, 1)")
        if not 0 < o.slope_every <= 1 or o.window < 1:
            raise ValueError("methods.staged: slope_every in (0, 1], window >= 1")
        self.optim = optim  # budgetlm.config.OptimConfig: how to build the grown optimizer
        self.seed = seed
        self.done = 0  # growths applied
        self.transfer = ScheduleTransfer()
        self.history: list[dict[str, Any]] = []
        # trigger=slope: (flops, mean train loss) points of the current stage, the loss sum and
        # token count since the last point, and the progress of the next point.
        self.curve: list[list[float]] = []
        self._bucket = [0.0, 0.0]
        self._next_point = options.slope_every

    @classmethod
    def from_options(cls, options: Options, context: RunContext) -> StagedGrowth:
        cfg = context.config
        return cls(options, cfg.optim if cfg is not None else None, cfg.run.seed if cfg else 0)

    # -- when -----------------------------------------------------------------------------------
    def _due(self, state: MethodState, p: float) -> bool:
        event = self.events[self.done]
        if event.at is not None:
            return p >= event.at
        from budgetlm.methods.stage_schedule import grow_index

        o = self.options
        threshold = o.width_threshold if event.op == "width" else o.depth_threshold
        compute = [c for c, _ in self.curve]
        loss = [v for _, v in self.curve]
        return grow_index(compute, loss, threshold, o.window) is not None

    def after_forward(self, state: MethodState, batch: dict, output: Any) -> None:
        if self.options.trigger == "slope" and self.done < len(self.events):
            n = float(output.n_targets)
            self._bucket[0] += float(output.loss.detach()) * n
            self._bucket[1] += n

    def on_progress(self, state: MethodState, p: float) -> None:
        if self.done >= len(self.events):
            return
        if self.options.trigger == "slope" and p >= self._next_point and self._bucket[1] > 0:
            mean = self._bucket[0] / self._bucket[1]
            self.curve.append([state.clock.spent["flops"], mean])
            self._bucket = [0.0, 0.0]
            every = self.options.slope_every
            self._next_point = (math.floor(p / every + 1e-9) + 1) * every
        while self.done < len(self.events) and p < 1.0 and self._due(state, p):
            self.grow_state(state, self.events[self.done].op, p)

    # -- what -----------------------------------------------------------------------------------
    def grow_state(self, state: MethodState, op: str, p: float) -> None:
        """Replace state.model and state.optimizer by their grown versions."""
        from budgetlm.optim.factory import optimizer_from_config

        o = self.options
        generator = torch.Generator().manual_seed(_seed_for(self.seed, state.step))
        before = state.model.shape
        grown = grow(
            state.model,
            state.optimizer,
            op,
            factor=o.factor,
            mode=o.mode,
            variant=o.variant,
            noise=o.noise,
            generator=generator,
        )
        optim = self.optim
        if optim is None:
            raise ValueError("method=staged needs the run config to rebuild the optimizer")

        def build(model: nn.Module) -> torch.optim.Optimizer:
            return optimizer_from_config(optim, model, state.device)

        state.optimizer = build_grown_optimizer(grown, build)
        state.model = grown.model
        if o.transfer:
            c = o.c_width if op == "width" else o.c_depth
            self.transfer.grew(p, c, o.rewarmup)
        self.history.append(
            {
                "op": op,
                "p": p,
                "step": state.step,
                "from": _shape_label(before),
                "to": _shape_label(grown.shape),
            }
        )
        self.done += 1
        self.curve = []
        self._bucket = [0.0, 0.0]

    def adjust_lr(
        self, state: MethodState, p: float, lr: float, schedule: Callable[[float], float]
    ) -> float:
        if not self.options.transfer or self.transfer.grown_at is None:
            return lr
        return self.transfer.lr(p, schedule)

    def summary(self) -> dict[str, Any]:
        return {"growths": list(self.history)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "transfer": dataclasses.asdict(self.transfer),
            "history": self.history,
            "curve": self.curve,
            "bucket": list(self._bucket),
            "next_point": self._next_point,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = int(state["done"])
        self.transfer = ScheduleTransfer(**state["transfer"])
        self.history = list(state["history"])
        self.curve = [list(x) for x in state["curve"]]
        self._bucket = list(state["bucket"])
        self._next_point = float(state["next_point"])


def _shape_label(shape: ModelShape) -> str:
    depth = f"{shape.n_layers}/{shape.n_decoder_layers}" if shape.family == "t5" else shape.n_layers
    return f"L{depth} d{shape.d_model} h{shape.n_heads} ff{shape.d_ff}"


__all__ = ["GrowthEvent", "ScheduleTransfer", "StagedGrowth", "parse_events"]
