"""Progressive layer dropping (Zhang & He 2020, as No Train No Gain runs it).

Every optimizer step runs a random subset of each stack's blocks; the rest are skipped (and not
charged). The keep probability decays with budget progress p (ARCHITECTURE.md §4.3):

    theta(p) = (1 - theta_bar) * exp(-gamma_f * p) + theta_bar
    P(drop layer l of L) = (1 - theta(p)) * l / L          (l = 1..L, deeper layers drop more)

so at late p the expected number of active layers is L - (1 - theta_bar) * (L + 1) / 2.

Rules this implementation fixes (the papers leave them open):
- one draw per optimizer step: `plan_step` sets `plan.active`, so every micro-batch of a step
  runs the same blocks, and the clock charges exactly those;
- randomness comes from a generator seeded by (run seed, step, a constant for this method), never
  from the global torch RNG: a resumed run and every data-parallel rank draw the same layers;
- T5: one uniform number u_l per layer id l is shared by the encoder and the decoder, and layer l
  of a stack of depth L_s is dropped when u_l < (1 - theta) * l / L_s. With equal depths (every
  T5 preset) both stacks therefore run exactly the same ids; with unequal depths each stack still
  follows the formula for its own depth, and their choices stay coupled through the shared u_l;
- never an empty stack: if every block of a stack is drawn for dropping, its first block (the one
  least likely to be dropped) runs anyway. This adds P(all dropped) to the expected depth, which
  is < 0.01 for L >= 4 at theta_bar = 0.5.
Outputs of kept blocks are not rescaled (as in No Train No Gain); evaluation runs every block.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from budgetlm.api import Method, MethodState, RunContext, StepPlan

# gamma_f by family: BERT 100 and T5 20 are No Train No Gain's. GPT has no published value; we
# use T5's 20, the gentler decay (theta reaches theta_bar + 1% at p ~ 0.2 instead of p ~ 0.04).
DEFAULT_GAMMA_F = {"bert": 100.0, "t5": 20.0, "gpt": 20.0}
# Mixed into the seed so this method's draws are independent of other methods seeded by
# (seed, step) (selective backprop, data order).
_STREAM = 0x1A7E_D409


def keep_probability(p: float, theta_bar: float = 0.5, gamma_f: float = 100.0) -> float:
    """theta(p): the keep probability of the schedule at budget progress p."""
    return (1.0 - theta_bar) * math.exp(-gamma_f * p) + theta_bar


def drop_probabilities(depth: int, theta: float) -> np.ndarray:
    """P(drop) of layers 1..depth: (1 - theta) * l / depth."""
    return (1.0 - theta) * np.arange(1, depth + 1) / depth


def choose_active(uniforms: np.ndarray, drop_prob: np.ndarray) -> list[int]:
    """0-based ids of kept blocks (u >= P(drop)); the first block if all would be dropped."""
    kept = np.flatnonzero(uniforms[: len(drop_prob)] >= drop_prob)
    return [int(i) for i in kept] if kept.size else [0]


def step_uniforms(seed: int, step: int, n: int) -> np.ndarray:
    """The n uniform numbers of one optimizer step, a pure function of (seed, step)."""
    return np.random.default_rng([_STREAM, seed % 2**32, step]).random(n)


def sample_active(
    depths: Mapping[str, int], theta: float, seed: int, step: int
) -> dict[str, list[int]]:
    """Active block ids per stack for one step; stacks share the uniform number of each id."""
    u = step_uniforms(seed, step, max(depths.values()))
    return {s: choose_active(u, drop_probabilities(n, theta)) for s, n in depths.items()}


def expected_active(depth: int, theta: float) -> float:
    """Exact expected number of active blocks, the never-empty rule included."""
    q = drop_probabilities(depth, theta)
    return float(np.sum(1.0 - q) + np.prod(q))


class LayerDrop(Method):
    """Resample the active blocks of every stack each optimizer step."""

    name = "layer_drop"
    leaves_parameters_unused = True  # the blocks not in plan.active get no gradient
    incompatible = ("layer_stacking",)

    @dataclass
    class Options:
        theta_bar: float = 0.5  # keep probability the schedule decays to
        gamma_f: float | None = None  # decay rate; None = family default (BERT 100, T5/GPT 20)

    def __init__(self, theta_bar: float = 0.5, gamma_f: float = 100.0, seed: int = 0) -> None:
        if not 0.0 < theta_bar <= 1.0:
            raise ValueError(f"methods.layer_drop.theta_bar must be in (0, 1], got {theta_bar}")
        if gamma_f < 0:
            raise ValueError(f"methods.layer_drop.gamma_f must be >= 0, got {gamma_f}")
        self.theta_bar = theta_bar
        self.gamma_f = gamma_f
        self.seed = seed

    @classmethod
    def from_options(cls, options: Options, context: RunContext) -> LayerDrop:
        gamma_f = options.gamma_f
        if gamma_f is None:
            gamma_f = DEFAULT_GAMMA_F[context.shape.family]
        seed = context.config.run.seed if context.config is not None else 0
        return cls(options.theta_bar, gamma_f, seed)

    def theta(self, p: float) -> float:
        return keep_probability(p, self.theta_bar, self.gamma_f)

    def plan_step(self, state: MethodState, plan: StepPlan) -> None:
        # Depths are read from the model each step, so growth during the run is respected.
        depths = {s: len(blocks) for s, blocks in state.model.layer_stacks().items()}
        theta = self.theta(state.clock.progress)
        active = dict(plan.active or {})
        active.update(sample_active(depths, theta, self.seed, plan.step))
        plan.active = active

    def state_dict(self) -> dict[str, Any]:
        # No state: each step's draw is a pure function of (seed, step, p). The settings are
        # saved so a resume under different ones is caught.
        return {"theta_bar": self.theta_bar, "gamma_f": self.gamma_f, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (state.get("theta_bar"), state.get("gamma_f"), state.get("seed"))
        if saved != (self.theta_bar, self.gamma_f, self.seed):
            raise ValueError(f"checkpoint dropped layers with (theta_bar, gamma_f, seed)={saved}")
