"""One process per run folder: a second one is refused with RunBusy (exit 4) naming the holder,
a lock left by a dead process is taken over with a warning, a grid cell's own run re-enters the
lock its process holds, and a run started by hand on a cell's folder meanwhile is refused."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from budgetlm.cli import main
from budgetlm.config import dump_yaml
from budgetlm.errors import EXIT_BUSY, RunBusy
from budgetlm.train import run_lock
from budgetlm.train.metrics import read_metrics

from .helpers import tiny_config, tiny_overrides

HOLDER = textwrap.dedent(
    """
    import sys
    from budgetlm.train.run_lock import acquire
    try:
        lock = acquire(sys.argv[1])
    except Exception as e:
        print(type(e).__name__, e, flush=True)
        sys.exit(getattr(e, "exit_code", 1))
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the test closes our stdin
    if sys.argv[2:] == ["release"]:
        lock.release()
    """
)


def _holder(run_dir, *extra):
    """A process holding the run lock of `run_dir` until its stdin is closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _try_lock(run_dir):
    """(exit code, output) of another process trying to take the lock."""
    out = subprocess.run(
        [sys.executable, "-c", HOLDER, str(run_dir)],
        input="",
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.returncode, out.stdout


def _train(run_dir, *extra):
    return ["train", "--quiet", *tiny_overrides("gpt", run_dir), "budget=4steps", *extra]


def test_a_second_process_is_refused_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train(run, "--stop-after", "2")) == 0
    metrics = (run / "metrics.jsonl").read_bytes()
    holder = _holder(run, "release")
    try:
        capsys.readouterr()
        assert main(_train(run, "--resume", "auto")) == EXIT_BUSY
        err = capsys.readouterr().err
        assert f"{run} is in use by pid {holder.pid} on {socket.gethostname()} since " in err
        assert "one process per run folder" in err
        assert (run / "metrics.jsonl").read_bytes() == metrics  # untouched
        with pytest.raises(RunBusy):
            run_lock.acquire(run)
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    # Released cleanly: the next run takes the lock without a word about it.
    assert main(_train(run, "--resume", "auto")) == 0
    assert "took over" not in capsys.readouterr().err
    assert not (run / run_lock.LOCK_NAME).exists()  # released: the lock file is gone


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path, capsys):
    run = tmp_path / "run"
    holder = _holder(run)
    holder.send_signal(signal.SIGKILL)  # dies holding it: its lock file stays behind
    holder.wait(timeout=60)
    left = json.loads((run / run_lock.LOCK_NAME).read_text())
    assert left["pid"] == holder.pid
    assert main(_train(run)) == 0
    err = capsys.readouterr().err
    message = f"took over the lock of {run} from pid {holder.pid} on {socket.gethostname()}"
    assert message in err
    summary = json.loads((run / "summary.json").read_text())
    assert any(message in w for w in summary["warnings"])
    logged = [m for m in read_metrics(run / "metrics.jsonl") if m["event"] == "warning"]
    assert any(message in m["message"] for m in logged)


def test_the_lock_lives_as_long_as_the_trainer(tmp_path):
    from budgetlm.train.session import open_run

    run = tmp_path / "run"
    trainer = open_run(tiny_config("gpt", run, "budget=2steps"), progress=False)
    try:
        code, out = _try_lock(run)
        assert code == EXIT_BUSY, out
        assert f"pid {os.getpid()}" in out
        # The same process may open its run folder again (re-entrant), e.g. to resume it.
        again = run_lock.acquire(run)
        again.release()
        assert _try_lock(run)[0] == EXIT_BUSY  # still held by the trainer
        trainer.run()
    finally:
        trainer.log.close()
    assert _try_lock(run)[0] == 0


def test_a_cell_reenters_its_lock_and_a_run_by_hand_on_its_folder_is_refused(tmp_path, monkeypatch):
    from budgetlm.compare.run import cell
    from budgetlm.train import session

    cell_dir = tmp_path / "cells" / "a"
    cell_dir.mkdir(parents=True)
    cfg = tiny_config("gpt", cell_dir, "budget=2steps")
    (cell_dir / cell.CELL_CONFIG).write_text(dump_yaml(cfg))
    by_hand = {}
    real_open_run = session.open_run

    def open_run_then_try_by_hand(*args, **kwargs):
        trainer = real_open_run(*args, **kwargs)
        # While the cell process trains: `budgetlm train --resume auto` on its folder.
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "budgetlm",
                *_train(cell_dir, "budget=2steps"),
                "--resume",
                "auto",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        by_hand["code"], by_hand["err"] = out.returncode, out.stderr
        return trainer

    monkeypatch.setattr(session, "open_run", open_run_then_try_by_hand)
    assert cell.run_cell(cell_dir) == 0  # its open_run re-entered the lock: no deadlock
    assert by_hand["code"] == EXIT_BUSY, by_hand["err"][-2000:]
    assert f"in use by pid {os.getpid()}" in by_hand["err"]
    assert json.loads((cell_dir / "summary.json").read_text())["status"] == "finished"
    assert not (cell_dir / cell.ERROR_FILE).exists()
    assert _try_lock(cell_dir)[0] == 0  # released when the cell finished


def test_a_forked_child_does_not_inherit_the_right_to_the_lock(tmp_path):
    run = tmp_path / "run"
    lock = run_lock.acquire(run)
    try:
        pid = os.fork()
        if pid == 0:  # the child: refused, although the parent's entry was copied into it
            try:
                run_lock.acquire(run)
            except RunBusy:
                os._exit(4)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 4
    finally:
        lock.release()


def test_under_torchrun_rank_0_locks_and_no_rank_waits_for_a_refused_one(tmp_path):
    run = tmp_path / "run"
    config = tmp_path / "cfg.yaml"
    config.write_text(dump_yaml(tiny_config("gpt", run, "budget=2steps", "train.threads=1")))
    holder = _holder(run, "release")
    try:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc_per_node=2", "-m", "budgetlm", "train", str(config), "--quiet"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        # timeout: a hang guard (rank 1 waiting for rank 0 forever), not a speed test
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-3000:]
    assert f"is in use by pid {holder.pid}" in out  # rank 0's message
    assert "rank 0 could not open the run folder" in out  # rank 1's
    assert not (run / "metrics.jsonl").exists()
