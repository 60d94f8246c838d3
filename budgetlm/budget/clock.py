"""The budget clock: every optimizer step is charged what it costs, in the budget's own unit.

A step is described before it runs (a `Work`: its forward/backward passes, active layers, tokens,
FLOPs), so the clock can tell the loop the progress p the step will reach once charged. The loop
evaluates every schedule at that p, and a step whose charge reaches the budget is the last: it runs
at p = 1, so schedules end exactly at their final value, and the run overshoots the budget by less
than one step. Wall seconds cannot be known before a step runs; the clock predicts them from recent
steps (see `Clock.plan`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from budgetlm.errors import UserError

# The budget strings `budget=...` accepts (Budget.parse below reads each example; a test checks
# that every one parses), shown by `budgetlm train --help` and in docs/config.md.
BUDGET_FORMATS = (
    (("6h-rst", "90s-rst"), "reference-system time: seconds of the reference machine (rst.table)"),
    (("2000steps",), "optimizer steps"),
    (("5M tokens", "400k-tokens"), "training tokens (k, M, G or B, T multipliers)"),
    (("1e15 flops", "2.5P flops"), "matmul FLOPs of every pass, forward and backward"),
    (("300s", "20m", "6h"), "wall clock of this machine"),
)


UNITS = ("steps", "tokens", "flops", "seconds", "rst")
# RST is measured in seconds of the reference machine; `seconds` is this machine's wall clock.

_MULTIPLIERS = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12, "P": 1e15}
_TIME_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}
_COUNT_UNITS = {
    "step": "steps",
    "steps": "steps",
    "token": "tokens",
    "tokens": "tokens",
    "flop": "flops",
    "flops": "flops",
}
_BUDGET_RE = re.compile(
    r"^\s*(?P<num>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<mult>[kKMGBTP]?)\s*[-_ ]?\s*"
    r"(?P<unit>[a-zA-Z]+)\s*(?:[-_ ]\s*(?P<rst>rst))?\s*$"
)


class BudgetError(UserError, ValueError):
    """A budget string that cannot be understood."""


@dataclass(frozen=True)
class Budget:
    """An amount of one unit: `steps`, `tokens`, `flops`, `seconds` (wall) or `rst` (seconds)."""

    amount: float
    unit: str

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise BudgetError(f"unknown budget unit {self.unit!r}; use one of {UNITS}")
        if not (self.amount > 0 and math.isfinite(self.amount)):
            raise BudgetError(f"a budget must be a positive finite amount, got {self.amount}")

    @classmethod
    def parse(cls, text: str | Budget) -> Budget:
        """Parse '300s', '20m', '6h-rst', '90s-rst', '2000steps', '5M tokens', '1e15flops'."""
        if isinstance(text, Budget):
            return text
        m = _BUDGET_RE.match(str(text))
        if not m:
            raise BudgetError(_budget_help(text))
        num, mult, unit, rst = float(m["num"]), m["mult"], m["unit"], m["rst"]
        if unit in _TIME_UNITS or unit.lower() in (
            "second",
            "seconds",
            "minute",
            "minutes",
            "hour",
            "hours",
        ):
            seconds = _TIME_UNITS.get(unit) or _TIME_UNITS[unit.lower()[0]]
            if mult:
                raise BudgetError(f"{text!r}: a time budget takes no multiplier {mult!r}")
            return cls(num * seconds, "rst" if rst else "seconds")
        if unit.lower() in _COUNT_UNITS and not rst:
            return cls(num * _MULTIPLIERS[mult], _COUNT_UNITS[unit.lower()])
        raise BudgetError(_budget_help(text))

    def format(self, value: float | None = None) -> str:
        """Human-readable amount of this budget's unit (the budget itself by default)."""
        v = self.amount if value is None else value
        if self.unit in ("seconds", "rst"):
            suffix = "-rst" if self.unit == "rst" else ""
            if v >= 3600:
                return f"{v / 3600:.2f}h{suffix}"
            if v >= 60:
                return f"{v / 60:.1f}m{suffix}"
            return f"{v:.1f}s{suffix}"
        if self.unit == "steps":
            return f"{int(round(v))} steps"
        for mult, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if v >= scale:
                return f"{v / scale:.3g}{mult} {self.unit}"
        return f"{v:.3g} {self.unit}"

    def __str__(self) -> str:
        return self.format()


def _budget_help(text: object) -> str:
    return (
        f"cannot read budget {text!r}: use e.g. '300s', '20m', '6h' (wall clock), "
        "'90s-rst', '6h-rst' (reference-system time), '2000steps', '5M tokens', '1e15 flops'"
    )


@dataclass(frozen=True)
class Pass:
    """One pass of a model over a batch: `train` (forward + backward) or `forward` (no grad).

    `purpose` says what the pass was for (`training`, `selection`, `hessian`); the clock keeps
    spending per purpose so a report can show how much of a budget went to each.
    """

    kind: str
    batch_size: int
    active_layers: tuple[tuple[str, int], ...]
    flops: float
    shape: Any = None  # the ModelShape it ran on (the RST table prices per shape)
    purpose: str = "training"


@dataclass(frozen=True)
class Work:
    """What one optimizer step does, known before it runs."""

    passes: tuple[Pass, ...]
    tokens: int
    optimizer_steps: int = 1
    optimizer: str | None = None  # the optimizer's name (the RST table prices its step)

    @property
    def flops(self) -> float:
        return sum(p.flops for p in self.passes)


CostFn = Callable[[Work], float]


def flops_by_purpose(work: Work) -> dict[str, float]:
    parts: dict[str, float] = {}
    for p in work.passes:
        parts[p.purpose] = parts.get(p.purpose, 0.0) + p.flops
    return parts


def _flops(work: Work) -> float:
    return work.flops


_flops.parts = flops_by_purpose  # type: ignore[attr-defined]


def _deterministic_costs() -> dict[str, CostFn]:
    return {
        "steps": lambda w: float(w.optimizer_steps),
        "tokens": lambda w: float(w.tokens),
        "flops": _flops,
    }


@dataclass
class Clock:
    """Tracks spending in every unit; progress and the stop rule are in the budget's unit.

    `extra_costs` adds units the clock cannot compute itself (RST comes from a cost model).
    A cost function with a `parts(work) -> {purpose: amount}` attribute also has its spending
    kept per purpose in `by_purpose[unit]` (training, selection, hessian, optimizer).
    `timer` is injectable so tests can drive wall-clock budgets deterministically.
    """

    budget: Budget
    extra_costs: Mapping[str, CostFn] = field(default_factory=dict)
    timer: Callable[[], float] = time.perf_counter
    spent: dict[str, float] = field(default_factory=lambda: dict.fromkeys(UNITS, 0.0))
    by_purpose: dict[str, dict[str, float]] = field(default_factory=dict)
    done: bool = False
    _last_planned: bool = False
    _wall_estimate: float | None = None
    _started_at: float | None = None

    def __post_init__(self) -> None:
        self._costs = {**_deterministic_costs(), **self.extra_costs}
        if self.budget.unit != "seconds" and self.budget.unit not in self._costs:
            raise BudgetError(
                f"a budget in {self.budget.unit!r} needs a cost model for that unit "
                "(RST budgets need a reference table)"
            )

    # -- planning and charging -------------------------------------------------------------
    def predicted_cost(self, work: Work) -> float:
        if self.budget.unit == "seconds":
            return self._wall_estimate or 0.0
        return self._costs[self.budget.unit](work)

    def plan(self, work: Work) -> tuple[float, bool]:
        """Progress the step will reach once charged, and whether it is the last step.

        In deterministic units the prediction is exact. In wall seconds it is an average of recent
        steps; a step that overruns the budget unannounced is followed by one final step at p = 1,
        so the schedule still ends at its final value.
        """
        after = self.spent[self.budget.unit] + self.predicted_cost(work)
        # A relative tolerance keeps float round-off from adding a spurious extra step.
        is_last = after >= self.budget.amount * (1 - 1e-9)
        self._last_planned = is_last
        return (1.0 if is_last else after / self.budget.amount), is_last

    def start_step(self) -> None:
        self._started_at = self.timer()

    def step_seconds(self) -> float:
        """Wall seconds since `start_step` (what `charge` would record)."""
        if self._started_at is None:
            raise RuntimeError("Clock.step_seconds without start_step")
        return self.timer() - self._started_at

    def charge(self, work: Work, wall_seconds: float | None = None) -> None:
        """Add the step's costs in every known unit. Wall time defaults to the timer's reading."""
        if wall_seconds is None:
            wall_seconds = self.step_seconds()
        self._started_at = None
        for unit, cost in self._costs.items():
            parts = getattr(cost, "parts", None)
            if parts is None:
                self.spent[unit] += cost(work)
                continue
            split = parts(work)
            self.spent[unit] += sum(split.values())
            kept = self.by_purpose.setdefault(unit, {})
            for purpose, amount in split.items():
                kept[purpose] = kept.get(purpose, 0.0) + amount
        self.spent["seconds"] += wall_seconds
        self.done = self.done or self._last_planned
        # Exponential average of recent step times predicts the next one.
        self._wall_estimate = (
            wall_seconds
            if self._wall_estimate is None
            else 0.7 * self._wall_estimate + 0.3 * wall_seconds
        )

    # -- reading ---------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        return min(1.0, self.spent[self.budget.unit] / self.budget.amount)

    def left(self) -> float:
        return max(0.0, self.budget.amount - self.spent[self.budget.unit])

    # -- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "budget": {"amount": self.budget.amount, "unit": self.budget.unit},
            "spent": dict(self.spent),
            "by_purpose": {unit: dict(parts) for unit, parts in self.by_purpose.items()},
            "done": self.done,
            "wall_estimate": self._wall_estimate,
        }

    def load_state_dict(self, state: Mapping) -> None:
        saved = Budget(**state["budget"])
        if saved != self.budget:
            raise BudgetError(f"checkpoint was made for budget {saved}, this run has {self.budget}")
        self.spent = {unit: float(state["spent"].get(unit, 0.0)) for unit in UNITS}
        self.by_purpose = {
            unit: {k: float(v) for k, v in parts.items()}
            for unit, parts in state.get("by_purpose", {}).items()
        }
        self.done = bool(state["done"])
        self._wall_estimate = state["wall_estimate"]
