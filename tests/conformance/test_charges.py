"""Counting what a model runs (forwards, blocks, backward) and comparing it with the charged
passes, on hand-made steps and on tiny models: no training."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from budgetlm.budget.work import forward_pass, train_pass
from budgetlm.conformance.charges import (
    Forward,
    ForwardCounter,
    StepCharge,
    charge_problems,
    step_mismatches,
)
from budgetlm.models import build_model, get_shape


def _shape(family="gpt", **knobs):
    small = dict(n_layers=2, d_model=32, n_heads=2, d_kv=16, d_ff=64, seq_len=16)
    if family == "t5":
        small["n_decoder_layers"] = 2
    shape = get_shape(f"{family}-tiny", **{**small, **knobs})
    extra = {"target_len": 8} if family == "t5" else {}
    return dataclasses.replace(shape, vocab_size=97, **extra)


def _batch(shape, rows, seq_len=None):
    seq_len = seq_len or shape.seq_len
    ids = torch.randint(0, shape.vocab_size, (rows, seq_len))
    if shape.family == "t5":
        target = torch.randint(0, shape.vocab_size, (rows, shape.target_len))
        return {"input_ids": ids, "decoder_input_ids": target, "labels": target}
    return {"input_ids": ids, "labels": ids.clone()}


def _step(forwards, passes, stray=0, backward=0):
    return StepCharge(3, forwards, stray, backward, tuple(passes))


SHAPE = _shape()
TRAIN = train_pass(SHAPE, 4, None)  # 4 rows, 2 blocks: 8 block-rows


def test_a_step_that_ran_what_it_was_charged_has_no_problem():
    step = _step([Forward(4, 16, 8)], [TRAIN], backward=8)
    assert step_mismatches(step) == []
    selection = forward_pass(SHAPE, 4, {"decoder": [0]})
    step = _step([Forward(4, 16, 4), Forward(4, 16, 8)], [TRAIN, selection], backward=8)
    assert step_mismatches(step) == []


def test_each_kind_of_mismatch_is_named_with_its_numbers():
    rows = step_mismatches(_step([Forward(4, 16, 8), Forward(4, 16, 8)], [TRAIN], backward=8))
    assert rows == [
        "step 3: the model ran 8 rows in 2 forwards but the clock was charged for 4 rows (1 "
        "train pass of 4 rows (training)); declare every pass a method runs in "
        "plan.extra_passes (budgetlm.budget.work.forward_pass / train_pass)"
    ]
    (length,) = step_mismatches(_step([Forward(4, 8, 8)], [TRAIN], backward=8))
    assert "ran 4 rows of length 8 but the clock charged 4 rows of length 16" in length
    (blocks,) = step_mismatches(
        _step([Forward(4, 16, 8)], [train_pass(SHAPE, 4, {"decoder": [1]})])
    )
    assert "ran 8 block-rows (rows x blocks) but the clock charged 4" in blocks
    (stray,) = step_mismatches(_step([Forward(4, 16, 8)], [TRAIN], stray=4))
    assert "12 block-rows (rows x blocks) (4 outside a whole-model forward)" in stray
    (back,) = step_mismatches(
        _step([Forward(4, 16, 8), Forward(4, 16, 8)], [TRAIN, forward_pass(SHAPE, 4, None)], 0, 16)
    )
    assert "16 block-rows were back-propagated but the train passes charged cover 8" in back
    (unread,) = step_mismatches(_step([Forward(None, None, 8)], [TRAIN]))
    assert "without a batch the suite can read" in unread


def test_problems_name_the_first_step_and_count_the_others():
    good = _step([Forward(4, 16, 8)], [TRAIN], backward=8)
    bad = _step([Forward(8, 16, 16)], [TRAIN], backward=8)
    steps = [dataclasses.replace(s, step=i) for i, s in enumerate([good, bad, good, bad, bad])]
    problems = charge_problems(steps)
    assert problems[0].startswith("step 1: the model ran 8 rows")
    assert problems[-1] == "(and at 2 more of the 5 steps: 3, 4)"
    assert charge_problems([good, good]) == []


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_the_counter_sees_rows_blocks_and_backward_of_every_model_it_runs(family):
    torch.manual_seed(0)
    shape = _shape(family)
    first, second = build_model(shape), build_model(shape)  # a replaced model is counted too
    stacks = 2 if family == "t5" else 1
    with ForwardCounter() as counter:
        first(_batch(shape, 4)).loss.backward()
        with torch.no_grad():
            second(_batch(shape, 3), active={s: [0] for s in first.layer_stacks()})
        with counter.paused():  # what evaluation does: not counted
            first(_batch(shape, 5))
        forwards, stray, backward = counter.take()
    assert [(f.rows, f.seq_len) for f in forwards] == [(4, 16), (3, 16)]
    assert [f.block_rows for f in forwards] == [4 * 2 * stacks, 3 * stacks]
    assert stray == 0 and backward == 4 * 2 * stacks
    first(_batch(shape, 2))  # hooks removed on exit
    assert counter.take()[0] == []


def test_blocks_run_outside_a_model_forward_are_stray():
    model = build_model(SHAPE)
    with ForwardCounter() as counter:
        model.hidden_states(_batch(SHAPE, 4))
        forwards, stray, _ = counter.take()
    assert forwards == [] and stray == 8
