"""train.on_nonfinite: a NaN/inf loss, gradient norm or held-out loss never reaches the weights
or a checkpoint; `halt` stops at the bad step, `skip` drops its update but charges its work."""

import math

import pytest
import torch

from budgetlm.api import Method
from budgetlm.cli.main import main
from budgetlm.errors import EXIT_DIVERGED, DivergedError
from budgetlm.train import loop
from budgetlm.train.checkpoint import complete_checkpoints, load_checkpoint
from budgetlm.train.loop import Diverged
from budgetlm.train.metrics import read_metrics
from budgetlm.train.session import open_run

from .helpers import tiny_config, tiny_overrides

BAD_STEP = 3  # 1-based, as metrics.jsonl numbers steps: the weights after step 2 are the good ones


class PlantNaN(Method):
    """Makes step `at` (1-based) non-finite: its loss, one element of one gradient, or (after
    its optimizer step) one weight. Snapshots the state after every step for the tests."""

    name = "plant_nan"

    def __init__(self, where, at=BAD_STEP):
        self.where, self.at = where, at
        self.armed = False
        self.snapshots = {}  # step -> (params, optimizer state, tokens spent)

    def on_start(self, state):
        self.param = next(state.model.parameters())
        self.param.register_hook(self._grad_hook)

    def _grad_hook(self, grad):
        if not (self.armed and self.where == "grad"):
            return grad
        grad = grad.clone()
        grad.view(-1)[0] = math.nan
        return grad

    def plan_step(self, state, plan):
        self.armed = plan.step + 1 == self.at

    def after_forward(self, state, batch, output):
        if self.armed and self.where == "loss":
            output.loss = output.loss * math.nan

    def after_optimizer_step(self, state):
        if self.armed and self.where == "weight":
            with torch.no_grad():
                self.param.view(-1)[0] = math.nan

    def on_progress(self, state, p):
        params = [p.detach().clone() for p in state.model.parameters()]
        moments = {
            i: {k: v.clone() for k, v in s.items()}
            for i, s in state.optimizer.state_dict()["state"].items()
        }
        self.snapshots[state.step] = (params, moments, state.clock.spent["tokens"])


def _cfg(tmp_path, *overrides, name="run"):
    return tiny_config(
        "gpt",
        tmp_path / name,
        "budget=6steps",
        "schedule.name=constant",  # every step updates the weights, the first one too
        "train.eval_every=0",
        "train.checkpoint_every=0.1",  # a checkpoint after every step
        "train.keep_checkpoints=10",  # all kept, to scan
        *overrides,
    )


def _open(tmp_path, plant, *overrides):
    return open_run(_cfg(tmp_path, *overrides), methods=[plant], progress=False)


def _run(trainer, **kw):
    try:
        return trainer.run(**kw)
    finally:
        trainer.log.close()


def _checkpoints(trainer):
    """{step: model part} of every complete checkpoint; each must hold only finite weights."""
    found = {}
    for path in complete_checkpoints(trainer.run_dir / "checkpoints"):
        model = load_checkpoint(path)["model"]
        assert all(t.isfinite().all() for t in model.values()), path
        found[int(path.name.removeprefix("step_"))] = model
    return found


def _events(trainer, event):
    return [m for m in read_metrics(trainer.run_dir / "metrics.jsonl") if m["event"] == event]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize(("where", "what"), [("loss", "loss"), ("grad", "gradient norm")])
@pytest.mark.parametrize("grad_clip", ["1.0", "0"])
def test_halt_stops_at_the_bad_step_with_the_previous_weights(where, what, grad_clip, tmp_path):
    plant = PlantNaN(where)
    trainer = _open(tmp_path, plant, f"optim.grad_clip={grad_clip}")
    with pytest.raises(Diverged) as caught:
        _run(trainer)
    message = str(caught.value)
    assert isinstance(caught.value, DivergedError)
    assert f"the {what} is nan at step {BAD_STEP} (p=0.500)" in message, message
    assert "optim.lr" in message and "train.on_nonfinite=skip" in message
    # The bad step's update was not applied: the weights are still those after step k-1.
    good_params = plant.snapshots[BAD_STEP - 1][0]
    _assert_same(list(trainer.state.model.parameters()), good_params)
    assert trainer.state.step == BAD_STEP - 1
    assert [m["step"] for m in _events(trainer, "train")] == list(range(1, BAD_STEP))
    (record,) = _events(trainer, "diverged")
    assert (record["step"], record["nonfinite"]) == (BAD_STEP, what)
    # A checkpoint after every good step, none for the bad one, all finite.
    saved = _checkpoints(trainer)
    assert sorted(saved) == list(range(1, BAD_STEP))
    model = trainer.state.model.state_dict()
    assert all(torch.equal(saved[BAD_STEP - 1][k], model[k]) for k in saved[BAD_STEP - 1])
    assert not (trainer.run_dir / "summary.json").exists()


@pytest.mark.parametrize(("where", "what"), [("loss", "loss"), ("grad", "gradient norm")])
def test_skip_leaves_weights_and_optimizer_untouched_and_charges_the_step(where, what, tmp_path):
    plant = PlantNaN(where)
    trainer = _open(tmp_path, plant, "train.on_nonfinite=skip")
    summary = _run(trainer)
    assert summary["status"] == "finished" and summary["steps"] == 6
    assert summary["skipped_steps"] == 1
    snaps = plant.snapshots
    before, after = snaps[BAD_STEP - 1], snaps[BAD_STEP]
    _assert_same(after[0], before[0])  # parameters
    assert after[1].keys() == before[1].keys()
    for i, state in before[1].items():  # AdamW's exp_avg, exp_avg_sq and step counter
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
        for key in state:
            assert torch.equal(after[1][i][key], state[key]), (i, key)
    # The work was done, so it was charged like any other step; the run then trains on.
    per_step = snaps[1][2]
    assert [snaps[s][2] for s in range(1, 7)] == [per_step * s for s in range(1, 7)]
    assert not torch.equal(snaps[BAD_STEP + 1][0][0], after[0][0])
    (record,) = _events(trainer, "skipped")
    assert (record["step"], record["nonfinite"], record["grad_norm"]) == (BAD_STEP, what, None)
    assert (record["loss"] is None) == (where == "loss")  # NaN is written as null
    assert [m["step"] for m in _events(trainer, "train")] == [1, 2, 4, 5, 6]
    assert not _events(trainer, "diverged")
    assert sorted(_checkpoints(trainer)) == [1, 2, 3, 4, 5, 6]


def test_the_skip_count_survives_a_resume(tmp_path):
    cfg = _cfg(tmp_path, "train.on_nonfinite=skip")
    first = open_run(cfg, methods=[PlantNaN("loss")], progress=False)
    assert _run(first, stop_after=BAD_STEP + 1)["skipped_steps"] == 1
    resumed = open_run(cfg, resume="auto", methods=[PlantNaN("loss")], progress=False)
    assert resumed.state.step == BAD_STEP + 1
    summary = _run(resumed)
    assert summary["status"] == "finished" and summary["skipped_steps"] == 1
    assert [m["step"] for m in _events(resumed, "skipped")] == [BAD_STEP]


def test_a_non_finite_weight_is_never_checkpointed(tmp_path):
    # The weight goes NaN in the optimizer step: the loss and gradient of that step were finite.
    plant = PlantNaN("weight")
    trainer = _open(tmp_path, plant, "train.on_nonfinite=skip")
    with pytest.raises(Diverged, match=rf"a weight is NaN or infinite at step {BAD_STEP} "):
        _run(trainer)
    assert sorted(_checkpoints(trainer)) == list(range(1, BAD_STEP))
    (record,) = _events(trainer, "diverged")
    assert (record["step"], record["nonfinite"]) == (BAD_STEP, "weights")


def test_a_non_finite_held_out_loss_halts_whatever_the_policy(tmp_path, monkeypatch):
    real, calls = loop.heldout_sums, []

    def heldout_sums(*args, **kw):  # the second evaluation (after step 3 of 6) is NaN
        calls.append(1)
        total, count = real(*args, **kw)
        return (math.nan if len(calls) == 2 else total), count

    monkeypatch.setattr(loop, "heldout_sums", heldout_sums)
    plant = PlantNaN("nothing")
    trainer = _open(
        tmp_path, plant, "train.on_nonfinite=skip", "train.eval_every=0.5", "train.log_every=1"
    )
    with pytest.raises(Diverged, match=r"the held-out loss is nan at step 3 \(p=0.500\)"):
        _run(trainer)
    (record,) = _events(trainer, "diverged")
    assert (record["step"], record["nonfinite"]) == (3, "held-out loss")
    assert [m["step"] for m in _events(trainer, "eval")] == [0]
    # Evaluation comes before the checkpoint of that step: it was not written.
    assert sorted(_checkpoints(trainer)) == [1, 2]


def test_cli_exits_3_with_a_one_line_message(tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = main(
        [
            "train",
            "--quiet",
            *tiny_overrides("gpt", run_dir),
            "budget=20steps",
            "optim.lr=1e6",  # diverges within a few steps
            "schedule.name=constant",
            "train.checkpoint_every=0.05",
            "train.keep_checkpoints=30",
            "train.on_nonfinite=halt",
        ]
    )
    err = capsys.readouterr().err
    assert rc == EXIT_DIVERGED == 3
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert line.startswith("budgetlm train: error: diverged: the ")
    (record,) = [m for m in read_metrics(run_dir / "metrics.jsonl") if m["event"] == "diverged"]
    assert f"at step {record['step']} " in line
    for path in complete_checkpoints(run_dir / "checkpoints"):
        assert all(t.isfinite().all() for t in load_checkpoint(path)["model"].values()), path
    assert not (run_dir / "summary.json").exists()
