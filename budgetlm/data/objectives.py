"""Pre-training objectives: how a window of the token stream becomes a training example.

An objective cuts the stream into non-overlapping windows (example ``i`` reads
``stream[i * stride : i * stride + raw_length]``) and turns a list of window ids into a batch.
All the randomness of one example comes from that example's own ``np.random.Generator``, so an
example looks the same whichever micro-batch, rank or batch size it lands in.

Every batch is a dict of int64 tensors that includes ``example_id`` (B,), the window index:
stable across runs on the same prepared data (RHO-loss keys its irreducible losses on it).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .tokenizer import Tokenizer

OBJECTIVES = ("causal_lm", "mlm", "span_corruption")
IGNORE_INDEX = -100


class Objective:
    """Base class: window geometry plus ``make_batch``."""

    name: str = ""

    def __init__(self, tokenizer: Tokenizer, seq_len: int, raw_length: int, stride: int):
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.raw_length = raw_length  # stream tokens read per example
        self.stride = stride  # distance between the starts of consecutive windows
        self.targets_length = seq_len

    def num_examples(self, n_tokens: int) -> int:
        """How many whole windows a stream of ``n_tokens`` holds."""
        if n_tokens < self.raw_length:
            return 0
        return (n_tokens - self.raw_length) // self.stride + 1

    def windows(self, stream: np.ndarray, example_ids: np.ndarray) -> np.ndarray:
        """The raw windows of ``example_ids`` as an int64 (B, raw_length) array."""
        ids = np.asarray(example_ids, dtype=np.int64).reshape(-1)
        n = self.num_examples(len(stream))
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise IndexError(f"example ids must be in [0, {n}), got {ids.min()}..{ids.max()}")
        starts = ids * self.stride
        out = np.empty((ids.size, self.raw_length), dtype=np.int64)
        flat = np.asarray(stream)  # a plain view: slicing the memmap subclass is slower
        for row, start in enumerate(starts):  # contiguous slices: cheap on a memmap
            out[row] = flat[start : start + self.raw_length]
        return out

    def make_batch(
        self,
        stream: np.ndarray,
        example_ids: np.ndarray,
        rngs: Sequence[np.random.Generator],
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seq_len={self.seq_len}, raw_length={self.raw_length})"


class CausalLM(Objective):
    """GPT next-token prediction: windows of seq_len + 1 tokens at stride seq_len."""

    name = "causal_lm"

    def __init__(self, tokenizer: Tokenizer, seq_len: int):
        super().__init__(tokenizer, seq_len, raw_length=seq_len + 1, stride=seq_len)

    def make_batch(self, stream, example_ids, rngs):
        win = self.windows(stream, example_ids)
        return {
            "input_ids": torch.from_numpy(win[:, :-1].copy()),
            "labels": torch.from_numpy(win[:, 1:].copy()),
            "example_id": _ids_tensor(example_ids),
        }


class MaskedLM(Objective):
    """BERT masked LM: select ~mask_prob of the non-special positions (at least one per
    example); of those, mask_token_frac become [MASK], random_token_frac a random non-special
    token, the rest stay. Labels are -100 except at the selected positions."""

    name = "mlm"

    def __init__(
        self,
        tokenizer: Tokenizer,
        seq_len: int,
        mask_prob: float = 0.15,
        mask_token_frac: float = 0.8,
        random_token_frac: float = 0.1,
    ):
        super().__init__(tokenizer, seq_len, raw_length=seq_len, stride=seq_len)
        if tokenizer.mask_id is None:
            raise ValueError(
                f"mlm needs a tokenizer with a mask token; {tokenizer.kind!r} has none "
                "(use 'wordpiece')"
            )
        if not 0 < mask_prob <= 1:
            raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
        if mask_token_frac < 0 or random_token_frac < 0 or mask_token_frac + random_token_frac > 1:
            raise ValueError("mask_token_frac and random_token_frac must be >= 0 and sum to <= 1")
        self.mask_prob = mask_prob
        self.mask_token_frac = mask_token_frac
        self.random_token_frac = random_token_frac
        special = np.zeros(tokenizer.vocab_size, dtype=bool)
        special[sorted(tokenizer.special_ids)] = True
        self._is_special = special
        self._ordinary_ids = np.flatnonzero(~special)  # what "random token" draws from

    def make_batch(self, stream, example_ids, rngs):
        win = self.windows(stream, example_ids)
        b, n = win.shape
        _check_rngs(rngs, b)
        # Each example draws one (3, n) block of uniforms from its own generator: which
        # positions are selected, what happens to them, and which random token replaces them.
        u = np.empty((b, 3, n))
        for row in range(b):
            u[row] = rngs[row].random((3, n))
        select_u, action_u, pick_u = u[:, 0], u[:, 1], u[:, 2]
        candidate = ~self._is_special[win]
        chosen = candidate & (select_u < self.mask_prob)
        empty = np.flatnonzero(~chosen.any(axis=1) & candidate.any(axis=1))
        if empty.size:
            # At least one target per example: otherwise its loss is undefined (0/0).
            first = np.where(candidate[empty], select_u[empty], np.inf).argmin(axis=1)
            chosen[empty, first] = True
        to_mask = chosen & (action_u < self.mask_token_frac)
        to_random = (
            chosen
            & (action_u >= self.mask_token_frac)
            & (action_u < self.mask_token_frac + self.random_token_frac)
        )
        n_ordinary = len(self._ordinary_ids)
        pick = np.minimum((pick_u * n_ordinary).astype(np.int64), n_ordinary - 1)
        inputs = np.where(to_mask, self.tokenizer.mask_id, win)
        inputs = np.where(to_random, self._ordinary_ids[pick], inputs)
        labels = np.where(chosen, win, IGNORE_INDEX)
        return {
            "input_ids": torch.from_numpy(inputs),
            "labels": torch.from_numpy(labels),
            "example_id": _ids_tensor(example_ids),
        }


def span_corruption_lengths(
    inputs_length: int, noise_density: float = 0.15, mean_span: float = 3.0
) -> tuple[int, int]:
    """(raw_length, targets_length) so that corrupting raw_length tokens gives exactly
    ``inputs_length`` input tokens (eos included) and targets_length target tokens.

    The T5 recipe (``random_spans_helper``): the longest raw window whose corrupted input fits;
    512 -> (568, 114) at density 0.15, mean span 3.
    """
    if not 0 < noise_density < 1 or mean_span <= 0:
        raise ValueError("need 0 < noise_density < 1 and mean_span > 0")

    def lengths(raw: int) -> tuple[int, int]:
        noise, spans = _noise_counts(raw, noise_density, mean_span)
        # inputs: kept tokens + one sentinel per span + eos; targets: sentinel + span per span + eos
        return raw - noise + spans + 1, noise + spans + 1

    raw = inputs_length
    while lengths(raw + 1)[0] <= inputs_length:
        raw += 1
    got_inputs, targets = lengths(raw)
    if got_inputs != inputs_length:
        raise ValueError(
            f"span corruption cannot produce exactly {inputs_length} input tokens (too short)"
        )
    return raw, targets


def _noise_counts(length: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    noise = min(max(round(length * noise_density), 1), length - 1)
    spans = max(round(noise / mean_span), 1)
    return noise, spans


class SpanCorruption(Objective):
    """T5 span corruption: noise spans in the input become sentinels; the targets list each
    sentinel followed by the tokens it hides, then eos. ``seq_len`` is the encoder length."""

    name = "span_corruption"

    def __init__(
        self,
        tokenizer: Tokenizer,
        seq_len: int,
        noise_density: float = 0.15,
        mean_span: float = 3.0,
    ):
        raw_length, targets_length = span_corruption_lengths(seq_len, noise_density, mean_span)
        super().__init__(tokenizer, seq_len, raw_length=raw_length, stride=raw_length)
        self.targets_length = targets_length
        self.noise_density = noise_density
        self.mean_span = mean_span
        self.n_noise, self.n_spans = _noise_counts(raw_length, noise_density, mean_span)
        if tokenizer.eos_id is None or tokenizer.pad_id is None:
            raise ValueError(
                f"span_corruption needs eos and pad tokens; {tokenizer.kind!r} lacks them"
            )
        if len(tokenizer.sentinel_ids) < self.n_spans:
            raise ValueError(
                f"span_corruption at seq_len={seq_len} needs {self.n_spans} sentinel tokens, "
                f"tokenizer {tokenizer.kind!r} has {len(tokenizer.sentinel_ids)} (use 'unigram')"
            )
        self._sentinels = np.asarray(tokenizer.sentinel_ids, dtype=np.int64)
        self._span_flags = np.tile([False, True], self.n_spans)  # kept, noise, kept, noise, ...

    def noise_mask(self, rng: np.random.Generator) -> np.ndarray:
        """Boolean (raw_length,) mask of n_spans noise spans, alternating with kept spans and
        starting with a kept one (as T5's ``random_spans_noise_mask``)."""
        noise_lengths = _random_segmentation(self.n_noise, self.n_spans, rng)
        keep_lengths = _random_segmentation(self.raw_length - self.n_noise, self.n_spans, rng)
        lengths = np.stack([keep_lengths, noise_lengths], axis=1).reshape(-1)
        return np.repeat(self._span_flags, lengths)

    def make_batch(self, stream, example_ids, rngs):
        win = self.windows(stream, example_ids)
        b = len(win)
        _check_rngs(rngs, b)
        inputs = np.empty((b, self.seq_len), dtype=np.int64)
        labels = np.empty((b, self.targets_length), dtype=np.int64)
        for row in range(b):
            rng = rngs[row]
            noise = self.noise_mask(rng)
            inputs[row] = self._corrupt(win[row], noise)
            labels[row] = self._corrupt(win[row], ~noise)
        decoder_inputs = np.empty_like(labels)
        decoder_inputs[:, 0] = self.tokenizer.pad_id  # T5's decoder start token is pad
        decoder_inputs[:, 1:] = labels[:, :-1]
        return {
            "input_ids": torch.from_numpy(inputs),
            "decoder_input_ids": torch.from_numpy(decoder_inputs),
            "labels": torch.from_numpy(labels),
            "example_id": _ids_tensor(example_ids),
        }

    def _corrupt(self, tokens: np.ndarray, drop: np.ndarray) -> np.ndarray:
        """Replace each run of ``drop`` positions by the next sentinel; append eos."""
        starts = drop & ~np.concatenate([[False], drop[:-1]])
        out = np.where(starts, self._sentinels[np.cumsum(starts) - 1], tokens)
        keep = ~drop | starts
        return np.concatenate([out[keep], [self.tokenizer.eos_id]])


def _random_segmentation(n_items: int, n_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Split n_items into n_segments positive lengths, uniformly over all such splits."""
    cuts = np.sort(rng.choice(n_items - 1, size=n_segments - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [n_items]]))


def _check_rngs(rngs: Sequence[np.random.Generator], n: int) -> None:
    if len(rngs) != n:
        raise ValueError(f"need one Generator per example: {n} examples, {len(rngs)} generators")


def _ids_tensor(example_ids: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(example_ids, dtype=np.int64).reshape(-1).copy())


_CLASSES: dict[str, type[Objective]] = {
    "causal_lm": CausalLM,
    "mlm": MaskedLM,
    "span_corruption": SpanCorruption,
}


def make_objective(name: str, tokenizer: Tokenizer, seq_len: int, **params: Any) -> Objective:
    """Build the objective ``name`` (see OBJECTIVES) with its parameters."""
    if name not in _CLASSES:
        close = difflib.get_close_matches(name, OBJECTIVES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown objective {name!r}, expected one of {OBJECTIVES}{hint}")
    cls = _CLASSES[name]
    allowed = list(inspect.signature(cls.__init__).parameters)[3:]  # after self, tokenizer, seq_len
    for key in params:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"objective {name!r} has no parameter {key!r} (has {allowed}){hint}")
    return cls(tokenizer, seq_len, **params)
