"""Objectives: window geometry, MLM masking statistics, T5 span corruption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from budgetlm.data.objectives import IGNORE_INDEX, make_objective, span_corruption_lengths
from budgetlm.data.prepare import load_prepared


@pytest.fixture(scope="module")
def data(prepared_dataset):
    """family -> (tokenizer, train tokens) of the fixture corpus."""
    out = {}
    for family in ("gpt", "bert", "t5"):
        ds = load_prepared(prepared_dataset(family))
        out[family] = (ds.tokenizer, ds.tokens("train"))
    return out


def rngs(n: int, seed: int = 0) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, j]) for j in range(n)]


def test_causal_lm_windows_and_shift(data):
    tok, stream = data["gpt"]
    obj = make_objective("causal_lm", tok, 32)
    assert (obj.raw_length, obj.targets_length) == (33, 32)
    assert obj.num_examples(33) == 1 and obj.num_examples(64) == 1 and obj.num_examples(65) == 2
    assert obj.num_examples(len(stream)) == (len(stream) - 1) // 32
    ids = np.array([0, 5, 2])
    b = obj.make_batch(stream, ids, rngs(3))
    assert set(b) == {"input_ids", "labels", "example_id"}
    assert all(v.dtype == torch.int64 for v in b.values())
    np.testing.assert_array_equal(b["input_ids"][1].numpy(), stream[160:192])
    np.testing.assert_array_equal(b["labels"][1].numpy(), stream[161:193])
    assert b["example_id"].tolist() == [0, 5, 2]
    with pytest.raises(IndexError):
        obj.make_batch(stream, np.array([obj.num_examples(len(stream))]), rngs(1))


def test_mlm_is_reproducible_and_per_example(data):
    tok, stream = data["bert"]
    obj = make_objective("mlm", tok, 64)
    ids = np.arange(10)
    a = obj.make_batch(stream, ids, rngs(10))
    b = obj.make_batch(stream, ids, rngs(10))
    c = obj.make_batch(stream, ids, rngs(10, seed=1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["labels"], c["labels"])
    # A sub-batch with the same generators gives the same rows: no cross-example randomness.
    part = obj.make_batch(stream, ids[3:7], rngs(10)[3:7])
    assert all(torch.equal(part[k], a[k][3:7]) for k in a)


def test_mlm_80_10_10_and_specials_never_touched(data):
    tok, stream = data["bert"]
    obj = make_objective("mlm", tok, 128)
    n = min(obj.num_examples(len(stream)), 300)
    b = obj.make_batch(stream, np.arange(n), rngs(n))
    orig = torch.from_numpy(obj.windows(stream, np.arange(n)))
    inputs, labels = b["input_ids"], b["labels"]
    special = torch.tensor(sorted(tok.special_ids))
    is_special = torch.isin(orig, special)
    chosen = labels != IGNORE_INDEX
    assert is_special.any()  # the fixture stream holds [SEP] document separators
    assert not (chosen & is_special).any()
    assert torch.equal(inputs[is_special], orig[is_special])
    assert torch.equal(labels[chosen], orig[chosen])
    assert torch.equal(inputs[~chosen], orig[~chosen])
    rate = chosen.sum() / (~is_special).sum()
    assert 0.14 < rate < 0.16
    masked = (inputs == tok.mask_id) & chosen
    changed = (inputs != orig) & chosen & ~masked
    k = chosen.sum()
    assert 0.78 < masked.sum() / k < 0.82
    # A random replacement draws the original token back 1 time in ~2000: negligible.
    kept = (inputs == orig) & chosen
    # Binomial standard errors here are ~0.004-0.005: bounds are about 4 of them wide.
    assert 0.08 < changed.sum() / k < 0.12
    assert 0.08 < kept.sum() / k < 0.12
    assert not torch.isin(inputs[changed], special).any()
    assert (chosen.sum(1) >= 1).all()


def test_mlm_at_least_one_target(data):
    tok, _ = data["bert"]
    obj = make_objective("mlm", tok, 16)
    stream = np.full(16 * 20, tok.sep_id, dtype=np.uint16)
    stream[16 * np.arange(20) + 5] = 100  # one ordinary token per window
    b = obj.make_batch(stream, np.arange(20), rngs(20))
    assert ((b["labels"] != IGNORE_INDEX).sum(1) == 1).all()
    assert (b["labels"][:, 5] == 100).all()


def test_span_corruption_lengths_match_t5():
    assert span_corruption_lengths(512, 0.15, 3.0) == (568, 114)
    assert span_corruption_lengths(128) == (141, 29)
    with pytest.raises(ValueError):
        span_corruption_lengths(5)


def _reconstruct(inputs: list[int], targets: list[int], sentinels: list[int], eos: int):
    """Undo span corruption: put each sentinel's target span back into the input."""
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets[:-1]:
        if t in sentinels:
            current = t
            spans[t] = []
        else:
            spans[current].append(t)
    assert targets[-1] == eos and inputs[-1] == eos
    out: list[int] = []
    for t in inputs[:-1]:
        out.extend(spans[t] if t in sentinels else [t])
    return out


def test_span_corruption_shapes_and_reconstruction(data):
    tok, stream = data["t5"]
    obj = make_objective("span_corruption", tok, 128)
    n = 12
    ids = np.arange(3, 3 + n)
    b = obj.make_batch(stream, ids, rngs(n))
    assert set(b) == {"input_ids", "decoder_input_ids", "labels", "example_id"}
    assert b["input_ids"].shape == (n, 128) and b["labels"].shape == (n, obj.targets_length)
    assert (b["input_ids"][:, -1] == tok.eos_id).all() and (b["labels"][:, -1] == tok.eos_id).all()
    assert (b["decoder_input_ids"][:, 0] == tok.pad_id).all()
    assert torch.equal(b["decoder_input_ids"][:, 1:], b["labels"][:, :-1])
    windows = obj.windows(stream, ids)
    sentinels = tok.sentinel_ids
    for row in range(n):
        inputs, targets = b["input_ids"][row].tolist(), b["labels"][row].tolist()
        assert sum(t in sentinels for t in inputs) == obj.n_spans
        assert [t for t in inputs if t in sentinels] == sentinels[: obj.n_spans]  # in order
        restored = _reconstruct(inputs, targets, sentinels, tok.eos_id)
        assert restored == windows[row].tolist()
        assert tok.decode(restored) == tok.decode(windows[row])
    again = obj.make_batch(stream, ids, rngs(n))
    assert all(torch.equal(again[k], b[k]) for k in b)


def test_noise_mask_statistics(data):
    tok, _ = data["t5"]
    obj = make_objective("span_corruption", tok, 512)
    masks = np.stack([obj.noise_mask(np.random.default_rng(i)) for i in range(50)])
    assert masks.shape == (50, 568) and (masks.sum(1) == 85).all()
    assert not masks[:, 0].any() and masks[:, -1].all()  # starts kept, ends with noise
    starts = masks[:, 1:] & ~masks[:, :-1]
    assert (starts.sum(1) == 28).all()
    assert not np.array_equal(masks[0], masks[1])


def test_make_objective_errors(data):
    bpe, _ = data["gpt"]
    with pytest.raises(ValueError, match="did you mean 'mlm'"):
        make_objective("mlmm", bpe, 16)
    with pytest.raises(ValueError, match="mask token"):
        make_objective("mlm", bpe, 16)
    with pytest.raises(ValueError, match="span_corruption needs"):
        make_objective("span_corruption", bpe, 64)
    wp, _ = data["bert"]
    with pytest.raises(TypeError, match="did you mean 'mask_prob'"):
        make_objective("mlm", wp, 16, mask_probability=0.2)
    assert make_objective("mlm", wp, 16, mask_prob=0.3).mask_prob == 0.3
