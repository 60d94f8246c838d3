"""Selective backprop (Jiang et al. 2019, "Accelerating deep learning by focusing on the biggest
losers"): back-propagate mostly the examples the model currently gets most wrong.

Candidates are forwarded without gradients; each candidate's loss (mean over its own target
tokens: masked tokens for BERT, target tokens for T5, every next token for GPT) joins a history of
the last `history` losses (5000 in the paper), and the candidate is kept with probability

    P(keep) = percentile(loss)^beta,    percentile = fraction of the history <= loss   (beta = 1)

Kept examples queue up; each optimizer step trains on the first `batch_size` of the queue, and
candidates are forwarded until the queue holds that many. With beta = 1 about half are kept, so a
step forwards ~2 batches of candidates: every such forward is charged to the clock as a forward
pass (`charge_selection=false` turns that off for the "selection for free" ablation only; it is
warned about and reported in the method's summary).

Rules this implementation fixes:
- candidates are the run's own data stream, read in order: candidate chunk c is
  `state.data.batch(c)` (a full batch, a pure function of (seed, c)); the chunk cursor is state;
- keep decisions draw from a generator seeded by (run seed, chunk), never from the global RNG;
- selection forwards run in eval mode (no dropout: the loss of the example, not of a noisy
  sub-network) with the step's active layers, in micro-batch-sized slices, and are charged so;
- the history, the queue of kept examples (tensors), the cursor and the counters are the
  method's state, so a run interrupted with a half-full queue resumes bit-exactly.
`forward_losses`, `take` and `concat` are shared with RHO-loss (rho_loss.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from budgetlm.api import Method, MethodState, RunContext, StepPlan

if TYPE_CHECKING:
    from budgetlm.train.distributed import Dist

Batch = dict[str, torch.Tensor]
_STREAM = 0x5E1B_AC4B  # keeps the keep-decision stream apart from other (seed, n) streams


# -- the pure functions ---------------------------------------------------------------------------
def percentiles(losses: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """Empirical CDF of `history` at each loss: the fraction of history values <= loss."""
    if history.numel() == 0:
        raise ValueError("percentiles need a non-empty history")
    return (history[None, :] <= losses[:, None]).float().mean(1)


def keep_probabilities(losses: torch.Tensor, history: torch.Tensor, beta: float) -> torch.Tensor:
    return percentiles(losses, history).pow(beta)


def select(
    losses: torch.Tensor, history: torch.Tensor, beta: float, uniforms: torch.Tensor
) -> torch.Tensor:
    """Boolean keep mask: example i is kept when uniforms[i] < percentile(loss_i)^beta."""
    return uniforms < keep_probabilities(losses, history, beta)


def chunk_uniforms(seed: int, chunk: int, n: int) -> torch.Tensor:
    """The n uniform numbers deciding candidate chunk `chunk`, a pure function of (seed, chunk)."""
    u = np.random.default_rng([_STREAM, seed % 2**32, chunk]).random(n)
    return torch.from_numpy(u).float()


class LossHistory:
    """A ring buffer of the last `size` losses (bounded memory, checkpointable)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"history size must be >= 1, got {size}")
        self.buffer = torch.zeros(size, dtype=torch.float32)
        self.filled = 0
        self.pos = 0

    def add(self, losses: torch.Tensor) -> None:
        values = losses.detach().float().cpu().reshape(-1)
        size, n = len(self.buffer), len(values)
        if n > size:  # only the newest `size` survive; writing them once keeps indices unique
            self.pos = (self.pos + n - size) % size
            values, n = values[-size:], size
        self.buffer[(self.pos + torch.arange(n)) % size] = values
        self.pos = (self.pos + n) % size
        self.filled = min(self.filled + n, size)

    def values(self) -> torch.Tensor:
        return self.buffer[: self.filled]

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.clone(), "filled": self.filled, "pos": self.pos}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["buffer"]) != len(self.buffer):
            raise ValueError(
                f"checkpoint has a loss history of {len(state['buffer'])}, "
                f"this run {len(self.buffer)}"
            )
        self.buffer = state["buffer"].clone().float()
        self.filled, self.pos = int(state["filled"]), int(state["pos"])


def note_uncharged(state: MethodState, setting: str) -> None:
    """Record the "selection for free" ablation in the run's warnings (checkpointed with the
    state and copied into summary.json), once."""
    note = f"{setting}: batch-selection forwards were NOT charged to the budget (ablation)"
    notes = state.info.setdefault("warnings", [])
    if note not in notes:
        notes.append(note)


# -- dict batches ---------------------------------------------------------------------------------
def batch_size_of(batch: Mapping[str, torch.Tensor]) -> int:
    return 0 if not batch else len(batch["example_id"])


def take(batch: Mapping[str, torch.Tensor], index: torch.Tensor | slice) -> Batch:
    """Rows `index` (a slice, a bool mask or integer ids) of every tensor of a dict batch."""
    return {k: v[index] for k, v in batch.items()}


class SelectedBatch:
    """A step's selected examples, handed to the loop one micro-batch at a time.

    The loop calls `batch_rows` once per micro-batch of this rank, in order; each call takes
    the next rows. Every rank holds the whole selection and starts at its own share.
    """

    def __init__(self) -> None:
        self.rows: Batch = {}
        self._next = 0

    def load(self, rows: Batch, dist: Dist) -> None:
        self.rows, self._next = rows, dist.share(batch_size_of(rows)).start

    def next(self, size: int) -> Batch:
        start, self._next = self._next, self._next + size
        return take(self.rows, slice(start, start + size))


def concat(batches: Sequence[Mapping[str, torch.Tensor]]) -> Batch:
    batches = [b for b in batches if batch_size_of(b)]
    if not batches:
        return {}
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


@torch.no_grad()
def forward_losses(
    state: MethodState, batch: Mapping[str, torch.Tensor], active, micro: int
) -> tuple[torch.Tensor, list[int]]:
    """Per-example losses of `batch` (CPU float32) without gradients, in eval mode, forwarded in
    slices of at most `micro` examples; also returns the slice sizes (one forward pass each).

    Under data parallelism each rank forwards its share of the rows and the losses are gathered,
    so every rank returns all of them; the sizes are those one device would forward (what the
    clock charges: the global work, as for the training batch).
    """
    model = state.model
    was_training = model.training
    model.eval()
    n = batch_size_of(batch)
    mine = take(batch, state.dist.share(n))
    losses = [torch.zeros(0)]
    try:
        for start in range(0, batch_size_of(mine), micro):
            part = {k: v[start : start + micro].to(state.device) for k, v in mine.items()}
            with state.autocast():
                out = model(part, active=active)
            losses.append(out.per_example_loss.float().cpu())
    finally:
        model.train(was_training)
    sizes = [min(micro, n - start) for start in range(0, n, micro)]
    return state.dist.gather_rows(torch.cat(losses), n), sizes


# -- the hook -------------------------------------------------------------------------------------
class SelectiveBackprop(Method):
    """Fill every training batch with examples kept by the loss-percentile rule."""

    name = "selective_backprop"
    incompatible = ("rho_loss",)

    @dataclass
    class Options:
        beta: float = 1.0  # keep probability = percentile^beta; larger keeps fewer, harder ones
        history: int = 5000  # losses remembered for the percentile
        charge_selection: bool = True  # false: the "selection for free" ablation (warned)

    MAX_CHUNKS_PER_STEP = 1000  # a guard: beta so large that almost nothing is ever kept

    def __init__(
        self, beta: float = 1.0, history: int = 5000, charge_selection: bool = True, seed: int = 0
    ) -> None:
        if beta < 0:
            raise ValueError(f"methods.selective_backprop.beta must be >= 0, got {beta}")
        if history < 1:
            raise ValueError(f"methods.selective_backprop.history must be >= 1, got {history}")
        self.beta = beta
        self.charge_selection = charge_selection
        self.seed = seed
        self.history = LossHistory(history)
        self.pending: Batch = {}
        self.next_chunk = 0
        self.stats = {"forwarded": 0, "kept": 0, "forwarded_loss": 0.0, "kept_loss": 0.0}
        self.uncharged_flops = 0.0
        self._selected = SelectedBatch()
        if not charge_selection:
            warnings.warn(
                "selective_backprop.charge_selection=false: selection forwards are NOT charged "
                "to the budget (an ablation; the run's summary records it)",
                stacklevel=2,
            )

    @classmethod
    def from_options(cls, options: Options, context: RunContext) -> SelectiveBackprop:
        seed = context.config.run.seed if context.config is not None else 0
        return cls(options.beta, options.history, options.charge_selection, seed)

    def on_start(self, state: MethodState) -> None:
        if not self.charge_selection:
            note_uncharged(state, "selective_backprop.charge_selection=false")

    # -- events --------------------------------------------------------------------------------
    def plan_step(self, state: MethodState, plan: StepPlan) -> None:
        from budgetlm.budget.work import forward_pass

        micro = plan.batch_size // plan.micro_batches
        chunks = 0
        while batch_size_of(self.pending) < plan.batch_size:
            if chunks >= self.MAX_CHUNKS_PER_STEP:
                raise RuntimeError(
                    f"selective_backprop forwarded {chunks} candidate batches without filling "
                    f"one training batch; lower methods.selective_backprop.beta ({self.beta})"
                )
            candidates = state.data.batch(self.next_chunk)
            losses, sizes = forward_losses(state, candidates, plan.active, micro)
            passes = [forward_pass(state.model.shape, n, plan.active) for n in sizes]
            if self.charge_selection:
                plan.extra_passes.extend(passes)
            else:
                self.uncharged_flops += sum(p.flops for p in passes)
            self.history.add(losses)
            u = chunk_uniforms(self.seed, self.next_chunk, len(losses))
            keep = select(losses, self.history.values(), self.beta, u)
            self.pending = concat([self.pending, take(candidates, keep)])
            self.next_chunk += 1
            chunks += 1
            self.stats["forwarded"] += len(losses)
            self.stats["kept"] += int(keep.sum())
            self.stats["forwarded_loss"] += float(losses.sum())
            self.stats["kept_loss"] += float(losses[keep].sum())
        self._selected.load(take(self.pending, slice(0, plan.batch_size)), state.dist)
        self.pending = take(self.pending, slice(plan.batch_size, None))

    def batch_rows(self, state: MethodState, plan: StepPlan, start: int, stop: int) -> Batch:
        return self._selected.next(stop - start)

    # -- reporting and state -------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        s = self.stats
        return {
            "charge_selection": self.charge_selection,
            "uncharged_selection_flops": self.uncharged_flops,
            "candidates_forwarded": s["forwarded"],
            "candidates_kept": s["kept"],
            "keep_rate": s["kept"] / max(1, s["forwarded"]),
            "mean_candidate_loss": s["forwarded_loss"] / max(1, s["forwarded"]),
            "mean_kept_loss": s["kept_loss"] / max(1, s["kept"]),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "seed": self.seed,
            "charge_selection": self.charge_selection,
            "history": self.history.state_dict(),
            "pending": {k: v.clone() for k, v in self.pending.items()},
            "next_chunk": self.next_chunk,
            "stats": dict(self.stats),
            "uncharged_flops": self.uncharged_flops,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (state["beta"], state["seed"], state["charge_selection"])
        if saved != (self.beta, self.seed, self.charge_selection):
            raise ValueError(
                f"checkpoint selected with (beta, seed, charge_selection)={saved}, this run with "
                f"{(self.beta, self.seed, self.charge_selection)}"
            )
        self.history.load_state_dict(state["history"])
        self.pending = {k: v.clone() for k, v in state["pending"].items()}
        self.next_chunk = int(state["next_chunk"])
        self.stats = {
            k: (int(v) if k in ("forwarded", "kept") else float(v))
            for k, v in state["stats"].items()
        }
        self.uncharged_flops = float(state["uncharged_flops"])
