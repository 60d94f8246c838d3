"""`method=staged`: grow the model during one budgeted run (Shen et al. 2022), with its optimizer
state and its learning-rate schedule. The operators themselves are pure functions in
growth_operators.py.

When: by default the slope rule of stage_schedule.py decides from the run's own loss curve
(`grow: depth`, `trigger: auto` -> slope), with the paper's thresholds read relative to the
curve's steepest slope, and a fallback progress point (0.5) if the rule never fires; or at
explicit progress points (`grow: width@0.3,depth@0.6`). docs/methods/growth.md.

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
    grown_shape,
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


TRIGGERS = ("auto", "slope", "progress")
THRESHOLD_MODES = ("relative", "absolute")


def fallback_points(fallback: float, n: int) -> list[float | None]:
    """The progress by which each of n slope-triggered growths happens if the rule has not
    fired: evenly spaced up to `fallback` (0.5: one growth at 0.5; two at 0.25 and 0.5).
    `fallback` 0 turns the fallback off (a growth the rule never calls for never happens)."""
    return [fallback * (k + 1) / n if fallback > 0 else None for k in range(n)]


class StagedGrowth(Method):
    """Grow the model (and its optimizer state) at points of one budgeted run: chosen by the
    slope rule from the run's own loss curve (the default), or given as progress points."""

    name = "staged"
    incompatible = ("layer_stacking",)

    @dataclass
    class Options:
        # Growths in order: plain "op" (op = width or depth) to let the slope rule of
        # stage_schedule.py choose when, or "op@p" at budget progress p.
        grow: str = "depth"
        # auto: slope when `grow` gives no points, progress when it does.
        trigger: str = "auto"  # auto | slope | progress
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
        # The slope rule: the mean training loss is recorded at points log-spaced in progress,
        # `slope_points` per doubling of the budget spent, from `slope_start` (a stage after a
        # growth: from the growth); slopes smoothed over `window` points.
        slope_start: float = 0.1
        slope_points: int = 8
        window: int = 5
        # The paper's thresholds (slopes of log loss vs log compute on its scale). relative:
        # read as a fraction of the stage's own steepest slope (threshold / -0.76, Kaplan's
        # alpha_S); absolute: as slopes (docs/methods/stage_schedule.md).
        width_threshold: float = -0.0475
        depth_threshold: float = -0.0575
        thresholds: str = "relative"  # relative | absolute
        # If the rule has not fired, the last growth happens at this progress, earlier ones
        # evenly before it (recorded as "fallback" in the summary); 0: no fallback.
        fallback: float = 0.5

    @classmethod
    def event_points(cls, options: Options) -> list[float]:
        """The growth points when given, else where the fallback grows if the slope rule has
        not fired (the rule may fire earlier; the conformance suite also resumes around the
        growths it observes)."""
        points = [e.at for e in parse_events(options.grow)]
        if all(x is not None for x in points):
            return [float(x) for x in points]
        return [x for x in fallback_points(options.fallback, len(points)) if x is not None]

    def __init__(self, options: Options, optim: Any = None, seed: int = 0) -> None:
        o = options
        self.options = o
        self.events = parse_events(o.grow)
        if o.trigger not in TRIGGERS:
            raise ValueError(f"methods.staged.trigger must be one of {TRIGGERS}, got {o.trigger!r}")
        pointless = self.events[0].at is None
        self.trigger = ("slope" if pointless else "progress") if o.trigger == "auto" else o.trigger
        if (self.trigger == "slope") != pointless:
            raise ValueError(
                "methods.staged: trigger=progress needs points (width@0.3), trigger=slope none"
            )
        check_factor(o.factor)
        if o.variant not in DEPTH_VARIANTS or o.mode not in DEPTH_MODES:
            raise ValueError(f"methods.staged: variant {DEPTH_VARIANTS}, mode {DEPTH_MODES}")
        if o.noise < 0 or min(o.c_width, o.c_depth) < 1 or not 0 <= o.rewarmup < 1:
            raise ValueError("methods.staged: noise >= 0, c_width/c_depth >= 1, rewarmup in [0, 1)")
        if not 0 < o.slope_start < 1 or o.slope_points < 1 or o.window < 1:
            raise ValueError(
                "methods.staged: slope_start in (0, 1), slope_points >= 1, window >= 1"
            )
        if o.thresholds not in THRESHOLD_MODES:
            raise ValueError(f"methods.staged.thresholds must be one of {THRESHOLD_MODES}")
        if o.thresholds == "relative" and not o.width_threshold < 0 > o.depth_threshold:
            raise ValueError(
                "methods.staged: relative thresholds are read as slopes on the paper's scale and "
                "must be negative (width -0.0475, depth -0.0575)"
            )
        if not 0 <= o.fallback < 1:
            raise ValueError("methods.staged.fallback must be in [0, 1) (0: no fallback)")
        self.optim = optim  # budgetlm.config.OptimConfig: how to build the grown optimizer
        self.seed = seed
        self.done = 0  # growths applied
        self.transfer = ScheduleTransfer()
        self.history: list[dict[str, Any]] = []
        self.deadlines = fallback_points(o.fallback, len(self.events))
        # The slope rule: (flops, mean train loss) points of the current stage; the loss sum and
        # token count since the last point (float64, summed over ranks every step); this step's
        # own part, not yet summed; where the stage's curve starts and its next point.
        self.curve: list[list[float]] = []
        self._bucket: torch.Tensor | list[float] = [0.0, 0.0]
        self._pending: torch.Tensor | None = None
        self._stage_start = o.slope_start
        self._next_point = o.slope_start * self._ratio

    @classmethod
    def from_options(cls, options: Options, context: RunContext) -> StagedGrowth:
        cfg = context.config
        return cls(options, cfg.optim if cfg is not None else None, cfg.run.seed if cfg else 0)

    @classmethod
    def shapes_used(cls, options: Options, shape: ModelShape) -> list[ModelShape]:
        """The configured shape, then the shape after each growth (growth_operators'
        shape arithmetic; nothing is built)."""
        shapes = [shape]
        for event in parse_events(options.grow):
            shapes.append(grown_shape(shapes[-1], event.op, options.factor))
        return shapes

    @property
    def _ratio(self) -> float:
        return 2.0 ** (1.0 / self.options.slope_points)

    # -- when -----------------------------------------------------------------------------------
    def _slope_rule(self, op: str) -> dict[str, float] | None:
        """The slope rule on the current stage's curve: the smoothed slope and the bar it rose
        above at the newest point, or None if it does not fire there."""
        from budgetlm.methods.stage_schedule import rule_bar, rule_index, smoothed_slopes

        o = self.options
        if len(self.curve) <= o.window:
            return None
        threshold = o.width_threshold if op == "width" else o.depth_threshold
        relative = o.thresholds == "relative"
        smooth = smoothed_slopes([c for c, _ in self.curve], [v for _, v in self.curve], o.window)
        i = rule_index(smooth, threshold, relative)
        if i is None:
            return None
        bar = rule_bar(float(np.min(smooth[: i + 1])), threshold, relative)
        return {"slope": float(smooth[i]), "bar": bar}

    def _due(self, p: float, new_point: bool) -> dict[str, Any] | None:
        """Why the next growth is due at progress p ({"trigger": ...}), or None."""
        event = self.events[self.done]
        if event.at is not None:
            return {"trigger": "progress"} if p >= event.at else None
        fired = self._slope_rule(event.op) if new_point else None
        if fired is not None:
            return {"trigger": "slope", **fired}
        deadline = self.deadlines[self.done]
        if deadline is not None and p >= deadline:
            return {"trigger": "fallback", "deadline": deadline}
        return None

    def after_forward(self, state: MethodState, batch: dict, output: Any) -> None:
        if self.trigger != "slope" or self.done >= len(self.events):
            return
        # No host sync here: the sums stay on the device until a point is recorded. A
        # non-finite loss (a skipped step) does not count.
        loss, n = output.loss.detach().double(), output.n_targets.double()
        finite = torch.isfinite(loss)
        zero = torch.zeros_like(loss)
        part = torch.stack([torch.where(finite, loss * n, zero), torch.where(finite, n, zero)])
        self._pending = part if self._pending is None else self._pending + part

    def _record(self, state: MethodState, p: float) -> bool:
        """Add this step's losses to the current bucket; close it into a curve point when p
        reaches the next point. Returns whether a point was added."""
        pending = self._pending
        if pending is None:
            pending = torch.zeros(2, dtype=torch.float64, device=state.device)
        self._pending = None
        pending = state.dist.sum(pending)  # every rank gets the same curve, hence decision
        if p <= self._stage_start:  # before the stage's curve begins: not counted
            self._bucket = [0.0, 0.0]
            return False
        bucket = self._bucket
        if not torch.is_tensor(bucket):
            bucket = torch.tensor(bucket, dtype=torch.float64, device=pending.device)
        self._bucket = bucket + pending
        if p < self._next_point * (1 - 1e-12):
            return False
        total, count = (float(x) for x in self._bucket)
        self._bucket = [0.0, 0.0]
        k = math.floor(math.log(p / self._stage_start) / math.log(self._ratio) + 1e-9) + 1
        self._next_point = self._stage_start * self._ratio**k
        if count <= 0:
            return False
        self.curve.append([float(state.clock.spent["flops"]), total / count])
        return True

    def on_progress(self, state: MethodState, p: float) -> None:
        if self.done >= len(self.events):
            return
        new_point = self._record(state, p) if self.trigger == "slope" else False
        while self.done < len(self.events) and p < 1.0:
            why = self._due(p, new_point)
            if why is None:
                break
            self.grow_state(state, self.events[self.done].op, p, why)
            new_point = False

    # -- what -----------------------------------------------------------------------------------
    def grow_state(
        self, state: MethodState, op: str, p: float, why: dict[str, Any] | None = None
    ) -> None:
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
                **(why or {"trigger": "manual"}),
            }
        )
        self.done += 1
        # The grown model's curve starts afresh from here.
        self.curve = []
        self._bucket = [0.0, 0.0]
        self._stage_start = p
        self._next_point = p * self._ratio

    def adjust_lr(
        self, state: MethodState, p: float, lr: float, schedule: Callable[[float], float]
    ) -> float:
        if not self.options.transfer or self.transfer.grown_at is None:
            return lr
        return self.transfer.lr(p, schedule)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"trigger": self.trigger, "growths": list(self.history)}
        if self.trigger == "slope":
            out["thresholds"] = self.options.thresholds
            out["fallback_points"] = self.deadlines
        return out

    def state_dict(self) -> dict[str, Any]:
        bucket = self._bucket
        return {
            "done": self.done,
            "transfer": dataclasses.asdict(self.transfer),
            "history": self.history,
            "curve": self.curve,
            # floats: exact for float64, so a resumed bucket continues bit for bit
            "bucket": [float(x) for x in bucket],
            "stage_start": self._stage_start,
            "next_point": self._next_point,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = int(state["done"])
        self.transfer = ScheduleTransfer(**state["transfer"])
        self.history = list(state["history"])
        self.curve = [list(x) for x in state["curve"]]
        self._bucket = [float(x) for x in state["bucket"]]
        self._pending = None
        self._stage_start = float(state.get("stage_start", self.options.slope_start))
        self._next_point = float(state["next_point"])


def _shape_label(shape: ModelShape) -> str:
    depth = f"{shape.n_layers}/{shape.n_decoder_layers}" if shape.family == "t5" else shape.n_layers
    return f"L{depth} d{shape.d_model} h{shape.n_heads} ff{shape.d_ff}"


__all__ = [
    "GrowthEvent",
    "ScheduleTransfer",
    "StagedGrowth",
    "fallback_points",
    "parse_events",
]
