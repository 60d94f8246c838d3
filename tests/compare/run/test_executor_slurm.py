"""The Slurm executor (submitit). Real processes through submitit's local executor: the same
pickled job, signal handling and requeue as on a cluster, cells real tiny runs. The Slurm side
(sbatch script, sacct states, scancel) against stand-in commands on PATH."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from budgetlm.cli import main
from budgetlm.compare.run.executors.base import CellLaunch, ExecutorError
from budgetlm.errors import EXIT_FAILED, EXIT_INTERRUPTED

submitit = pytest.importorskip(
    "submitit", reason="the Slurm executor needs submitit: pip install 'budgetlm[slurm]'"
)

from budgetlm.compare.run.executors import slurm  # noqa: E402
from budgetlm.compare.run.executors.slurm import CellJob, SlurmExecutor  # noqa: E402

from .tiny_grid import (  # noqa: E402
    ARMS,
    paused_env,
    small_gpt,
    summary_table,
    wait_for,
)

SMALL_GPT = small_gpt()
CELLS = [f"{arm}/40steps/seed{seed}" for arm in ("baseline", "lion") for seed in (1, 2)]
CELL = "baseline/40steps/seed1"  # the one the interruption tests stop


def experiment_file(folder: Path) -> Path:
    raw = {"name": "slurm", "config": SMALL_GPT, "budgets": ["40steps"], "seeds": [1, 2]}
    path = folder / "slurm.yaml"
    path.write_text(yaml.safe_dump({**raw, "arms": ARMS}))
    return path


def final_state(run_dir: Path) -> tuple[dict, dict]:
    """The weights and optimizer state of the run's last checkpoint (its final step)."""
    last = sorted((run_dir / "checkpoints").iterdir())[-1]
    return load_file(last / "model.safetensors"), load_file(last / "optimizer.safetensors")


def assert_same_training(a: Path, b: Path) -> None:
    import torch

    (wa, oa), (wb, ob) = final_state(a), final_state(b)
    assert wa.keys() == wb.keys() and oa.keys() == ob.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.equal(oa[k], ob[k]) for k in oa)
    loss = [json.loads((d / "summary.json").read_text())["final_val_loss"] for d in (a, b)]
    assert loss[0] == loss[1]


def wait_for_end(handle) -> int:
    wait_for(lambda: handle.poll() is not None, "the job to end")
    return handle.poll()


def local_executor(out: Path, jobs: int = 2, wait: bool = True) -> SlurmExecutor:
    return SlurmExecutor(
        out / "slurm",
        jobs=jobs,
        partition=None,
        account=None,
        time_min=60,
        gpus_per_cell=0,
        cpus_per_cell=1,
        mem_gb=None,
        wait=wait,
        cluster="local",
    )


def planned(tmp_path: Path) -> Path:
    """A grid folder whose cells' configs are written (`compare --plan`), nothing run."""
    out = tmp_path / "out"
    args = ["compare", str(experiment_file(tmp_path)), "--out", str(out), "--threads", "1"]
    assert main([*args, "--plan", "--quiet"]) == 0
    return out


def run_record(run_dir: Path) -> dict:
    wait_for(lambda: slurm.read_record(run_dir, slurm.RUN_RECORD), "the job to start the cell")
    return slurm.read_record(run_dir, slurm.RUN_RECORD)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same grid run as local processes (`budgetlm compare` without an executor)."""
    tmp = tmp_path_factory.mktemp("local")
    out = tmp / "out"
    args = ["compare", str(experiment_file(tmp)), "--out", str(out), "--jobs", "2"]
    assert main([*args, "--threads", "1", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def slurm_grid(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("slurm")
    out = tmp / "out"
    args = ["compare", str(experiment_file(tmp)), "--out", str(out), "--jobs", "2"]
    executor = ["--executor", "slurm", "--cluster", "local", "--gpus-per-cell", "0"]
    assert main([*args, *executor, "--threads", "1", "--quiet"]) == 0
    return out


# -- a whole grid -----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_grid_of_submitit_jobs_trains_what_local_processes_train(slurm_grid, reference):
    assert summary_table(slurm_grid) == summary_table(reference)
    for cell in CELLS:
        run_dir = slurm_grid / "cells" / cell
        assert_same_training(run_dir, reference / "cells" / cell)
        record = slurm.read_record(run_dir)
        assert record["cluster"] == "local" and record["ended"]["code"] == 0
        job = record["job_id"]
        assert (slurm_grid / "slurm" / f"{job}_0_result.pkl").is_file()
        assert f"(job {job} on " in (run_dir / "cell.log").read_text()
        assert slurm.read_record(run_dir, slurm.RUN_RECORD)["attempt"] == 1


@pytest.mark.slow
def test_a_rerun_of_a_finished_grid_submits_nothing(slurm_grid):
    before = sorted(p.name for p in (slurm_grid / "slurm").iterdir())
    args = ["compare", str(slurm_grid.parent / "slurm.yaml"), "--out", str(slurm_grid)]
    executor = ["--executor", "slurm", "--cluster", "local", "--gpus-per-cell", "0"]
    assert main([*args, *executor, "--threads", "1", "--quiet"]) == 0
    assert sorted(p.name for p in (slurm_grid / "slurm").iterdir()) == before


# -- preemption, time limits, stops -----------------------------------------------------------
@pytest.mark.slow
def test_the_time_limit_signal_checkpoints_requeues_and_resumes_bit_exactly(tmp_path, reference):
    # USR2 to the job is what Slurm sends signal_delay_s before the time limit (and what
    # submitit's local controller sends its tasks): submitit calls CellJob.checkpoint, which
    # stops the cell with a checkpoint; the job is requeued and the cell resumes from it.
    out = planned(tmp_path)
    run_dir = out / "cells" / CELL
    paused = tmp_path / "paused"
    executor = local_executor(out)
    handle = executor.start(CellLaunch(CELL, run_dir, 1, paused_env(run_dir, paused)))
    job_id = handle.job_id
    wait_for(paused.exists, "the cell's first checkpoint")
    os.kill(run_record(run_dir)["pid"], signal.SIGUSR2)

    assert wait_for_end(handle) == 0
    assert handle.job_id == job_id  # the same job, requeued: not a new submission
    assert slurm.read_record(run_dir, slurm.RUN_RECORD)["attempt"] == 2
    attempts = json.loads((run_dir / "meta.json").read_text())["attempts"]
    assert len(attempts) == 2 and attempts[1]["resumed_from"]
    log = (out / "slurm" / f"{job_id}_0_log.err").read_text()
    assert "Caught signal SIGUSR2" in log  # submitit's handler: checkpoint, then requeue
    assert_same_training(run_dir, reference / "cells" / CELL)
    assert executor.free_slots() == 2


@pytest.mark.slow
def test_a_sigterm_the_grid_did_not_send_submits_the_cell_again(tmp_path, reference):
    # Slurm preemption (PreemptMode=CANCEL) or an administrator: SIGTERM reaches the cell, which
    # checkpoints and exits 130 without the grid having asked; the handle submits it again.
    out = planned(tmp_path)
    run_dir = out / "cells" / CELL
    paused = tmp_path / "paused"
    handle = local_executor(out).start(CellLaunch(CELL, run_dir, 1, paused_env(run_dir, paused)))
    first = handle.job_id
    wait_for(paused.exists, "the cell's first checkpoint")
    os.kill(run_record(run_dir)["cell_pid"], signal.SIGTERM)

    assert wait_for_end(handle) == 0
    record = slurm.read_record(run_dir)
    assert record["previous_jobs"] == [first] and record["job_id"] == handle.job_id != first
    assert record["ended"]["code"] == 0
    assert_same_training(run_dir, reference / "cells" / CELL)


@pytest.mark.slow
def test_no_wait_leaves_the_job_running_and_the_next_grid_attaches_to_it(tmp_path, reference):
    out = planned(tmp_path)
    run_dir = out / "cells" / CELL
    paused = tmp_path / "paused"
    first = local_executor(out, wait=False)
    handle = first.start(CellLaunch(CELL, run_dir, 1, paused_env(run_dir, paused)))
    wait_for(paused.exists, "the cell's first checkpoint")
    handle.detach()
    first.close()  # the grid of `compare --no-wait` exits: its job goes on
    assert "ended" not in slurm.read_record(run_dir)

    # The next grid: `start` of the cell follows the job in flight instead of submitting it.
    second = local_executor(out)
    attached = second.start(CellLaunch(CELL, run_dir, 1))
    assert attached.job_id == handle.job_id and attached.poll() is None
    assert second.free_slots() == 1
    assert len(list((out / "slurm").glob("*_submitted.pkl"))) == 1
    assert second.attach(out / "cells" / "lion/40steps/seed1") is None  # nothing recorded

    attached.stop()  # Ctrl-C: the cell checkpoints and stops, the job is not requeued
    assert wait_for_end(attached) == EXIT_INTERRUPTED
    assert not (run_dir / "summary.json").exists()
    assert slurm.read_record(run_dir)["ended"]["code"] == EXIT_INTERRUPTED
    assert second.attach(run_dir) is None and second.free_slots() == 2

    again = second.start(CellLaunch(CELL, run_dir, 1))  # a new job resumes the cell
    assert again.job_id != handle.job_id
    assert wait_for_end(again) == 0
    attempts = json.loads((run_dir / "meta.json").read_text())["attempts"]
    assert len(attempts) == 2 and attempts[1]["resumed_from"]
    assert_same_training(run_dir, reference / "cells" / CELL)


@pytest.mark.slow
def test_a_job_lost_without_a_result_fails_its_cell_with_the_reason(tmp_path, reference):
    out = planned(tmp_path)
    run_dir = out / "cells" / CELL
    paused = tmp_path / "paused"
    handle = local_executor(out).start(CellLaunch(CELL, run_dir, 1, paused_env(run_dir, paused)))
    wait_for(paused.exists, "the cell's first checkpoint")
    os.kill(run_record(run_dir)["pid"], signal.SIGKILL)  # the job dies (out of memory, a node)

    assert wait_for_end(handle) == EXIT_FAILED
    error = json.loads((run_dir / "error.json").read_text())
    assert "without a result" in error["message"] and handle.job_id in error["message"]
    # The orphaned cell notices and stops on its own, checkpointing, as for a killed grid, and
    # lets go of the cell's lock (a file while held: train/shared_lock.py).
    wait_for(lambda: not (run_dir / ".lock").exists(), "the orphaned cell to stop")


# -- the callable -----------------------------------------------------------------------------
def test_the_job_callable_pickles_without_its_process(tmp_path):
    import cloudpickle

    fn = CellJob(str(tmp_path), "a/1steps/seed1", 2, {"X": "1"}, str(tmp_path))
    fn._cell, fn._code = object(), 0  # what a running job holds
    copy = cloudpickle.loads(cloudpickle.dumps(fn))
    assert copy._cell is None and copy._code is None
    assert (copy.run_dir, copy.cell_id, copy.threads, copy.env) == (
        str(tmp_path),
        "a/1steps/seed1",
        2,
        {"X": "1"},
    )
    assert type(copy.checkpoint()).__name__ == "DelayedSubmission"


def test_a_cell_on_several_gpus_trains_through_torchrun(tmp_path, monkeypatch):
    from budgetlm.compare.run.cell import GRID_PID_ENV

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # as Slurm sets it for the job
    one = CellJob(str(tmp_path), "a", 4, {}, str(tmp_path))
    two = CellJob(str(tmp_path), "a", 4, {}, str(tmp_path), ranks=2)
    assert one.command()[1:] == ["-m", "budgetlm.compare.run.cell", str(tmp_path)]
    assert two.command()[1:6] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    env = two.environment()
    assert env[GRID_PID_ENV] == str(os.getpid()) and env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env["OMP_NUM_THREADS"] == "4" and GRID_PID_ENV not in one.environment()


def test_settings_that_cannot_work_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    with pytest.raises(ExecutorError, match="no Slurm here"):
        SlurmExecutor(tmp_path / "slurm", jobs=1)
    with pytest.raises(ExecutorError, match="--cluster local"):
        SlurmExecutor(tmp_path / "slurm", jobs=1, cluster="debug")


# -- the Slurm side, against stand-in commands ------------------------------------------------
FAKE_COMMANDS = {
    "srun": "exit 0",
    "sbatch": (
        'if [ -e "$FAKE_SLURM/refuse" ]; then cat "$FAKE_SLURM/refuse" >&2; exit 1; fi\n'
        'n=$(cat "$FAKE_SLURM/next" 2>/dev/null || echo 4242)\n'
        'echo $((n + 1)) > "$FAKE_SLURM/next"\n'
        'cp "$1" "$FAKE_SLURM/sbatch-$n.sh"; echo "Submitted batch job $n"'
    ),
    "sacct": 'echo "JobID|State|NodeList"; cat "$FAKE_SLURM/sacct" 2>/dev/null; exit 0',
    "scancel": 'echo "$*" >> "$FAKE_SLURM/scancel"',
    "scontrol": 'echo "$*" >> "$FAKE_SLURM/scontrol"',
}


class FakeSlurm:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def states(self, **states: str) -> None:
        """sacct's answer: job id (`j4242=...`) -> "STATE" or "STATE|node"."""
        lines = [f"{k[1:]}|{v}" if "|" in v else f"{k[1:]}|{v}|node7" for k, v in states.items()]
        (self.folder / "sacct").write_text("".join(f"{line}\n" for line in lines))

    def script(self, job_id: str) -> str:
        return (self.folder / f"sbatch-{job_id}.sh").read_text()

    def scancel(self) -> list[str]:
        path = self.folder / "scancel"
        return path.read_text().splitlines() if path.exists() else []

    def result(self, executor: SlurmExecutor, job_id: str, outcome: str, value) -> None:
        import cloudpickle

        path = executor.folder / f"{job_id}_0_result.pkl"
        path.write_bytes(cloudpickle.dumps((outcome, value)))


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> FakeSlurm:
    folder, bin_dir = tmp_path / "fake-slurm", tmp_path / "fake-slurm" / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in FAKE_COMMANDS.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("FAKE_SLURM", str(folder))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(slurm, "NODE_LOCAL", ())  # pytest's folders are under /tmp
    monkeypatch.setattr(slurm, "RESULT_GRACE_SECONDS", 0.0)
    monkeypatch.setattr(slurm, "STATE_REFRESH_SECONDS", 0.0)  # sacct at every poll
    submitit.SlurmJob.watcher.clear()
    return FakeSlurm(folder)


def slurm_executor(tmp_path: Path, **options) -> SlurmExecutor:
    settings = {
        "jobs": 2,
        "partition": "gpu",
        "account": "lab",
        "time_min": 240,
        "gpus_per_cell": 1,
        "cpus_per_cell": 8,
        "mem_gb": 32,
        "wait": True,
        "cluster": None,
        **options,
    }
    return SlurmExecutor(tmp_path / "slurm", **settings)


def cell_dir(tmp_path: Path, name: str = "a") -> Path:
    run_dir = tmp_path / "cells" / name
    run_dir.mkdir(parents=True)
    return run_dir


def test_each_cell_is_an_sbatch_job_with_the_executor_settings(tmp_path, fake_slurm):
    executor = slurm_executor(tmp_path)
    assert executor.describe() == (
        "slurm (submitit): partition gpu, account lab, 240 min per job, "
        "1 GPU, 8 CPU, 32 GB per cell, up to 2 in flight"
    )
    handle = executor.start(CellLaunch("arm/1steps/seed1", cell_dir(tmp_path), 8))
    assert handle.job_id == "4242" and executor.free_slots() == 1
    script = fake_slurm.script("4242")
    for flag in (
        "--partition=gpu",
        "--account=lab",
        "--time=240",
        "--gpus-per-node=1",
        "--cpus-per-task=8",
        "--mem=32GB",
        "--job-name=budgetlm:arm/1steps/seed1",
        "--signal=USR2@90",  # the time-limit signal CellJob.checkpoint answers
    ):
        assert f"#SBATCH {flag}" in script, flag
    record = slurm.read_record(tmp_path / "cells" / "a")
    assert record["job_id"] == "4242" and record["threads"] == 8


def test_a_submission_slurm_refuses_is_a_one_line_error(tmp_path, fake_slurm):
    refusal = "sbatch: error: invalid partition specified: gpu"
    (tmp_path / "fake-slurm" / "refuse").write_text(refusal + "\n")
    with pytest.raises(ExecutorError, match=f"cell a was not submitted: .*{refusal}"):
        slurm_executor(tmp_path).start(CellLaunch("a", cell_dir(tmp_path), 1))


def test_a_cpu_only_cell_asks_for_no_gpu(tmp_path, fake_slurm):
    slurm_executor(tmp_path, gpus_per_cell=0).start(CellLaunch("a", cell_dir(tmp_path), 1))
    assert "gpus-per-node" not in fake_slurm.script("4242")


def test_slurm_states_map_to_the_grid(tmp_path, fake_slurm):
    executor = slurm_executor(tmp_path, jobs=4)
    handles = [executor.start(CellLaunch(n, cell_dir(tmp_path, n), 1)) for n in "abcd"]
    fake_slurm.states(j4242="PENDING", j4243="RUNNING", j4244="RUNNING", j4245="RUNNING")
    assert [h.poll() for h in handles] == [None] * 4
    assert handles[1].where == "slurm job 4243 on node7"

    fake_slurm.result(executor, "4243", "success", 0)  # finished
    fake_slurm.result(executor, "4244", "success", 2)  # the cell refused its config
    fake_slurm.states(
        j4242="NODE_FAIL", j4243="COMPLETED", j4244="COMPLETED", j4245="CANCELLED by 7"
    )
    assert [h.poll() for h in handles] == [EXIT_FAILED, 0, 2, EXIT_INTERRUPTED]
    error = json.loads((tmp_path / "cells" / "a" / "error.json").read_text())
    assert "NODE_FAIL" in error["message"] and "slurm job 4242" in error["message"]
    assert not (tmp_path / "cells" / "b" / "error.json").exists()
    assert executor.free_slots() == 4
    assert slurm.read_record(tmp_path / "cells" / "c")["ended"]["code"] == 2


def test_a_job_that_failed_around_the_cell_writes_its_error(tmp_path, fake_slurm):
    executor = slurm_executor(tmp_path)
    handle = executor.start(CellLaunch("a", cell_dir(tmp_path), 1))
    trace = "Traceback...\nsubmitit.core.utils.UncompletedJobError: timed-out too many times."
    fake_slurm.result(executor, "4242", "error", trace)
    fake_slurm.states(j4242="FAILED")
    assert handle.poll() == EXIT_FAILED
    error = json.loads((tmp_path / "cells" / "a" / "error.json").read_text())
    assert "timed-out too many times" in error["message"]


def test_stop_signals_the_job_and_kill_cancels_it(tmp_path, fake_slurm):
    executor = slurm_executor(tmp_path)
    stopped = executor.start(CellLaunch("a", cell_dir(tmp_path, "a"), 1))
    killed = executor.start(CellLaunch("b", cell_dir(tmp_path, "b"), 1))
    stopped.stop()
    killed.kill()
    assert fake_slurm.scancel() == ["--state=PENDING 4242", "--signal=TERM 4242", "4243"]
    fake_slurm.result(executor, "4242", "success", EXIT_INTERRUPTED)  # it checkpointed
    fake_slurm.states(j4242="COMPLETED", j4243="CANCELLED by 1000")
    assert stopped.poll() == EXIT_INTERRUPTED and killed.poll() == EXIT_INTERRUPTED
    assert not list((tmp_path / "cells").glob("*/error.json"))
    assert not (tmp_path / "fake-slurm" / "sbatch-4244.sh").exists()  # nothing resubmitted


def test_a_cell_stopped_behind_the_grids_back_is_submitted_again(tmp_path, fake_slurm):
    executor = slurm_executor(tmp_path)
    handle = executor.start(CellLaunch("a", cell_dir(tmp_path), 1))
    fake_slurm.result(executor, "4242", "success", EXIT_INTERRUPTED)
    fake_slurm.states(j4242="PREEMPTED")  # PreemptMode=CANCEL: the job is over
    assert handle.poll() is None
    assert handle.job_id == "4243" and fake_slurm.script("4243")
    assert slurm.read_record(tmp_path / "cells" / "a")["previous_jobs"] == ["4242"]


def test_a_job_slurm_requeued_itself_is_followed_not_resubmitted(tmp_path, fake_slurm):
    executor = slurm_executor(tmp_path)
    handle = executor.start(CellLaunch("a", cell_dir(tmp_path), 1))
    fake_slurm.result(executor, "4242", "success", EXIT_INTERRUPTED)  # the run before
    fake_slurm.states(j4242="REQUEUED")  # PreemptMode=REQUEUE
    assert handle.poll() is None and handle.job_id == "4242"
    assert not (executor.folder / "4242_0_result.pkl").exists()  # not read again
    fake_slurm.states(j4242="RUNNING")
    assert handle.poll() is None
    fake_slurm.result(executor, "4242", "success", 0)
    assert handle.poll() == 0


def test_the_next_grid_attaches_to_jobs_in_flight_and_reads_ended_ones(tmp_path, fake_slurm):
    first = slurm_executor(tmp_path, jobs=4, wait=False)
    for name in "abcd":
        first.start(CellLaunch(name, cell_dir(tmp_path, name), 1))
    first.close()
    assert fake_slurm.scancel() == []  # without wait, nothing is stopped
    fake_slurm.result(first, "4243", "success", 0)
    fake_slurm.result(first, "4244", "success", EXIT_INTERRUPTED)
    fake_slurm.states(j4242="RUNNING", j4243="COMPLETED", j4244="COMPLETED", j4245="OUT_OF_MEMORY")

    second = slurm_executor(tmp_path, jobs=4)
    running = second.start(CellLaunch("a", tmp_path / "cells" / "a", 1))
    done = second.start(CellLaunch("b", tmp_path / "cells" / "b", 1))
    restarted = second.start(CellLaunch("c", tmp_path / "cells" / "c", 1))
    lost = second.start(CellLaunch("d", tmp_path / "cells" / "d", 1))
    assert running.job_id == "4242" and running.poll() is None
    assert done.job_id == "4243" and done.poll() == 0  # ended meanwhile: read, not rerun
    assert restarted.job_id == "4246"  # interrupted meanwhile: submitted again
    assert lost.job_id == "4245" and lost.poll() == EXIT_FAILED  # died meanwhile: failed
    assert "OUT_OF_MEMORY" in (tmp_path / "cells" / "d" / "error.json").read_text()
    assert second.free_slots() == 2
    second.close()  # with wait: what is still in flight checkpoints and stops
    flags = ("--state=PENDING", "--signal=TERM")
    stopped = sorted(f"{flag} {job}" for job in ("4242", "4246") for flag in flags)
    assert sorted(fake_slurm.scancel()) == stopped


def test_a_wave_is_one_job_array(tmp_path, fake_slurm):
    executor = slurm_executor(tmp_path, jobs=3)
    launches = [CellLaunch(n, cell_dir(tmp_path, n), 1) for n in "abc"]
    handles = executor.start_many(launches)
    assert [h.job_id for h in handles] == ["4242_0", "4242_1", "4242_2"]
    script = fake_slurm.script("4242")
    assert "#SBATCH --array=0-2%3" in script and "#SBATCH --job-name=budgetlm:wave" in script
    assert slurm.read_record(tmp_path / "cells" / "b")["job_id"] == "4242_1"
    fake_slurm.states(j4242_1="COMPLETED")
    fake_slurm.result(executor, "4242_1", "success", 0)
    assert [h.poll() for h in handles] == [None, 0, None]
