"""Unigram and bigram count models: the regime references a baseline's held-out loss is read
against (docs/compare.md, "Regime references").

Pure numpy, no torch, so `budgetlm report` can import it. Every score is a mean negative
log-likelihood in nats per predicted token, the unit of the models' held-out loss.

Estimators:

- **unigram**: add-one (Laplace) smoothing over the whole vocabulary,
  ``p(w) = (c(w) + 1) / (N + V)``: every id gets mass, so no held-out token scores infinity.
- **bigram**: *interpolated absolute discounting* (Ney, Essen & Kneser 1994), interpolated with
  that unigram::

      p(w | v) = max(c(v, w) - D, 0) / c(v)  +  D * T(v) / c(v) * p_uni(w)    if c(v) > 0
      p(w | v) = p_uni(w)                                                       if c(v) = 0

  where ``c(v)`` counts ``v`` as a history (a token with a successor), ``T(v)`` is the number of
  distinct successors of ``v`` and ``D = n1 / (n1 + 2 n2)`` is Ney's closed-form discount from
  the number of pair types seen once (n1) and twice (n2), clipped to [0.1, 0.9]. It is a proper
  distribution for every history, needs no tuning data, and on natural text it beats the
  unigram it backs off to (the tests check this on the fixture corpus). Kneser-Ney would replace
  ``p_uni`` by continuation counts; keeping the plain unigram makes the bigram "the unigram plus
  what adjacent pairs add", which is what the reference is meant to say.

Counting is vectorised: a pair ``(v, w)`` is the int64 code ``v * V + w``; the distinct codes
and their counts come from one sort (``np.unique``), and held-out pairs are looked up with
``np.searchsorted``, so memory is O(tokens), never O(V^2) (V is up to ~50k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_DISCOUNT, MAX_DISCOUNT = 0.1, 0.9
_FALLBACK_DISCOUNT = 0.75  # too few pairs for count-of-counts: the textbook value


def _as_ids(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    ids = np.asarray(tokens).astype(np.int64, copy=False).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must be in [0, {vocab_size}), got {ids.min()}..{ids.max()}")
    return ids


# -- the causal-LM prediction targets ------------------------------------------------------------


def causal_lm_windows(n_tokens: int, seq_len: int) -> int:
    """How many windows `CausalLM` cuts from ``n_tokens``: seq_len + 1 raw tokens at stride
    seq_len (consecutive windows share one token)."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    return 0 if n_tokens < seq_len + 1 else (n_tokens - seq_len - 1) // seq_len + 1


def causal_lm_pairs(
    tokens: np.ndarray, seq_len: int, max_windows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(previous token, predicted token) of every target `CausalLM` scores in the first
    ``max_windows`` windows of ``tokens`` (all windows when None).

    Window i reads ``tokens[i*L : i*L + L + 1]`` and predicts its positions 1..L, each from the
    tokens before it in the window; its position 0 is only context. Since the next window starts
    at the previous one's last token, the targets of k windows are exactly ``tokens[1 : k*L + 1]``
    and each one's previous token is in its window: a bigram sees the same context a model does
    for every target. The tail that fills no whole window is never predicted.
    """
    n = causal_lm_windows(len(tokens), seq_len)
    if max_windows is not None:
        n = min(n, max_windows)
    stop = n * seq_len + 1
    flat = np.asarray(tokens)[:stop].astype(np.int64)
    return flat[:-1], flat[1:]


# -- models ----------------------------------------------------------------------------------------


def unigram_logprobs(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """log p(w) for every id w: add-one (Laplace) smoothing over the vocabulary."""
    counts = np.bincount(_as_ids(tokens, vocab_size), minlength=vocab_size).astype(np.float64)
    return np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)


def unigram_nll(logprobs: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-likelihood (nats per token) of ``targets`` under a unigram."""
    ids = _as_ids(targets, len(logprobs))
    if ids.size == 0:
        raise ValueError("no targets to score")
    return float(-logprobs[ids].mean())


@dataclass(frozen=True)
class Bigram:
    """Counts of an interpolated absolute-discounting bigram (see the module docstring)."""

    vocab_size: int
    unigram: np.ndarray  # (V,) log p_uni
    codes: np.ndarray  # sorted distinct pair codes v * V + w (int64)
    counts: np.ndarray  # c(v, w) of each code
    history: np.ndarray  # (V,) c(v): occurrences of v followed by a token
    types: np.ndarray  # (V,) T(v): distinct successors of v
    discount: float

    def logprobs(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """log p(nxt | prev) for aligned arrays of ids."""
        v = _as_ids(prev, self.vocab_size)
        w = _as_ids(nxt, self.vocab_size)
        if v.shape != w.shape:
            raise ValueError(f"prev and next differ in length: {v.size} vs {w.size}")
        codes = v * self.vocab_size + w
        # fit_bigram keeps at least one pair, so clipping `at` always indexes a real code.
        at = np.minimum(np.searchsorted(self.codes, codes), len(self.codes) - 1)
        pair = np.where(self.codes[at] == codes, self.counts[at], 0).astype(np.float64)
        hist = self.history[v].astype(np.float64)
        p_uni = np.exp(self.unigram[w])
        d = self.discount
        with np.errstate(divide="ignore", invalid="ignore"):  # unseen histories: the where below
            p_seen = (np.maximum(pair - d, 0.0) + d * self.types[v] * p_uni) / hist
        return np.log(np.where(hist > 0, p_seen, p_uni))


def fit_bigram(tokens: np.ndarray, vocab_size: int) -> Bigram:
    """Count the unigram and every adjacent pair of ``tokens`` (one contiguous stream)."""
    ids = _as_ids(tokens, vocab_size)
    if ids.size < 2:
        raise ValueError(f"a bigram needs at least 2 tokens, got {ids.size}")
    codes, counts = np.unique(ids[:-1] * vocab_size + ids[1:], return_counts=True)
    history = np.bincount(ids[:-1], minlength=vocab_size)
    types = np.bincount(codes // vocab_size, minlength=vocab_size)
    return Bigram(
        vocab_size=vocab_size,
        unigram=unigram_logprobs(ids, vocab_size),
        codes=codes,
        counts=counts,
        history=history,
        types=types,
        discount=ney_discount(counts),
    )


def ney_discount(pair_counts: np.ndarray) -> float:
    """D = n1 / (n1 + 2 n2) from the count-of-counts of the pair types, clipped so some mass
    always goes to the unigram (D > 0) and seen pairs keep most of theirs (D < 1)."""
    n1 = int(np.count_nonzero(pair_counts == 1))
    n2 = int(np.count_nonzero(pair_counts == 2))
    if n1 + n2 == 0:
        return _FALLBACK_DISCOUNT
    return float(np.clip(n1 / (n1 + 2 * n2), MIN_DISCOUNT, MAX_DISCOUNT))


def bigram_nll(model: Bigram, prev: np.ndarray, nxt: np.ndarray) -> float:
    """Mean negative log-likelihood (nats per token) of ``nxt`` given ``prev``."""
    if np.asarray(nxt).size == 0:
        raise ValueError("no targets to score")
    return float(-model.logprobs(prev, nxt).mean())


# -- the causal-LM references -------------------------------------------------------------------


@dataclass(frozen=True)
class CausalReferences:
    unigram: float  # nats per predicted token
    bigram: float
    train_tokens: int  # the prefix the counts came from
    targets: int  # held-out tokens scored
    discount: float


def causal_lm_references(
    train: np.ndarray,
    heldout: np.ndarray,
    vocab_size: int,
    seq_len: int,
    n_train: int,
    max_windows: int | None = None,
) -> CausalReferences:
    """Unigram and bigram fitted on the first ``n_train`` tokens of ``train`` and scored on the
    causal-LM targets of the first ``max_windows`` windows of ``heldout`` (the judged ones).

    The models see the prefix as one stream: the training windows share their boundary tokens,
    so every adjacent pair of the prefix is a pair some training window predicts.
    """
    if n_train < 2:
        raise ValueError(f"need at least 2 training tokens, got {n_train}")
    prefix = np.asarray(train)[:n_train]
    prev, nxt = causal_lm_pairs(heldout, seq_len, max_windows)
    if nxt.size == 0:
        raise ValueError(
            f"the held-out split has {len(heldout)} tokens, fewer than one window of {seq_len + 1}"
        )
    model = fit_bigram(prefix, vocab_size)
    return CausalReferences(
        unigram=unigram_nll(model.unigram, nxt),
        bigram=bigram_nll(model, prev, nxt),
        train_tokens=len(prefix),
        targets=int(nxt.size),
        discount=model.discount,
    )
