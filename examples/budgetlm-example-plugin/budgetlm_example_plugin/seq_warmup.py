"""`method=seq_warmup`: sequence-length warm-up, a budgetlm method from outside the package.

Method card
-----------
**What.** Train on short sequences early and lengthen them as the budget is spent: the first
`start_len` tokens of every training window at p = 0, the full `seq_len` from p = `until` on.
Each step is charged at the length it really trains on (`StepPlan.seq_len`), so a short step
costs less of the budget and the run takes more steps in its warm-up. Held-out evaluation is
always at the full length.

**Source.** Li, Zhang & He, "The Stability-Efficiency Dilemma: Investigating Sequence Length
Warmup for Training GPT Models", NeurIPS 2022 (arXiv:2108.06084); the implementation is
DeepSpeed's "curriculum learning" (`curriculum_type: seqlen`). They find that long sequences
early in training drive the extreme gradient variance behind training instability; starting
short let GPT-2 (117M, 1.5B) train stably with 8x the batch size and 4x the learning rate, and
reach the baseline's zero-shot quality with up to 2.2x fewer tokens. Their recipe, and what
this method keeps of it:

- truncation: a step at length L trains on the first L tokens of each window and drops the rest
  (no re-packing), exactly as here;
- start length: DeepSpeed recommends 8 for million-scale models, 64 for billion-scale ones; the
  default here is seq_len / 8, at least 8;
- pacing: DeepSpeed's `fixed_linear` raises the length linearly in steps from the start length
  to the full one, rounded down to a multiple of 8; from a start of 8 against 1024 that is a
  line from (almost) zero. Here the length grows linearly in budget progress, from 0 at p = 0 to
  seq_len at p = `until`, and is rounded *down to a doubling of the start length* (never below
  it): with seq_len 128 and start 16, steps train at 16 tokens up to p = until/4, then at 32 up
  to until/2, at 64 up to `until` and at 128 from there on. The run trains at most
  log2(seq_len / start_len) + 1 lengths, each a shape the RST table must price (`shapes_used`),
  instead of one per multiple of 8;
- duration: the paper tunes it per task (the longest warm-up that shows no validation-perplexity
  fluctuation over the first few multiples of the LR warm-up); it gives no fraction that
  transfers. `until = 0.3` is this package's default, the point at which budgetlm's layer
  stacking also reaches full depth; tune it as a hyperparameter;
- the paper also moves the LR decay to a token clock so short steps do not decay it early:
  budgetlm's schedules are already functions of budget progress, which short steps advance less.

**Families.** GPT only (`families`): a prefix of a causal-LM window is itself a causal-LM
example (next-token targets on every position), so truncating it is sound. A masked-LM example
is built with at least one target, which its prefix can lose (a loss of 0/0), and T5's span
corruption builds encoder inputs and decoder targets together (cutting one orphans sentinels of
the other).

**Refused combinations** (`incompatible`).
- `selective_backprop` and `rho_loss` choose each step's examples by their loss over the full
  length, while the step would train on their prefixes: a ranking of other examples than the
  ones trained on. (Charging would be right: they supply their rows through
  `Method.batch_rows`, and every `before_batch`, this cut included, runs on those.)
- `staged`: a growth during the warm-up trains the grown model at short lengths, shapes neither
  method declares (`shapes_used` sees one method's options at a time), so an RST budget would
  fail at the growth instead of refusing the run before it starts.

**Resume.** The length of a step is a pure function of the progress at which it starts
(`state.clock.progress`, restored with the clock), so a resumed run plans the same lengths. The
method's only state is the count of steps trained at each length (reported in summary.json);
it is checkpointed, with the stage lengths and points so that a resume under other settings is
refused.

The transformation is the pure functions below (`stage_lengths`, `stage_points`, `length_at`,
`truncate`); `SequenceLengthWarmup` is the thin hook that calls them (Composer style).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from budgetlm.api import Method, MethodState, RunContext, StepPlan

# The keys of a causal-LM batch (budgetlm/data/objectives.py:CausalLM) that hold one entry per
# position; `example_id` (one per window) is left alone.
SEQUENCE_KEYS = ("input_ids", "labels", "attention_mask")


# -- the transformation: pure functions ---------------------------------------------------------


def default_start_len(seq_len: int) -> int:
    """seq_len / 8, at least 8 (DeepSpeed's smallest recommended start), below seq_len."""
    return min(max(8, seq_len // 8), seq_len)


def stage_lengths(seq_len: int, start_len: int) -> list[int]:
    """The lengths trained, shortest first: start_len doubled until seq_len, then seq_len."""
    if not 1 <= start_len < seq_len:
        raise ValueError(
            f"methods.seq_warmup.start_len must be in 1..{seq_len - 1} (the model's seq_len is "
            f"{seq_len}), got {start_len}"
        )
    lengths = [start_len]
    while lengths[-1] * 2 < seq_len:
        lengths.append(lengths[-1] * 2)
    return [*lengths, seq_len]


def check_until(until: float) -> float:
    if not 0.0 < until < 1.0:
        raise ValueError(f"methods.seq_warmup.until must be in (0, 1), got {until}")
    return until


def stage_points(lengths: Sequence[int], until: float) -> list[float]:
    """Progress at which each stage after the first begins: where the linear pacing (0 at p = 0,
    the last length at p = `until`) reaches its length."""
    check_until(until)
    return [until * n / lengths[-1] for n in lengths[1:]]


def length_at(p: float, lengths: Sequence[int], points: Sequence[float]) -> int:
    """The sequence length of a step that starts at progress p (a stage begins at its point)."""
    return lengths[bisect.bisect_right(points, p)]


def truncate(batch: Mapping[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
    """The batch with every per-position tensor cut to its first `length` positions."""
    out = dict(batch)
    for key in SEQUENCE_KEYS:
        if key in out and out[key].shape[1] > length:
            out[key] = out[key][:, :length].contiguous()
    return out


# -- the hook -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeqWarmupOptions:
    start_len: int | None = None
    """the first stage's sequence length; default: seq_len / 8, at least 8"""
    until: float = 0.3
    """budget progress at which the full sequence length is reached"""


class SequenceLengthWarmup(Method):
    """Plan each step at its stage's length, cut the batches to it, count the steps."""

    name = "seq_warmup"
    Options = SeqWarmupOptions
    # Causal LM only: a window's prefix is a valid example there, not for MLM or span
    # corruption (see the method card above).
    families = ("gpt",)
    # Methods that replace the batches it cuts, or grow the model into unpriced short shapes.
    incompatible = ("selective_backprop", "rho_loss", "staged")

    def __init__(self, lengths: Sequence[int], points: Sequence[float]) -> None:
        self.lengths = list(lengths)
        self.points = list(points)
        self.steps_at = {n: 0 for n in self.lengths}  # steps charged at each length
        self._planned = self.lengths[-1]  # the length of the step under way

    @staticmethod
    def stages(options: SeqWarmupOptions, seq_len: int) -> tuple[list[int], list[float]]:
        if options.start_len is None and seq_len <= 8:
            raise ValueError(f"method seq_warmup: seq_len {seq_len} is too short to warm up")
        start = options.start_len if options.start_len is not None else default_start_len(seq_len)
        lengths = stage_lengths(seq_len, start)
        return lengths, stage_points(lengths, options.until)

    @classmethod
    def from_options(cls, options: SeqWarmupOptions, context: RunContext) -> SequenceLengthWarmup:
        shape = context.shape
        if shape.family not in cls.families:
            raise ValueError(
                f"method seq_warmup truncates causal-LM windows: it supports {cls.families}, "
                f"not {shape.family!r}"
            )
        return cls(*cls.stages(options, shape.seq_len))

    @classmethod
    def event_points(cls, options: SeqWarmupOptions) -> list[float]:
        """until/4, until/2 and until: where a stage begins when seq_len / start_len is 2, 4 or
        8 (the default start_len, seq_len / 8 at least 8, for any power-of-two seq_len). The
        points depend on the model's seq_len otherwise, and this hook is not given the shape."""
        until = check_until(options.until)
        return [until / 4, until / 2, until]

    @classmethod
    def shapes_used(cls, options: SeqWarmupOptions, shape: Any) -> list[Any]:
        """Every stage's shape: the configured one at each length (what the RST table prices)."""
        lengths, _ = cls.stages(options, shape.seq_len)
        return [dataclasses.replace(shape, seq_len=n) for n in lengths]

    def plan_step(self, state: MethodState, plan: StepPlan) -> None:
        length = length_at(state.clock.progress, self.lengths, self.points)
        if length < self.lengths[-1]:
            # Another method may have shortened the step already: the shorter length wins.
            plan.seq_len = length if plan.seq_len is None else min(plan.seq_len, length)
        self._planned = length

    def before_batch(
        self, state: MethodState, plan: StepPlan, batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        # Cut to what the step is charged for, whoever set it.
        return batch if plan.seq_len is None else truncate(batch, plan.seq_len)

    def on_progress(self, state: MethodState, p: float) -> None:
        self.steps_at[self._planned] += 1  # the step was charged: count it

    def summary(self) -> dict[str, Any]:
        return {
            "lengths": self.lengths,
            "points": [round(p, 6) for p in self.points],
            "steps_at_length": {str(n): k for n, k in self.steps_at.items()},
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "lengths": self.lengths,
            "points": self.points,
            "steps_at_length": [self.steps_at[n] for n in self.lengths],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (list(state["lengths"]), list(state["points"])) != (self.lengths, self.points):
            raise ValueError(
                f"checkpoint warmed up over lengths {state['lengths']} at {state['points']}, "
                f"this run has {self.lengths} at {self.points}"
            )
        self.steps_at = dict(zip(self.lengths, state["steps_at_length"], strict=True))
