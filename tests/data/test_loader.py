"""BatchStream: batches are a pure function of (seed, step); eval batches are fixed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from budgetlm.data.loader import BatchStream, eval_batches
from budgetlm.data.objectives import make_objective
from budgetlm.data.prepare import load_prepared

OBJECTIVE = {"gpt": "causal_lm", "bert": "mlm", "t5": "span_corruption"}


@pytest.fixture(scope="module")
def setups(prepared_dataset):
    """family -> (objective at seq_len 32, train tokens, val tokens)."""
    out = {}
    for family, name in OBJECTIVE.items():
        ds = load_prepared(prepared_dataset(family))
        out[family] = (
            make_objective(name, ds.tokenizer, 32),
            ds.tokens("train"),
            ds.tokens("val"),
        )
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", list(OBJECTIVE))
def test_batch_is_a_function_of_seed_and_step(setups, family):
    obj, train, _ = setups[family]
    one, two = BatchStream(train, obj, 8, seed=3), BatchStream(train, obj, 8, seed=3)
    for step in (5, 0, 5, 1234):  # any order: no hidden iterator state
        assert same(one.batch(step), two.batch(step))
    assert not same(one.batch(0), one.batch(1))
    other = BatchStream(train, obj, 8, seed=4)
    assert not np.array_equal(other.example_ids(0), one.example_ids(0))


@pytest.mark.parametrize("family", list(OBJECTIVE))
def test_micro_batches_concatenate_to_the_batch(setups, family):
    obj, train, _ = setups[family]
    stream = BatchStream(train, obj, 12, seed=0)
    whole = stream.batch(7)
    parts = [stream.batch(7, s, s + 4) for s in (0, 4, 8)]
    glued = {k: torch.cat([p[k] for p in parts]) for k in whole}
    assert same(whole, glued)
    assert torch.equal(whole["example_id"], torch.from_numpy(stream.example_ids(7)))


def test_epochs_are_permutations_and_wrap(setups):
    obj, train, _ = setups["gpt"]
    stream = BatchStream(train, obj, 7, seed=1)
    n = stream.num_examples
    assert n == obj.num_examples(len(train)) > 100
    steps = -(-2 * n // 7)  # enough steps for two epochs
    order = np.concatenate([stream.example_ids(s) for s in range(steps)])
    first, second = order[:n], order[n : 2 * n]
    assert sorted(first) == list(range(n)) == sorted(second)
    assert not np.array_equal(first, second)  # a fresh permutation each epoch
    expected = np.random.default_rng([1, 0]).permutation(n)
    np.testing.assert_array_equal(first, expected)
    assert stream.epochs_at(steps) == pytest.approx(steps * 7 / n)
    assert len(stream._perms) <= 4  # permutations are cached, not accumulated


def test_tiny_split_wraps_and_empty_split_errors(setups):
    obj, _, val = setups["gpt"]
    few = np.asarray(val[: obj.raw_length + 3 * obj.stride])  # exactly 4 examples
    stream = BatchStream(few, obj, 10, seed=0)
    assert stream.num_examples == 4
    assert sorted(set(stream.example_ids(0).tolist())) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="fewer than one example"):
        BatchStream(few[: obj.raw_length - 1], obj, 2, seed=0)
    with pytest.raises(ValueError, match="start < stop"):
        stream.batch(0, 5, 5)


@pytest.mark.parametrize("family", list(OBJECTIVE))
def test_eval_batches_are_fixed_and_in_order(setups, family):
    obj, _, val = setups[family]
    n = obj.num_examples(len(val))
    a = eval_batches(val, obj, 4, max_batches=3)
    b = eval_batches(val, obj, 4, max_batches=3)
    assert len(a) == 3 and all(same(x, y) for x, y in zip(a, b, strict=True))
    assert torch.cat([x["example_id"] for x in a]).tolist() == list(range(12))
    everything = eval_batches(val, obj, 4, max_batches=10_000)
    assert len(everything) == -(-n // 4)
    assert sum(len(x["example_id"]) for x in everything) == n  # last batch may be partial
    if family != "gpt":
        assert not same(a[0], eval_batches(val, obj, 4, max_batches=1, seed=1)[0])
    with pytest.raises(ValueError, match="raise data.val_fraction"):
        eval_batches(val[: obj.raw_length - 1], obj, 4, 1)
