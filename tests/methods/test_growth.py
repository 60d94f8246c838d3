"""`method=staged` and `budgetlm grow`: schedule transfer, runs, resume (growth.py)."""

import argparse
import json

import pytest

from budgetlm.methods.growth import ScheduleTransfer
from budgetlm.methods.growth_operators import widen_shape
from budgetlm.models import forward_flops
from budgetlm.schedules import make_schedule

from .arch_helpers import (
    StepLog,
    losses,
    one_thread,  # noqa: F401 - autouse fixture: one thread
    run,
    same_state,
    tiny_config,
)


def test_schedule_transfer_enters_the_target_schedule_at_s_grow():
    schedule = make_schedule("warmup_linear", 1e-3, warmup=0.05, final=1e-5)
    t = ScheduleTransfer()
    assert t.lr(0.3, schedule) == schedule(0.3)  # before any growth: the schedule itself
    t.grew(0.4, c=1.81, rewarmup=0.0)
    # Right at the growth: the target schedule at S_grow = S_before / c.
    assert t.position(0.4) == pytest.approx(0.4 / 1.81)
    assert t.lr(0.4, schedule) == pytest.approx(schedule(0.4 / 1.81))
    assert t.lr(1.0, schedule) == schedule.final  # and still the final value at p = 1
    # With a re-warm-up the lr ramps from 0 and reaches the target schedule when it ends.
    w = ScheduleTransfer()
    w.grew(0.4, c=1.81, rewarmup=0.1)
    assert w.lr(0.45, schedule) == pytest.approx(0.5 * schedule(w.position(0.45)))
    assert w.lr(0.5, schedule) == pytest.approx(schedule(w.position(0.5)))
    assert w.lr(1.0, schedule) == schedule.final
    # A second growth composes: re-enter at the current position / c.
    q = w.position(0.7)
    w.grew(0.7, c=1.43, rewarmup=0.0)
    assert w.position(0.7) == pytest.approx(q / 1.43) and w.position(1.0) == 1.0


STAGED = [
    "budget=12steps",
    "method=staged",
    "methods.staged.grow=width@0.5",
    "methods.staged.rewarmup=0.25",
    "train.eval_every=0.5",
    "train.checkpoint_every=0",
    "model.positions=learned",
]


def test_staged_run_grows_at_half_budget_and_charges_the_grown_shape(tmp_path):
    log = StepLog()
    cfg = tiny_config("gpt", tmp_path / "run", *STAGED)
    trainer, summary, metrics = run(cfg, [log])
    assert summary["status"] == "finished"
    small = log.steps[0]["shape"]
    big = trainer.state.model.shape
    assert big == widen_shape(small)
    assert [s["shape"] for s in log.steps] == [small] * 6 + [big] * 6  # p = 0.5 after step 6
    batch = cfg.train.batch_size
    charged = 6 * 3 * forward_flops(small, batch) + 6 * 3 * forward_flops(big, batch)
    assert trainer.state.clock.spent["flops"] == pytest.approx(charged, rel=1e-12)
    # The optimizer is a new one, over the grown model's parameters.
    opt_params = {id(p) for g in trainer.state.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in trainer.state.model.parameters()}
    # ... holding the transformed state: Adam's step count runs on through the growth.
    tok_emb = trainer.state.model.tok_emb.weight
    assert float(trainer.state.optimizer.state[tok_emb]["step"]) == 12
    # LR: the target schedule from S_grow = 0.5 / 1.81, stretched to end at 1, re-warmed.
    lrs = {m["step"]: m["lr"] for m in metrics if m["event"] == "train"}
    schedule = trainer.schedule
    p_grow = 0.5  # a steps budget: progress is steps / 12, the growth ran after step 6
    assert lrs[6] == schedule(6 / 12)  # before: the run's own schedule

    def expected(p):
        q = p_grow / 1.81 + (p - p_grow) * (1 - p_grow / 1.81) / (1 - p_grow)
        return min(1.0, (p - p_grow) / 0.25) * schedule(q)

    for step in (7, 8, 9, 10, 11, 12):
        assert lrs[step] == pytest.approx(expected(step / 12), rel=1e-12), step
    assert lrs[12] == schedule.final
    # The checkpoint records the grown shape (resume rebuilds the model at it).
    ckpt = sorted((trainer.run_dir / "checkpoints").iterdir())[-1]
    trainer_json = json.loads((ckpt / "trainer.json").read_text())
    assert trainer_json["__dict__"]["shape"]["__dict__"]["d_model"] == big.d_model


@pytest.mark.parametrize("stop", [5, 6, 7])  # just before, at and just after the growth
def test_staged_resume_around_the_growth_is_bit_exact(stop, tmp_path):
    args = [*STAGED, "model.dropout=0.1"]
    straight, _, straight_metrics = run(tiny_config("gpt", tmp_path / "a", *args))
    run(tiny_config("gpt", tmp_path / "b", *args), stop_after=stop)
    resumed, summary, metrics = run(tiny_config("gpt", tmp_path / "b", *args), resume="auto")
    assert summary["status"] == "finished"
    assert resumed.state.model.shape == straight.state.model.shape
    same_state(straight, resumed)
    assert losses(metrics) == losses(straight_metrics)


def test_staged_depth_growth_on_t5_with_adamw_rms(tmp_path):
    log = StepLog()
    cfg = tiny_config(
        "t5",
        tmp_path / "run",
        "budget=8steps",
        "method=staged",
        "methods.staged.grow=depth@0.25",
        "methods.staged.mode=append",
        "train.eval_every=0",
    )
    trainer, summary, metrics = run(cfg, [log])
    assert summary["status"] == "finished" and cfg.optim.name == "adamw_rms"
    assert (
        trainer.state.model.shape.n_layers == 4 and trainer.state.model.shape.n_decoder_layers == 4
    )
    assert [len(s["active"]["decoder"]) for s in log.steps] == [2, 2] + [4] * 6
    assert all(m["loss"] == m["loss"] for m in metrics if m["event"] == "train")  # no NaN


def test_staged_options_are_validated(tmp_path):
    from budgetlm.config import ConfigError
    from budgetlm.train.session import open_run

    for bad in (
        "methods.staged.grow=height@0.5",
        "methods.staged.grow=width@0.6,depth@0.3",
        "methods.staged.grow=width",  # no point without trigger=slope
        "methods.staged.variant=zero",
    ):
        cfg = tiny_config("gpt", tmp_path / "run", "method=staged", bad)
        with pytest.raises((ConfigError, ValueError)):
            open_run(cfg, progress=False)


def test_grow_command_grows_a_checkpoint_that_resumes(tmp_path, capsys):
    from budgetlm.cli.grow import register
    from budgetlm.train.saved_run import evaluate_checkpoint

    args = ["budget=8steps", "train.eval_every=0", "model.positions=learned"]
    cfg = tiny_config("bert", tmp_path / "run", *args)
    run(cfg, stop_after=4)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "grown"
    ns = parser.parse_args(["grow", str(tmp_path / "run"), "--width", "2", "--out", str(out)])
    assert ns.func(ns) == 0
    assert "continue with: budgetlm train" in capsys.readouterr().out
    before = evaluate_checkpoint(tmp_path / "run")["val_loss"]
    after = evaluate_checkpoint(out)["val_loss"]  # built at the grown shape it records
    assert abs(after - before) < 1e-5
    # The grown run resumes at the grown shape and finishes the same budget.
    from budgetlm.config import load_config

    trainer, summary, _ = run(load_config(out / "config.yaml"), resume="auto")
    assert summary["status"] == "finished" and summary["steps"] == 8
    assert trainer.state.model.shape.d_model == 2 * cfg.model.d_model
    with pytest.raises(SystemExit):
        parser.parse_args(["grow", str(out), "--width", "2", "--depth", "2"])
