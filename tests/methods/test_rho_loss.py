"""RHO-loss: the hold-out split, the IL table (keyed by example id, checksummed, refused when it
does not match), exact top-k selection, charging, every family, bit-exact resume, the command."""

import argparse
import json

import numpy as np
import pytest
import torch

from budgetlm.api import Method, StepPlan
from budgetlm.budget.work import forward_pass
from budgetlm.cli.rho import register
from budgetlm.config import ConfigError
from budgetlm.methods.rho_loss import (
    TABLE_TENSORS,
    HoldoutTraining,
    RhoLoss,
    SubsetStream,
    is_held_out,
    load_il_table,
    reducible_topk,
    split_ids,
)
from budgetlm.methods.selective_backprop import forward_losses
from budgetlm.train.irreducible import prepare_il_table, score_examples
from budgetlm.train.session import open_run

from ..train.helpers import tiny_config

QUIET = ["train.eval_every=0", "train.checkpoint_every=0"]
# A 2-step IL model is enough to exercise the machinery; scoring in batches of 128 keeps it fast.
IL = ["methods.rho_loss.il.budget=2steps", "train.eval_batch_size=128"]


def _cfg(family, tmp, name, *extra):
    return tiny_config(
        family,
        tmp / name,
        "method=rho_loss",
        f"run.out_dir={tmp / 'out'}",
        "train.micro_batch_size=4",
        *IL,
        *QUIET,
        *extra,
    )


def _run(cfg, methods=(), resume=None, stop_after=None):
    trainer = open_run(cfg, methods=methods, resume=resume, progress=False)
    try:
        summary = trainer.run(stop_after=stop_after)
    finally:
        trainer.log.close()
    return trainer, summary


def _rho(trainer) -> RhoLoss:
    return next(m for m in trainer.state.methods if isinstance(m, RhoLoss))


@pytest.fixture(scope="module")
def gpt_table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rho")
    cfg = _cfg("gpt", tmp, "probe", "budget=4steps")
    return tmp, prepare_il_table(cfg, progress=False)


# -- pure pieces ----------------------------------------------------------------------------------
def test_reducible_topk_picks_exactly_the_planted_examples():
    train = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 6.0])
    il = torch.tensor([4.9, 0.0, 0.0, 0.0, 0.0, 5.5])  # reducible: .1 4 3 2 1 .5
    assert reducible_topk(train, il, 3).tolist() == [1, 2, 3]
    assert reducible_topk(train, il, 1).tolist() == [1]
    # The highest *training* loss (index 5) is not picked: most of it is irreducible.
    assert 5 not in reducible_topk(train, il, 4).tolist()
    tie = reducible_topk(torch.ones(4), torch.zeros(4), 2)
    assert tie.tolist() == [0, 1]  # ties keep the stream order


def test_holdout_split_is_a_fixed_fraction_of_ids_and_disjoint():
    ids = np.arange(100_000)
    held = is_held_out(ids, 0.2)
    assert abs(held.mean() - 0.2) < 0.01
    assert np.array_equal(held, is_held_out(ids[::-1], 0.2)[::-1])  # by id, not position
    train, out = split_ids(1000, 0.2)
    assert np.intersect1d(train, out).size == 0 and len(train) + len(out) == 1000
    assert set(is_held_out(np.arange(1000), 0.3).nonzero()[0]) >= set(out)  # nested fractions


def test_subset_stream_draws_only_its_ids_as_a_pure_function_of_step(prepared_dataset):
    from budgetlm.data import load_prepared, make_objective

    ds = load_prepared(prepared_dataset("bert"))
    objective = make_objective("mlm", ds.tokenizer, 32)
    tokens = ds.tokens("train")
    ids = np.arange(0, 60, 3)
    s = SubsetStream(tokens, objective, ids, batch_size=8, seed=1, stream=7)
    seen = np.concatenate([s.example_ids(step) for step in range(5)])
    assert set(seen) <= set(ids)
    assert sorted(seen[:20]) == sorted(ids)  # one epoch is a permutation of the subset
    again = SubsetStream(tokens, objective, ids, batch_size=8, seed=1, stream=7).batch(3)
    for k, v in s.batch(3).items():
        assert torch.equal(v, again[k]), k
    part = s.batch(3, 4, 8)
    assert torch.equal(part["input_ids"], again["input_ids"][4:8])  # micro-batches agree


# -- the table ------------------------------------------------------------------------------------
def test_table_is_keyed_by_example_id_with_nan_on_held_out_ids(gpt_table):
    tmp, path = gpt_table
    table = load_il_table(path)
    meta = table.meta
    n = meta["identity"]["data"]["num_examples"]
    train_ids, held = split_ids(n, 0.2)
    assert len(table.il_loss) == n
    assert torch.isnan(table.il_loss[held]).all() and torch.isfinite(table.il_loss[train_ids]).all()
    assert meta["holdout"] == {"n_train": len(train_ids), "n_held_out": len(held)}
    assert meta["il_cost"]["train"]["steps"] == 2 and meta["il_cost"]["scoring"]["examples"] == len(
        train_ids
    )
    # Scoring shuffled ids in other batch sizes stores the same loss at each id.
    trainer = open_run(
        tiny_config("gpt", tmp / "il-probe", "budget=2steps", *QUIET), progress=False
    )
    from budgetlm.train.checkpoint import complete_checkpoints, load_checkpoint

    il_run = complete_checkpoints(path / "il_run" / "checkpoints")[-1]
    trainer.state.model.load_state_dict(load_checkpoint(il_run)["model"])
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(train_ids)[:50]
    values, _ = score_examples(
        trainer.state.model,
        trainer.stream.tokens,
        trainer.stream.objective,
        shuffled,
        num_examples=n,
        batch_size=7,
        device=torch.device("cpu"),
        autocast=trainer.autocast,
    )
    torch.testing.assert_close(
        torch.from_numpy(values[shuffled]), table.il_loss[shuffled], rtol=1e-5, atol=1e-5
    )
    trainer.log.close()


def test_il_model_trains_only_on_held_out_ids(prepared_dataset):
    from budgetlm.data import BatchStream, load_prepared, make_objective

    ds = load_prepared(prepared_dataset("gpt"))
    stream = BatchStream(ds.tokens("train"), make_objective("causal_lm", ds.tokenizer, 32), 8, 1)

    class State:
        data = stream

    method = HoldoutTraining(0.2)
    method.on_start(State)
    for step in range(30):
        plan = StepPlan(step=step, batch_size=8, micro_batches=2)
        method.plan_step(State, plan)
        for i in range(2):
            batch = method.batch_rows(State, plan, 4 * i, 4 * i + 4)
            assert len(batch["example_id"]) == 4
            assert is_held_out(batch["example_id"].numpy(), 0.2).all()


def test_missing_or_mismatched_tables_are_refused_before_the_run_starts(gpt_table, tmp_path):
    # (open_run reports a method's refusal as a ConfigError; the message says what is wrong.)
    tmp, path = gpt_table
    with pytest.raises(ConfigError, match="budgetlm rho prepare"):
        open_run(_cfg("gpt", tmp_path, "missing", "budget=2steps"), progress=False)
    table = f"methods.rho_loss.table={path}"
    cases = {
        "data.dataset_key": ["data.val_fraction=0.06"],  # other data
        "tokenizer.sha256": ["data.vocab_size=1024"],  # other tokenizer
        "split.holdout_fraction": ["methods.rho_loss.holdout_fraction=0.3"],  # other split
        "objective.seq_len": ["model.seq_len=16"],  # other windows, other example ids
    }
    for field, overrides in cases.items():
        with pytest.raises(ConfigError, match=field):
            open_run(_cfg("gpt", tmp_path, field, "budget=2steps", table, *overrides))
    # A corrupted table is refused too.
    broken = tmp_path / "broken-table"
    broken.mkdir()
    for f in path.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    data = bytearray((broken / TABLE_TENSORS).read_bytes())
    data[-3] ^= 0x01
    (broken / TABLE_TENSORS).write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="checksum mismatch"):
        open_run(
            _cfg("gpt", tmp_path, "broken", "budget=2steps", f"methods.rho_loss.table={broken}")
        )
    assert not any((tmp_path / name).exists() for name in ("missing", "broken", *cases))


# -- in the loop ----------------------------------------------------------------------------------
def test_selects_the_top_k_by_reducible_loss_and_charges_the_mega_batch(gpt_table):
    tmp, path = gpt_table
    base, _ = _run(
        tiny_config("gpt", tmp / "base", "budget=3steps", "train.micro_batch_size=4", *QUIET)
    )
    rho, summary = _run(_cfg("gpt", tmp, "charged", "budget=3steps"))
    method = _rho(rho)
    # 3 steps x a mega-batch of 16, forwarded 4 at a time, on top of the same training passes.
    extra = 3 * 4 * forward_pass(rho.state.model.shape, 4, None).flops
    assert rho.state.clock.spent["flops"] == pytest.approx(
        base.state.clock.spent["flops"] + extra, rel=1e-12
    )
    info = method.summary()
    assert info["il_cost"] == load_il_table(path).meta["il_cost"]  # reported, not charged
    assert info["mean_selected_reducible_loss"] > info["mean_candidate_reducible_loss"]
    # One more plan by hand: the chosen examples are exactly the top 8 of the mega-batch.
    state = rho.state
    plan = StepPlan(step=state.step, batch_size=8, micro_batches=2)
    method.plan_step(state, plan)
    mega = method.stream.batch(plan.step)
    assert len(mega["example_id"]) == 16
    losses, _ = forward_losses(state, mega, None, 4)
    il = load_il_table(path).il_loss[mega["example_id"]]  # looked up by id
    top = reducible_topk(losses, il, 8)
    assert torch.equal(method._selected.rows["example_id"], mega["example_id"][top])
    assert not is_held_out(mega["example_id"].numpy(), 0.2).any()
    assert len(plan.extra_passes) == 4 and all(p.kind == "forward" for p in plan.extra_passes)
    assert summary["status"] == "finished"


class TrainedIds(Method):
    name = "trained_ids"

    def __init__(self):
        self.ids = []

    def after_forward(self, state, batch, output):
        self.ids += batch["example_id"].tolist()


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_prepare_and_train_on_dict_batches_of_bert_and_t5(family, tmp_path):
    cfg = _cfg(family, tmp_path, "run", "budget=2steps")
    path = prepare_il_table(cfg, progress=False)
    table = load_il_table(path)
    assert table.meta["identity"]["objective"]["name"] in ("mlm", "span_corruption")
    rec = TrainedIds()
    trainer, summary = _run(cfg, methods=[rec])
    assert summary["status"] == "finished" and len(rec.ids) == 16
    assert torch.isfinite(table.lookup(torch.tensor(rec.ids))).all()  # never a held-out id
    assert (path / "il_run" / "summary.json").is_file()  # the IL model's own run directory


def test_resume_is_bit_exact_and_ids_stay_correct(gpt_table):
    tmp, path = gpt_table
    extra = [
        "budget=6steps",
        "model.dropout=0.1",
        "train.checkpoint_every=0.5",
        f"methods.rho_loss.table={path}",  # the table of a dropout-free IL model serves too
    ]
    rec_a, rec_b = TrainedIds(), TrainedIds()
    straight, _ = _run(_cfg("gpt", tmp, "straight", *extra), methods=[rec_a])
    cfg = _cfg("gpt", tmp, "resumed", *extra)
    _, summary = _run(cfg, methods=[rec_b], stop_after=2)
    assert summary["status"] == "stopped"
    resumed, _ = _run(cfg, methods=[rec_b], resume="auto")
    assert rec_a.ids == rec_b.ids  # the same examples, in the same order, after the resume
    for k, v in straight.state.model.state_dict().items():
        assert torch.equal(v, resumed.state.model.state_dict()[k]), k
    oa, ob = straight.state.optimizer.state_dict(), resumed.state.optimizer.state_dict()
    for i, s in oa["state"].items():
        for k, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob["state"][i][k])), (i, k)
    assert _rho(straight).state_dict() == _rho(resumed).state_dict()


def test_command_prepares_once_and_reports_the_il_cost(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = [
        "rho",
        "prepare",
        "model.preset=gpt-tiny",
        "data.corpus=fixture",
        "data.vocab_size=2048",
        "data.val_fraction=0.05",
        "model.n_layers=1",
        "model.d_model=32",
        "model.n_heads=2",
        "model.d_kv=16",
        "model.d_ff=64",
        "model.seq_len=32",
        "train.batch_size=8",
        f"run.out_dir={tmp_path}",
        "method=rho_loss",
        *IL,
        "--quiet",
    ]
    ns = parser.parse_args(args)
    assert ns.func(ns) == 0
    out = capsys.readouterr().out
    assert "irreducible-loss table:" in out and "not charged" in out
    table_dir = next((tmp_path / "rho").iterdir())
    meta = json.loads((table_dir / "il_table.json").read_text())
    stamp = (table_dir / TABLE_TENSORS).stat().st_mtime_ns
    ns = parser.parse_args(args)
    assert ns.func(ns) == 0  # up to date: nothing retrained or rewritten
    assert (table_dir / TABLE_TENSORS).stat().st_mtime_ns == stamp
    assert meta["il_config"]["method"] == "none" and meta["il_config"]["budget"] == "2steps"
    with pytest.raises(ConfigError, match="methods.rho_loss.il"):
        bad = parser.parse_args([*args[:-1], "methods.rho_loss.il.optim.lrr=1", "--quiet"])
        bad.func(bad)


def test_changed_il_settings_in_the_same_table_directory_need_force(tmp_path):
    where = f"methods.rho_loss.table={tmp_path / 'table'}"
    cfg = _cfg("gpt", tmp_path, "a", where, "budget=3steps")
    first = load_il_table(prepare_il_table(cfg, progress=False))
    _, summary = _run(cfg, stop_after=1)
    assert summary["status"] == "stopped"
    changed = _cfg(
        "gpt", tmp_path, "a", where, "budget=3steps", "methods.rho_loss.il.budget=3steps"
    )
    with pytest.raises(ConfigError, match="--force"):
        prepare_il_table(changed, progress=False)
    second = load_il_table(prepare_il_table(changed, progress=False, force=True))
    assert second.meta["il_cost"]["train_steps"] == 3 and first.meta["il_cost"]["train_steps"] == 2
    assert second.checksum != first.checksum
    # The interrupted run was selecting with the old table: resuming with the new one is refused.
    with pytest.raises(ConfigError, match="trained with IL table"):
        open_run(cfg, resume="auto", progress=False)


def test_the_loop_builds_no_rows_of_its_own_stream_under_rho_loss(gpt_table, tmp_path, monkeypatch):
    # RHO-loss trains on the rows it picks from its own mega-batches (Method.batch_rows): the
    # run's stream, whose rows it would throw away, is never asked for a batch.
    _, path = gpt_table
    cfg = _cfg("gpt", tmp_path, "run", "budget=3steps", f"methods.rho_loss.table={path}")
    trainer = open_run(cfg, progress=False)
    built = []
    original = trainer.stream.batch
    monkeypatch.setattr(
        trainer.stream, "batch", lambda *args: built.append(args) or original(*args)
    )
    try:
        trainer.run()
    finally:
        trainer.log.close()
    assert trainer.state.step == 3 and built == []
