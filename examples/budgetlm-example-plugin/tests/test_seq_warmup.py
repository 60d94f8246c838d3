"""Sequence-length warm-up: the pure schedule, every step charged at the length it really
trains on, the RST table asked for every length, and bit-exact resume around a length change."""

import dataclasses

import pytest
import torch
from budgetlm_example_plugin.seq_warmup import (
    SequenceLengthWarmup,
    SeqWarmupOptions,
    default_start_len,
    length_at,
    stage_lengths,
    stage_points,
    truncate,
)

from budgetlm.api import Method, RunContext
from budgetlm.budget.work import train_pass
from budgetlm.config import ConfigError
from budgetlm.models import get_shape
from budgetlm.train.pricing import run_shapes

# 12 steps of a 32-token GPT warming up from 8 tokens until p = 0.5: stage points 0.25 and 0.5,
# so steps 0-2 train at 8 tokens, 3-5 at 16 and 6-11 at 32.
RUN = [
    "budget=12steps",
    "method=seq_warmup",
    "methods.seq_warmup.until=0.5",
    "train.eval_every=0.5",
    "train.checkpoint_every=0",
]
LENGTHS = [8, 8, 8, 16, 16, 16, *[32] * 6]


def test_lengths_double_and_follow_a_linear_pacing():
    assert [default_start_len(n) for n in (16, 32, 128, 1024)] == [8, 8, 16, 128]
    assert stage_lengths(128, 16) == [16, 32, 64, 128]
    assert stage_lengths(128, 24) == [24, 48, 96, 128]  # the last stage is always seq_len
    assert stage_lengths(32, 8) == [8, 16, 32]
    lengths = [16, 32, 64, 128]
    points = stage_points(lengths, 0.3)
    assert points == pytest.approx([0.075, 0.15, 0.3])  # where 128 * p / 0.3 reaches each
    at = {p: length_at(p, lengths, points) for p in (0, 0.0749, 0.075, 0.149, 0.15, 0.2999)}
    assert at == {0: 16, 0.0749: 16, 0.075: 32, 0.149: 32, 0.15: 64, 0.2999: 64}
    assert length_at(0.3, lengths, points) == length_at(1.0, lengths, points) == 128
    # event_points (given no shape) lists every stage boundary of the default start_len
    for seq_len in (16, 32, 64, 128, 1024):
        _, pts = SequenceLengthWarmup.stages(SeqWarmupOptions(), seq_len)
        assert set(pts) <= set(SequenceLengthWarmup.event_points(SeqWarmupOptions()))
    with pytest.raises(ValueError, match="start_len must be in 1..31"):
        stage_lengths(32, 32)
    with pytest.raises(ValueError, match="until must be in"):
        stage_points(lengths, 1.0)
    with pytest.raises(ValueError, match="seq_len 8 is too short"):
        SequenceLengthWarmup.stages(SeqWarmupOptions(), 8)


def test_truncate_cuts_positions_only():
    ids = torch.arange(64).reshape(2, 32)
    batch = {"input_ids": ids, "labels": ids + 1, "example_id": torch.tensor([5, 9])}
    cut = truncate(batch, 8)
    assert torch.equal(cut["input_ids"], ids[:, :8]) and torch.equal(cut["labels"], ids[:, 1:9])
    assert cut["input_ids"].is_contiguous() and cut["labels"].is_contiguous()
    assert cut["example_id"] is batch["example_id"]
    assert batch["input_ids"].shape == (2, 32)  # the input is left alone
    assert truncate(batch, 32)["input_ids"] is ids


def test_only_gpt_and_every_stage_shape_is_priced(tiny_config):
    shape = get_shape("gpt-tiny", vocab_size=2048)  # seq_len 128
    options = SeqWarmupOptions()
    used = SequenceLengthWarmup.shapes_used(options, shape)
    assert used == [dataclasses.replace(shape, seq_len=n) for n in (16, 32, 64, 128)]
    # the package asks its RST table for each of them before a run starts
    cfg = tiny_config("shapes", "method=seq_warmup")
    assert {s.seq_len for s in run_shapes(cfg, shape)} == {16, 32, 64, 128}
    for family in ("bert", "t5"):
        context = RunContext(shape=get_shape(f"{family}-tiny"), config=None)
        with pytest.raises(ValueError, match="supports \\('gpt',\\)"):
            SequenceLengthWarmup.from_options(options, context)


def test_an_rst_budget_refuses_a_length_its_table_does_not_price(tiny_config, train):
    # The shipped CPU table prices gpt-tiny (vocab 2048) at its seq_len, 128, not at 16..64.
    knobs = dict(seq_len=128, n_layers=4, d_model=128, n_heads=4, d_kv=32, d_ff=512, dropout=0.0)
    cfg = tiny_config(
        "rst", *(f"model.{k}={v}" for k, v in knobs.items()), "budget=2s-rst", "method=seq_warmup"
    )
    with pytest.raises(ConfigError, match="model.seq_len=16"):
        train(cfg)


class LengthSpy(Method):
    """Records, per step, the length of the batches the model really got."""

    name = "length_spy"

    def __init__(self) -> None:
        self.seen: dict[int, set[int]] = {}

    def after_forward(self, state, batch, output):
        width = {batch["input_ids"].shape[1], batch["labels"].shape[1]}
        self.seen.setdefault(state.step, set()).update(width)


def test_each_step_is_charged_at_the_length_it_trains_on(tiny_config, train):
    spy = LengthSpy()
    trainer, summary, metrics = train(tiny_config("charged", *RUN), methods=[spy])
    assert summary["status"] == "finished"
    assert [spy.seen[step] for step in range(12)] == [{n} for n in LENGTHS]
    steps = [m for m in metrics if m["event"] == "train"]
    assert [m["step"] for m in steps] == list(range(1, 13))
    start = [{"tokens": 0, "flops": 0}, *steps[:-1]]
    tokens = [b["tokens"] - a["tokens"] for a, b in zip(start, steps, strict=True)]
    flops = [b["flops"] - a["flops"] for a, b in zip(start, steps, strict=True)]
    shape = trainer.state.model.shape
    assert tokens == [4 * n for n in LENGTHS]
    assert flops == [
        pytest.approx(train_pass(dataclasses.replace(shape, seq_len=n), 4, None).flops)
        for n in LENGTHS
    ]
    assert summary["methods"]["seq_warmup"] == {
        "lengths": [8, 16, 32],
        "points": [0.25, 0.5],
        "steps_at_length": {"8": 3, "16": 3, "32": 6},
    }


@pytest.fixture(scope="module")
def straight(tiny_config, train):
    """The uninterrupted run the resumed ones must reproduce, trained once for the module."""
    return train(tiny_config("straight", *RUN))


@pytest.mark.parametrize("stop_after", [2, 3, 4, 6], ids=["before", "at", "after", "at-full"])
def test_resume_around_a_length_change_is_bit_exact(
    stop_after, straight, tiny_config, train, same_state, losses
):
    uninterrupted, straight_summary, straight_metrics = straight
    cfg = tiny_config("resumed", *RUN)
    _, first, _ = train(cfg, stop_after=stop_after)
    assert first["status"] == "stopped" and first["steps"] == stop_after
    resumed, summary, metrics = train(cfg, resume="auto")
    assert summary["status"] == "finished"
    same_state(uninterrupted, resumed)
    assert losses(metrics) == losses(straight_metrics)
    assert summary["methods"] == straight_summary["methods"]


@pytest.mark.parametrize("other", ["selective_backprop", "rho_loss", "staged"])
def test_methods_that_replace_its_batches_or_grow_the_model_are_refused(other):
    from budgetlm.methods import method_classes

    for spec in (f"seq_warmup+{other}", f"{other}+seq_warmup"):  # in either order
        with pytest.raises(ConfigError, match="cannot be combined with"):
            method_classes(spec)
