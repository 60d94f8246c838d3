"""Deterministic batches: a batch is a pure function of (seed, step).

Resuming therefore needs only the step number, not an iterator's hidden state. The order of
examples is an endless run of epochs, each a fresh permutation of all windows drawn from
``default_rng([seed, epoch])``; step ``s`` takes positions ``s*B .. s*B + B - 1`` of that run.
Example ``j`` of a step's global batch draws its randomness (masks, spans) from
``default_rng([seed, step, j])``, so splitting the batch into micro-batches or across ranks
gives exactly the same examples as building it whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .objectives import Objective

# Salt for evaluation generators, far from any training step number.
_EVAL_SALT = 2**31


class _Rngs(Sequence):
    """Generators created on first use: causal LM never draws, so it never pays for them."""

    def __init__(self, make, n: int):
        self._make = make
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(self._n))]
        if not -self._n <= j < self._n:
            raise IndexError(j)
        return self._make(j % self._n)


class BatchStream:
    """Training batches of ``batch_size`` examples from ``tokens`` for ``objective``."""

    def __init__(self, tokens: np.ndarray, objective: Objective, batch_size: int, seed: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.tokens = tokens
        self.objective = objective
        self.batch_size = batch_size
        self.seed = seed
        self.num_examples = objective.num_examples(len(tokens))
        if self.num_examples == 0:
            raise ValueError(
                f"the token split has {len(tokens)} tokens, fewer than one example of "
                f"{objective.name} needs ({objective.raw_length}); use a shorter seq_len or "
                "more data"
            )
        self._perms: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            # A batch spans at most two epochs (or many, if the split is tiny); keep a few.
            if len(self._perms) >= 4:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def example_ids(self, step: int) -> np.ndarray:
        """Window ids of the global batch at ``step``, shape (batch_size,)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        positions = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.num_examples)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            out[here] = self._permutation(int(epoch))[offsets[here]]
        return out

    def batch(self, step: int, start: int = 0, stop: int | None = None) -> dict[str, torch.Tensor]:
        """Examples at positions [start, stop) of the global batch of ``step``."""
        stop = self.batch_size if stop is None else stop
        if not 0 <= start < stop <= self.batch_size:
            raise ValueError(
                f"need 0 <= start < stop <= batch_size={self.batch_size}, got {start}, {stop}"
            )
        ids = self.example_ids(step)[start:stop]
        seed = self.seed

        def make(k: int) -> np.random.Generator:
            return np.random.default_rng([seed, step, start + k])

        return self.objective.make_batch(self.tokens, ids, _Rngs(make, stop - start))

    def epochs_at(self, step: int) -> float:
        """Epochs of training data consumed after ``step`` steps."""
        return step * self.batch_size / self.num_examples


def eval_batches(
    tokens: np.ndarray,
    objective: Objective,
    batch_size: int,
    max_batches: int,
    seed: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """Fixed held-out batches: the first examples in order, with masks fixed by ``seed``.

    Returns up to ``max_batches`` batches; fewer when the split is small, and then the last
    batch may hold fewer than ``batch_size`` examples (weight losses by ``len(example_id)``).
    """
    n = objective.num_examples(len(tokens))
    if n == 0:
        raise ValueError(
            f"the evaluation split has {len(tokens)} tokens, fewer than one example of "
            f"{objective.name} needs ({objective.raw_length}); raise data.val_fraction or "
            "data.heldout_min_documents, or shorten seq_len"
        )
    if batch_size < 1 or max_batches < 1:
        raise ValueError("batch_size and max_batches must be >= 1")
    total = min(n, batch_size * max_batches)
    batches = []
    for first in range(0, total, batch_size):
        ids = np.arange(first, min(first + batch_size, total), dtype=np.int64)
        rngs = _Rngs(
            lambda k, ids=ids: np.random.default_rng([seed, _EVAL_SALT, int(ids[k])]), len(ids)
        )
        batches.append(objective.make_batch(tokens, ids, rngs))
    return batches


def _eval_rng(seed: int, example_id: int) -> np.random.Generator:
    return np.random.default_rng([seed, _EVAL_SALT, example_id])
