"""A plug-in method with one option and a counter in its state: if a resumed run does not restore
the counter, it ends with another count than the uninterrupted run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from budgetlm.api import Method, RunContext


@dataclass(frozen=True)
class CounterOptions:
    every: int = 1
    """count every `every`-th optimizer step"""


class StepCounter(Method):
    """Counts optimizer steps (every `every`-th) and the held-out evaluations it saw."""

    name = "step_counter"
    Options = CounterOptions

    def __init__(self, options: CounterOptions) -> None:
        self.every = options.every
        self.steps = 0
        self.evals = 0

    @classmethod
    def from_options(cls, options: CounterOptions, context: RunContext) -> StepCounter:
        if options.every < 1:
            raise ValueError(f"methods.step_counter.every must be at least 1, got {options.every}")
        return cls(options)

    def after_optimizer_step(self, state: Any) -> None:
        if state.step % self.every == 0:
            self.steps += 1

    def on_eval(self, state: Any, metrics: dict[str, float]) -> None:
        self.evals += 1

    def summary(self) -> dict[str, Any]:
        return {"counted_steps": self.steps, "evals": self.evals}

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "evals": self.evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.evals = state["evals"]


class SameNameCounter(StepCounter):
    """Another class under the same `name`: it cannot run next to StepCounter."""


class BuiltinNamed(StepCounter):
    """A plug-in that takes a built-in method's name."""

    name = "layer_drop"


class NotAMethod:
    """Has the attributes of a method but does not subclass budgetlm.api.Method."""

    name = "not_a_method"
    Options = CounterOptions

    @classmethod
    def from_options(cls, options: Any, context: Any) -> NotAMethod:
        return cls()
