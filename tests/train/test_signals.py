"""SIGINT/SIGTERM: the first asks for a checkpoint and a clean exit (130); the ones after it,
even in the middle of writing that checkpoint, must not break it."""

import signal

import pytest

from budgetlm.cli.main import main
from budgetlm.errors import EXIT_INTERRUPTED
from budgetlm.train import checkpoint, loop
from budgetlm.train.checkpoint import complete_checkpoints, load_checkpoint
from budgetlm.train.metrics import read_metrics
from budgetlm.train.session import open_run

from .helpers import tiny_config, tiny_overrides


def _raise(*signums):
    """Deliver signals to this process; only while the loop's handler is installed (the default
    one would end the test run)."""
    for signum in signums:
        if not callable(signal.getsignal(signum)):
            pytest.fail(f"no Python handler for {signal.Signals(signum).name} during training")
        signal.raise_signal(signum)


def _signals_mid_save(monkeypatch, *signums):
    """The run's first checkpoint write receives `signums` between its first and second file."""
    real = checkpoint.save_file
    calls = []

    def save_file(*args, **kw):
        calls.append(1)
        if len(calls) == 2:  # the model's tensors are on disk, the rest is not
            _raise(*signums)
        return real(*args, **kw)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    return calls


def _assert_complete(run_dir, steps):
    found = complete_checkpoints(run_dir / "checkpoints")
    assert [int(p.name.removeprefix("step_")) for p in found] == steps
    for path in found:
        assert load_checkpoint(path)["trainer"]["step"] == int(path.name.removeprefix("step_"))
    assert not list((run_dir / "checkpoints").glob("*.tmp"))


def test_a_second_signal_during_the_checkpoint_does_not_break_it(tmp_path, monkeypatch, capfd):
    run_dir = tmp_path / "run"
    args = ["train", "--quiet", *tiny_overrides("gpt", run_dir), "budget=6steps"]
    real_observe = loop.Trainer._observe

    def observe(self, *a, **kw):  # the first SIGTERM arrives during step 2
        real_observe(self, *a, **kw)
        if self.state.step == 2:
            _raise(signal.SIGTERM)

    monkeypatch.setattr(loop.Trainer, "_observe", observe)
    # ... and a second SIGTERM and a Ctrl-C while the checkpoint it asked for is being written.
    _signals_mid_save(monkeypatch, signal.SIGTERM, signal.SIGINT)
    try:
        rc = main(args)
    except KeyboardInterrupt:
        pytest.fail("a repeated signal raised KeyboardInterrupt in the middle of the checkpoint")
    err = capfd.readouterr().err
    assert rc == EXIT_INTERRUPTED == 130
    assert "already stopping" in err and "interrupted at step 2; checkpoint saved" in err
    _assert_complete(run_dir, [2])
    # The checkpoint is a good one: the run continues from it to the end of its budget.
    monkeypatch.undo()
    assert main([*args, "--resume", "auto"]) == 0
    train = [m["step"] for m in read_metrics(run_dir / "metrics.jsonl") if m["event"] == "train"]
    assert train == [1, 2, 3, 4, 5, 6]


def test_signals_during_a_periodic_checkpoint_stop_after_the_next_step(tmp_path, monkeypatch):
    cfg = tiny_config(
        "gpt", tmp_path / "run", "budget=6steps", "train.checkpoint_every=0.5", "train.eval_every=0"
    )
    trainer = open_run(cfg, progress=False)
    handler = signal.getsignal(signal.SIGTERM)
    # All three arrive while the checkpoint at p = 0.5 (step 3) is written.
    _signals_mid_save(monkeypatch, signal.SIGTERM, signal.SIGTERM, signal.SIGINT)
    try:
        summary = trainer.run()
    except KeyboardInterrupt:
        pytest.fail("a repeated signal raised KeyboardInterrupt in the middle of the checkpoint")
    finally:
        trainer.log.close()
    assert (summary["status"], summary["steps"]) == ("interrupted", 4)
    _assert_complete(trainer.run_dir, [3, 4])
    assert signal.getsignal(signal.SIGTERM) is handler  # the loop's handler is gone
