"""Selective backprop: the keep rule, the bounded history, exact charging, dict batches of every
family, and bit-exact resume with a half-full queue of kept examples."""

import json

import pytest
import torch

from budgetlm.api import Method
from budgetlm.budget.work import forward_pass
from budgetlm.config import ConfigError
from budgetlm.methods.selective_backprop import (
    LossHistory,
    SelectiveBackprop,
    batch_size_of,
    chunk_uniforms,
    keep_probabilities,
    percentiles,
    select,
)
from budgetlm.train.session import open_run

from ..train.helpers import tiny_config

QUIET = ["train.eval_every=0", "train.checkpoint_every=0"]


def _run(cfg, methods=(), resume=None, stop_after=None):
    trainer = open_run(cfg, methods=methods, resume=resume, progress=False)
    try:
        summary = trainer.run(stop_after=stop_after)
    finally:
        trainer.log.close()
    return trainer, summary


def _sb(trainer_or_state) -> SelectiveBackprop:
    state = getattr(trainer_or_state, "state", trainer_or_state)
    return next(m for m in state.methods if isinstance(m, SelectiveBackprop))


def _assert_same_training_state(a, b):
    """Bit-identical weights and optimizer moments."""
    wa, wb = a.state.model.state_dict(), b.state.model.state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    oa, ob = a.state.optimizer.state_dict()["state"], b.state.optimizer.state_dict()["state"]
    assert oa.keys() == ob.keys()
    for i in oa:
        for k, v in oa[i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob[i][k])), (i, k)


class TrainedIds(Method):
    """Records the example ids each micro-batch actually trained on (after every before_batch)."""

    name = "trained_ids"

    def __init__(self):
        self.ids = []

    def after_forward(self, state, batch, output):
        self.ids.append((state.step, batch["example_id"].tolist()))
        assert output.per_example_loss.shape == batch["example_id"].shape


# -- the pure rule --------------------------------------------------------------------------------
def test_percentile_and_keep_probability_by_hand():
    history = torch.tensor([1.0, 2.0, 3.0, 4.0])
    losses = torch.tensor([0.5, 2.0, 2.5, 4.0, 9.0])
    assert percentiles(losses, history).tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert keep_probabilities(losses, history, 2.0).tolist() == [0.0, 0.25, 0.25, 1.0, 1.0]
    keep = select(losses, history, 1.0, torch.tensor([0.1, 0.49, 0.51, 0.99, 0.0]))
    assert keep.tolist() == [False, True, False, True, True]


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_high_loss_examples_are_kept_more_often_on_a_planted_distribution(beta):
    # History: losses spread evenly over [0, 1). Candidates: half planted at the 20th percentile
    # ("easy"), half at the 90th ("hard"). Keep rates must be 0.2^beta and 0.9^beta.
    history = torch.linspace(0, 1, 5001)[:-1]
    losses = torch.tensor([0.2, 0.9] * 32)
    kept = torch.zeros(2)
    chunks = 200
    for c in range(chunks):
        keep = select(losses, history, beta, chunk_uniforms(seed=3, chunk=c, n=len(losses)))
        kept += keep.view(-1, 2).float().sum(0)
    rate = kept / (32 * chunks)
    for observed, p in zip(rate.tolist(), (0.2**beta, 0.9**beta), strict=True):
        sigma = (p * (1 - p) / (32 * chunks)) ** 0.5
        assert abs(observed - p) < 4 * sigma, (observed, p)
    assert rate[1] > rate[0] + 0.5


def test_history_is_a_bounded_ring_buffer():
    h = LossHistory(16)
    h.add(torch.arange(10.0))
    assert h.values().tolist() == list(range(10))
    h.add(torch.arange(10.0, 100.0))  # more than fits at once: only the newest 16 survive
    assert len(h.buffer) == 16 and h.filled == 16
    assert sorted(h.values().tolist()) == list(range(84, 100))
    h.add(torch.tensor([100.0]))
    assert sorted(h.values().tolist()) == list(range(85, 101))


# -- in the loop ----------------------------------------------------------------------------------
def test_selection_forwards_are_charged_exactly_and_the_free_ablation_is_recorded(tmp_path):
    common = ["budget=4steps", "train.micro_batch_size=4", *QUIET]
    base, _ = _run(tiny_config("gpt", tmp_path / "base", *common))
    sb_cfg = tiny_config("gpt", tmp_path / "sb", *common, "method=selective_backprop")
    sb, summary = _run(sb_cfg)
    with pytest.warns(UserWarning, match="NOT charged"):
        free_cfg = tiny_config(
            "gpt",
            tmp_path / "free",
            *common,
            "method=selective_backprop",
            "methods.selective_backprop.charge_selection=false",
        )
        free, _ = _run(free_cfg)
    shape = sb.state.model.shape
    per_slice = forward_pass(shape, 4, None).flops  # candidates forwarded 4 at a time
    info = _sb(sb).summary()
    assert info["candidates_forwarded"] % 8 == 0 and info["candidates_forwarded"] >= 4 * 8
    extra = info["candidates_forwarded"] // 4 * per_slice
    spent = {name: t.state.clock.spent for name, t in (("base", base), ("sb", sb), ("free", free))}
    assert spent["sb"]["flops"] == pytest.approx(spent["base"]["flops"] + extra, rel=1e-12)
    assert spent["sb"]["tokens"] == spent["base"]["tokens"]  # tokens count the trained batch
    # The ablation trains exactly the same examples but charges no selection work; it says so.
    free_info = _sb(free).summary()
    assert spent["free"]["flops"] == spent["base"]["flops"]
    assert free_info["charge_selection"] is False
    assert free_info["uncharged_selection_flops"] == pytest.approx(extra, rel=1e-12)
    assert free_info["candidates_forwarded"] == info["candidates_forwarded"]
    assert _sb(free).state_dict()["charge_selection"] is False
    assert "charge_selection: false" in (free.run_dir / "config.yaml").read_text()
    written = json.loads((free.run_dir / "summary.json").read_text())
    assert any("NOT charged" in w for w in written.get("warnings", [])), written
    assert not any("NOT charged" in w for w in summary.get("warnings", []))
    # The kept examples had higher losses than the candidates they were chosen from.
    assert info["mean_kept_loss"] > info["mean_candidate_loss"]
    assert summary["status"] == "finished"


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_trains_on_kept_examples_of_dict_batches_of_every_family(family, tmp_path):
    rec = TrainedIds()
    cfg = tiny_config(
        family,
        tmp_path / "run",
        "budget=3steps",
        "train.micro_batch_size=4",
        "method=selective_backprop",
        "methods.selective_backprop.history=64",
        *QUIET,
    )
    trainer, _ = _run(cfg, methods=[rec])
    sb = _sb(trainer)
    assert [step for step, _ in rec.ids] == [0, 0, 1, 1, 2, 2]  # 2 micro-batches per step
    assert all(len(ids) == 4 for _, ids in rec.ids)
    # Everything trained on came out of the forwarded candidate chunks, in queue order.
    candidates = [int(i) for c in range(sb.next_chunk) for i in trainer.stream.example_ids(c)]
    trained = [i for _, ids in rec.ids for i in ids]
    assert set(trained) <= set(candidates)
    assert trained != [int(i) for s in range(3) for i in trainer.stream.example_ids(s)]
    assert sb.history.filled == min(64, sb.stats["forwarded"])
    assert len(sb.history.buffer) == 64  # bounded, whatever was forwarded
    assert sb.stats["kept"] == 3 * 8 + batch_size_of(sb.pending)


class QueueLog(Method):
    """Records how many kept examples wait in selective backprop's queue after each step."""

    name = "queue_log"

    def __init__(self):
        self.sizes = []

    def after_optimizer_step(self, state):
        self.sizes.append(batch_size_of(_sb(state).pending))


def test_resume_mid_selection_buffer_is_bit_exact(tmp_path):
    overrides = [
        "budget=7steps",
        "method=selective_backprop",
        "methods.selective_backprop.history=40",
        "model.dropout=0.1",
        "train.micro_batch_size=4",
        "train.checkpoint_every=0",
        "train.eval_every=0.5",
    ]
    log = QueueLog()
    straight, _ = _run(tiny_config("gpt", tmp_path / "straight", *overrides), methods=[log])
    # Interrupt after the first step (past the first) that leaves kept examples waiting.
    stop = next(i + 1 for i, n in enumerate(log.sizes) if n > 0 and i >= 1)
    assert stop < 7
    cfg = tiny_config("gpt", tmp_path / "resumed", *overrides)
    first, summary = _run(cfg, stop_after=stop)
    assert summary["status"] == "stopped"
    assert batch_size_of(_sb(first).pending) == log.sizes[stop - 1] > 0
    resumed, _ = _run(cfg, resume="auto")
    a, b = _sb(straight).state_dict(), _sb(resumed).state_dict()
    assert torch.equal(a["history"]["buffer"], b["history"]["buffer"])
    assert a["next_chunk"] == b["next_chunk"] and a["stats"] == b["stats"]
    assert a["pending"].keys() == b["pending"].keys()
    assert all(torch.equal(a["pending"][k], b["pending"][k]) for k in a["pending"])
    _assert_same_training_state(straight, resumed)


def test_options_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'methods.selective_backprop.beta'"):
        open_run(
            tiny_config(
                "gpt",
                tmp_path / "a",
                "method=selective_backprop",
                "methods.selective_backprop.betta=2",
            ),
            progress=False,
        )
    with pytest.raises(ConfigError, match="cannot be combined"):
        open_run(
            tiny_config("gpt", tmp_path / "b", "method=selective_backprop+rho_loss"), progress=False
        )
    with pytest.raises(ValueError, match="beta must be >= 0"):
        SelectiveBackprop(beta=-1.0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
