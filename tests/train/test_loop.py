import json
import math

import pytest
import torch

from budgetlm.api import Method
from budgetlm.train.metrics import read_metrics
from budgetlm.train.session import open_run

from .helpers import tiny_config

FAMILIES = ["gpt", "bert", "t5"]


def _train(cfg, methods=(), timer=None, **kw):
    trainer = open_run(cfg, methods=methods, progress=False)
    if timer is not None:
        trainer.state.clock.timer = timer
    summary = trainer.run(**kw)
    trainer.log.close()
    return trainer, summary, read_metrics(trainer.run_dir / "metrics.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_learns_on_its_tiny_preset(family, tmp_path):
    cfg = tiny_config(
        family,
        tmp_path / "run",
        "budget=100steps",
        "train.eval_every=1.0",
        "model.seq_len=64",
        "model.n_layers=2",
        "model.d_model=64",
        "model.d_ff=256",
        "model.n_heads=4",
        "model.d_kv=16",
        "train.eval_batches=4",
    )
    trainer, summary, metrics = _train(cfg)
    evals = [m for m in metrics if m["event"] == "eval"]
    initial, final = evals[0]["val_loss"], evals[-1]["val_loss"]
    vocab = trainer.state.model.shape.vocab_size
    assert summary["status"] == "finished" and summary["steps"] == 100
    assert final < initial - 1.0, (initial, final)
    assert final < math.log(vocab) - 1.0
    assert json.loads((trainer.run_dir / "summary.json").read_text())["final_val_loss"] == final


class FakeTimer:
    """Each step takes 0.25 s of pretend wall time (start_step and charge each read it once)."""

    def __init__(self):
        self.t = 0.0
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.calls % 2 == 0:
            self.t += 0.25
        return self.t


@pytest.mark.parametrize("budget", ["13steps", "3000 tokens", "2e9 flops", "3.1s"])
@pytest.mark.parametrize(
    "schedule", ["one_cycle", "warmup_cosine", "warmup_linear", "wsd", "constant"]
)
def test_last_step_runs_at_the_final_lr_and_stops_within_one_step(budget, schedule, tmp_path):
    cfg = tiny_config(
        "gpt",
        tmp_path / "run",
        f"budget={budget}",
        f"schedule.name={schedule}",
        "train.eval_every=0",
        "train.checkpoint_every=0",
    )
    timer = FakeTimer() if budget.endswith("s") and not budget.endswith("steps") else None
    trainer, summary, metrics = _train(cfg, timer=timer)
    train = [m for m in metrics if m["event"] == "train"]
    assert len(train) == summary["steps"] > 3
    assert train[-1]["lr"] == trainer.schedule.final
    clock = trainer.state.clock
    unit = clock.budget.unit
    per_step = clock.spent[unit] / summary["steps"]
    assert 0 <= clock.spent[unit] - clock.budget.amount < per_step + 1e-9


class Recorder(Method):
    """Drops the last decoder block on every step and records the events it sees."""

    name = "recorder"

    def __init__(self):
        self.events = []
        self.seen_per_example = []

    def on_start(self, state):
        self.events.append("start")

    def plan_step(self, state, plan):
        self.events.append("plan")
        plan.active = {"decoder": [0]}

    def before_batch(self, state, plan, batch):
        self.events.append("batch")
        return batch

    def after_forward(self, state, batch, output):
        self.events.append("forward")
        self.seen_per_example.append(output.per_example_loss.shape[0])

    def before_optimizer_step(self, state):
        self.events.append("before_opt")
        # The dropped block got no gradient: it was not run.
        assert all(p.grad is None for p in state.model.layer_stacks()["decoder"][1].parameters())

    def after_optimizer_step(self, state):
        self.events.append("after_opt")

    def on_progress(self, state, p):
        self.events.append("progress")

    def state_dict(self):
        return {"n": len(self.events)}


def test_methods_hook_in_and_dropped_layers_are_not_charged(tmp_path):
    full_cfg = tiny_config("gpt", tmp_path / "full", "budget=4steps", "train.eval_every=0")
    full, _, _ = _train(full_cfg)
    rec = Recorder()
    cfg = tiny_config(
        "gpt", tmp_path / "drop", "budget=4steps", "train.eval_every=0", "train.micro_batch_size=4"
    )
    dropped, _, _ = _train(cfg, methods=[rec])
    per_step = [
        "plan",
        "batch",
        "batch",
        "forward",
        "forward",
        "before_opt",
        "after_opt",
        "progress",
    ]
    assert rec.events == ["start"] + per_step * 4
    assert rec.seen_per_example == [4] * 8
    # Half the blocks ran, so fewer FLOPs were charged for the same tokens.
    assert dropped.state.clock.spent["tokens"] == full.state.clock.spent["tokens"]
    assert dropped.state.clock.spent["flops"] < 0.9 * full.state.clock.spent["flops"]


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    one = tiny_config("bert", tmp_path / "a", "budget=3steps", "train.eval_every=0")
    four = tiny_config(
        "bert", tmp_path / "b", "budget=3steps", "train.eval_every=0", "train.micro_batch_size=2"
    )
    a, _, ma = _train(one)
    b, _, mb = _train(four)
    for x, y in zip(a.state.model.parameters(), b.state.model.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    assert [m["loss"] for m in ma if m["event"] == "train"] == pytest.approx(
        [m["loss"] for m in mb if m["event"] == "train"], rel=1e-5
    )


def test_run_directory_contents(tmp_path):
    cfg = tiny_config("t5", tmp_path / "run", "budget=4steps", "train.checkpoint_every=0.5")
    trainer, summary, _ = _train(cfg)
    d = trainer.run_dir
    for name in ("config.yaml", "meta.json", "metrics.jsonl", "summary.json"):
        assert (d / name).is_file(), name
    meta = json.loads((d / "meta.json").read_text())
    assert torch.__version__.startswith(meta["attempts"][0]["packages"]["torch"])
    assert meta["params"] == sum(p.numel() for p in trainer.state.model.parameters())
    ckpts = sorted(p.name for p in (d / "checkpoints").iterdir())
    assert ckpts == ["step_000002", "step_000004"]
