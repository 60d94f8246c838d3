"""Cells as Slurm jobs, through submitit: a grid spread over a cluster without an sbatch script.

Each cell is one job (`submitit.AutoExecutor`, or submitit's local executor with
`cluster="local"`: real processes, the same pickling and requeue path, no Slurm needed). The job
runs `CellJob`, a small picklable callable that starts the cell as a child process,
`python -m budgetlm.compare.run.cell CELL_DIR`, exactly as the local executor does (its output
appended to the cell's `cell.log`, OMP/MKL threads from the launch, CUDA_VISIBLE_DEVICES as
Slurm set it; through torchrun, one process per GPU, when a cell has several), and returns the
child's exit code.

Signals, and why each goes where it goes:
- Time limit and preemption. submitit has Slurm send USR2 `signal_delay_s` (90 s) before the time
  limit and calls `CellJob.checkpoint()` in the job when it arrives: the job sends SIGTERM to the
  cell, waits while the cell finishes its step, writes its checkpoint and exits (130), then
  returns `DelayedSubmission(self)`, so submitit requeues the job (`scontrol requeue`) and the
  cell resumes bit-exactly from that checkpoint when it starts again. The cell itself ignores
  USR2 (Slurm signals every process of the job step; by default USR2 would kill it).
- The grid's `stop()` (Ctrl-C, end of a wave) sends SIGTERM to the job's processes
  (`scancel --signal=TERM`, after cancelling the job if it is still pending); the job forwards
  it to the cell too (submitit's local controller reaches only the job's process). The cell
  checkpoints and exits 130, the job ends with it, and is not requeued. `job.cancel()` is not
  used for this: it ends the job with SIGKILL after Slurm's KillWait, checkpoint or not.
- A SIGTERM the grid did not send (Slurm preemption in PreemptMode=CANCEL, an administrator)
  also ends the cell with 130: `poll` then submits the cell again (up to MAX_RESUBMITS times;
  a job that Slurm requeued itself is followed instead; one cancelled by hand counts as
  interrupted, 130).
- `kill()` cancels the job (scancel): the cell's last checkpoint is what remains.

Each cell folder records its job in `slurm-job.json` (id, submitit folder, the launch; its end
once a grid read it) and the job writes `slurm-run.json` (node, pids, attempt) each time it
starts the cell. With `wait=False` (`compare --no-wait`, `waits` False) the grid submits what it
can and exits, detaching from the jobs in flight; `start` of a cell whose recorded job is still
queued or running follows that job (`attach`) instead of submitting the cell again, so a re-run
collects what ended and submits the next wave. The cell's own lock (`.lock`) keeps two jobs
from ever training one cell at once, whatever happens.

submitit is imported only when the executor is built: `pip install 'budgetlm[slurm]'`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from budgetlm.compare.run.cell import ERROR_FILE, GRID_PID_ENV, RANKS_EXIT_FILE, write_error
from budgetlm.compare.run.executors.base import CellHandle, CellLaunch, Executor, ExecutorError
from budgetlm.compare.run.executors.local import (
    CELL_LOG,
    LocalHandle,
    cell_command,
    cell_environment,
    ranks_exit_code,
)
from budgetlm.errors import EXIT_FAILED, EXIT_INTERRUPTED
from budgetlm.train.shared_lock import pid_alive

JOB_RECORD = "slurm-job.json"  # in the cell folder, by the grid: the job that runs the cell
RUN_RECORD = "slurm-run.json"  # in the cell folder, by the job: where and as what it runs
#: Times one handle submits its cell again after a SIGTERM it did not ask for.
MAX_RESUBMITS = 10
#: Slurm states of a job that is not over (sacct's spelling; "CANCELLED by 123" is cut).
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SUSPENDED",
        "SIGNALING",
        "STAGE_OUT",
        "RESV_DEL_HOLD",
        "STOPPED",
        "READY",
        "UNKNOWN",  # sacct does not know the job yet
    }
)
#: How long a job that Slurm says ended may take to show its result file (a shared filesystem).
RESULT_GRACE_SECONDS = 60.0
#: How often the executor asks sacct about every job in flight (submitit alone backs off to 10 min).
STATE_REFRESH_SECONDS = 60.0
#: Folders each node has its own copy of: cells there are invisible to the other nodes.
NODE_LOCAL = ("/tmp", "/dev/shm", "/var/tmp")


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError as e:
        raise ExecutorError(
            f"--executor slurm needs submitit: pip install 'budgetlm[slurm]' ({e})"
        ) from e
    return submitit


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def read_record(run_dir: Path, name: str = JOB_RECORD) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# -- in the job -----------------------------------------------------------------------------
def _child_signals(preempt: int, mask: set[int]) -> None:
    """In the cell's process, before exec: the preemption signal ignored (Slurm sends it to
    every process of the step; the job handles it), and the mask the job had."""
    signal.signal(preempt, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class CellJob:
    """The callable a job runs: the cell as a child process; its exit code is the result.

    Checkpointable in submitit's sense (it has `checkpoint`): submitit calls it on preemption
    or time limit and requeues the job with what it returns. Pickled by reference to this module,
    with the launch as plain data; the child process itself is never pickled. A cell on several
    GPUs (`ranks` > 1) trains through torchrun, one process per GPU, as with the local executor.
    """

    def __init__(
        self,
        run_dir: str,
        cell_id: str,
        threads: int,
        env: Mapping[str, str],
        cwd: str,
        ranks: int = 1,
    ) -> None:
        self.run_dir, self.cell_id, self.threads = run_dir, cell_id, threads
        self.env, self.cwd, self.ranks = dict(env), cwd, ranks
        self.attempt = 0  # starts of the cell by this job (requeues included)
        self._cell: LocalHandle | None = None  # the running child, signalled through this
        self._code: int | None = None  # the child's exit code, once it exited

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_cell", "_code")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cell, self._code = None, None

    def command(self) -> list[str]:
        return cell_command(Path(self.run_dir), self.ranks)

    def environment(self) -> dict[str, str]:
        """The job's environment (CUDA_VISIBLE_DEVICES as Slurm set it) plus the cell's."""
        env = cell_environment(CellLaunch(self.cell_id, Path(self.run_dir), self.threads, self.env))
        if self.ranks > 1:  # the ranks' parent is torchrun's agent: they watch the job instead
            env[GRID_PID_ENV] = str(os.getpid())
        return env

    def __call__(self) -> int:
        import submitit

        self.attempt += 1
        job_id = submitit.JobEnvironment().job_id
        run_dir = Path(self.run_dir)
        preempt = submitit.JobEnvironment._usr_sig()
        if self.ranks > 1:
            (run_dir / RANKS_EXIT_FILE).unlink(missing_ok=True)
        with open(run_dir / CELL_LOG, "a") as log:
            log.write(
                f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} cell {self.cell_id} "
                f"(job {job_id} on {socket.gethostname()}, attempt {self.attempt})\n"
            )
            log.flush()
            # SIGTERM and the preemption signal wait until the child exists and is known, so
            # that neither handler can miss it; the child starts with the job's own mask.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, preempt})
            try:
                signal.signal(signal.SIGTERM, self._forward_stop)
                process = subprocess.Popen(
                    self.command(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.environment(),
                    cwd=self.cwd if os.path.isdir(self.cwd) else None,
                    preexec_fn=lambda: _child_signals(preempt, mask),
                )
                self._cell = LocalHandle(process, run_dir=run_dir, ranks=self.ranks)
                _write_json(
                    run_dir / RUN_RECORD,
                    {
                        "job_id": job_id,
                        "host": socket.gethostname(),
                        "pid": os.getpid(),
                        "cell_pid": process.pid,
                        "attempt": self.attempt,
                        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    },
                )
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            threading.Thread(target=self._reap, args=(process,), daemon=True).start()
            try:
                code = self._wait_for_cell()
            finally:  # the job is ending otherwise (cancelled, an error): no cell left behind
                if self._code is None:
                    self._cell.kill()
                    self._wait_for_cell()
        return ranks_exit_code(run_dir, code) if self.ranks > 1 else code

    # The child is reaped by a thread, and the main thread (and the signal handlers that run in
    # it) only sleeps until it has: Popen.wait() holds a lock that a handler calling wait() again
    # while the main thread waits would never get.
    def _reap(self, process: subprocess.Popen) -> None:
        self._code = process.wait()

    def _wait_for_cell(self) -> int:
        while self._code is None:
            time.sleep(0.05)
        return self._code

    def _forward_stop(self, signum: int, frame: Any) -> None:
        """SIGTERM to the job: the cell checkpoints and exits 130 (repeats are only counted);
        under torchrun, every rank is signalled, not the agent."""
        if self._cell is not None and self._code is None:
            self._cell.stop()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Preemption or time limit (submitit, in the job): stop the cell at its next step
        boundary with a checkpoint, then have the job requeued; the cell resumes from it."""
        from submitit.helpers import DelayedSubmission

        if self._cell is not None and self._code is None:
            self._cell.stop()
            self._wait_for_cell()
        # Requeued even when the cell had just finished: its next start finds it finished.
        return DelayedSubmission(self)


# -- in the grid ----------------------------------------------------------------------------
def _controller_alive(pid: int) -> bool:
    """A submitit local job (its controller's pid is the job id) still runs: checked by its
    command line, so that a reused pid is not taken for it; a zombie has none."""
    try:
        return b"submitit.local._local" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: whether the pid exists at all
        return pid_alive(pid)


def _last_line(text: object) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no message"


class SlurmHandle(CellHandle):
    """One cell's job, followed from the grid. Also built by `SlurmExecutor.attach` for a job a
    previous `compare` submitted."""

    def __init__(self, executor: SlurmExecutor, job: Any, fn: CellJob, record: dict) -> None:
        self._executor, self._job, self._fn, self._record = executor, job, fn, record
        self.run_dir = Path(fn.run_dir)
        self._code: int | None = None
        self._stop_requested = False
        self._killed = False
        self._resubmits = 0
        self._ended_at: float | None = None  # when Slurm first said it ended without a result
        self._host: str | None = None

    @property
    def job_id(self) -> str:
        return str(self._job.job_id)

    @property
    def where(self) -> str:  # type: ignore[override]
        if self._host is None:
            run = read_record(self.run_dir, RUN_RECORD)
            if run and str(run.get("job_id")) == self.job_id:
                self._host = run.get("host")
            elif not self._executor.local:  # what sacct last said, if it knows a node yet
                nodes = self._job.watcher.get_info(self.job_id, mode="cache").get("NodeList")
                self._host = nodes if nodes and not nodes.startswith("None") else None
        kind = "submitit-local job" if self._executor.local else "slurm job"
        return f"{kind} {self.job_id}" + (f" on {self._host}" if self._host else "")

    # -- state ------------------------------------------------------------------------------
    def _state(self, force: bool = False) -> str | None:
        """None while the job is queued, running or requeued; else how it ended."""
        if self._executor.local:
            process = getattr(self._job, "_process", None)
            if process is not None:
                return None if process.poll() is None else "FINISHED"
            return None if _controller_alive(int(self.job_id)) else "FINISHED"
        watcher = self._job.watcher
        if force:  # a job the watcher saw end is never asked about again: Slurm may requeue it
            getattr(watcher, "_finished", set()).discard(self.job_id)
        state = str(watcher.get_state(self.job_id, mode="force" if force else "standard"))
        state = (state.split() or ["UNKNOWN"])[0].upper()
        return None if state in ACTIVE_STATES else state

    def _result(self) -> tuple[str, Any] | None:
        """submitit's ("success", exit code) or ("error", traceback), once the job wrote it."""
        from submitit.core.utils import pickle_load

        path = self._job.paths.result_pickle
        if not path.exists():
            return None
        try:
            return pickle_load(path)
        except (EOFError, OSError):  # being replaced right now: read it at the next poll
            return None

    # -- the interface ----------------------------------------------------------------------
    def poll(self) -> int | None:
        return self._check(resubmit=True)

    def _check(self, resubmit: bool) -> int | None:
        if self._code is not None:
            return self._code
        self._executor.refresh_states()
        result = self._result()
        if result is None:
            return self._without_result()
        outcome, value = result
        if outcome == "success" and value == EXIT_INTERRUPTED and not self._asked_to_end():
            return self._stopped_by_cluster(resubmit)
        if outcome == "success":
            return self._finish(int(value))
        return self._finish(self._failed(f"{_last_line(value)}; see {self._job.paths.stderr}"))

    def _asked_to_end(self) -> bool:
        return self._stop_requested or self._killed

    def _without_result(self) -> int | None:
        state = self._state()
        if state is None:
            self._ended_at = None
            return None
        if self._asked_to_end() or state.startswith("CANCELLED"):
            return self._finish(EXIT_INTERRUPTED)  # its last checkpoint is kept
        if not self._executor.local:  # the result may not have reached this node yet
            now = time.monotonic()
            self._ended_at = self._ended_at or now
            if now - self._ended_at < RESULT_GRACE_SECONDS:
                return None
        return self._finish(
            self._failed(
                f"the job ended ({state}) without a result: out of memory, a node failure, "
                f"a time limit without requeue?; see {self._job.paths.stderr} and cell.log"
            )
        )

    def _stopped_by_cluster(self, resubmit: bool) -> int | None:
        """The cell checkpointed and stopped (130) on a SIGTERM the grid did not send."""
        state = None if self._executor.local else self._state(force=True)
        if not self._executor.local and state is None:
            # Slurm requeued the job itself (PreemptMode=REQUEUE): the result is the previous
            # run's; follow the job again.
            with contextlib.suppress(FileNotFoundError):
                self._job.paths.result_pickle.unlink()
            return None
        if (state or "").startswith("CANCELLED") or not resubmit:
            return self._finish(EXIT_INTERRUPTED)
        if self._resubmits >= MAX_RESUBMITS:
            return self._finish(EXIT_INTERRUPTED)
        self._resubmits += 1
        try:
            self._job = self._executor._submit(self._fn)
        except ExecutorError as e:  # interrupted, then: a re-run resumes it
            print(f"budgetlm: {e}", file=sys.stderr)
            return self._finish(EXIT_INTERRUPTED)
        self._host, self._ended_at = None, None
        previous = [*self._record.get("previous_jobs", []), self._record["job_id"]]
        self._record.update(job_id=self.job_id, previous_jobs=previous, submitted=_now())
        _write_json(self.run_dir / JOB_RECORD, self._record)
        return None

    def _failed(self, why: str) -> int:
        """The job failed around the cell: error.json says so (unless the cell wrote its own)."""
        if not (self.run_dir / ERROR_FILE).is_file():
            with contextlib.suppress(OSError):  # its folder is gone: nothing to record in
                write_error(self.run_dir, RuntimeError(f"{self.where}: {why}"), user_error=False)
        return EXIT_FAILED

    def _finish(self, code: int) -> int:
        self._code = code
        self._record["ended"] = {"code": code, "time": _now()}
        with contextlib.suppress(OSError):
            _write_json(self.run_dir / JOB_RECORD, self._record)
        self._executor._ended(self)
        return code

    def stop(self) -> None:
        if self._code is not None:
            return
        self._stop_requested = True
        if self._executor.local:
            self._signal_local(signal.SIGTERM)  # the controller forwards it to the job
            return
        # A job still pending has nothing to checkpoint: cancel it (only if still pending);
        # then SIGTERM to the processes of a running one (the batch shell is left alone).
        _scancel("--state=PENDING", self.job_id)
        _scancel("--signal=TERM", self.job_id)

    def kill(self) -> None:
        if self._code is not None:
            return
        self._killed = True
        if self._executor.local:
            self._signal_local(signal.SIGINT)  # submitit's cancel: tasks get SIGINT, then KILL
        else:
            self._job.cancel(check=False)

    def _signal_local(self, signum: int) -> None:
        process = getattr(self._job, "_process", None)
        with contextlib.suppress(ProcessLookupError):
            if process is not None:
                process.send_signal(signum)
            elif _controller_alive(int(self.job_id)):  # attached: not our child
                os.kill(int(self.job_id), signum)

    def close(self) -> None:
        self._executor._ended(self)

    def detach(self) -> None:
        """The grid exits without waiting (--no-wait): the job goes on; the next grid's
        `start` of this cell attaches to it through the cell's slurm-job.json."""
        self._executor._ended(self)


def _scancel(*args: str) -> None:
    subprocess.run(
        ["scancel", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
        timeout=120,
    )


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class SlurmExecutor(Executor):
    """Cells as Slurm jobs through submitit; `cluster="local"` runs them as submitit's local
    jobs (same pickling, signals and requeue; for tests and trying it out)."""

    name = "slurm"

    def __init__(
        self,
        folder: Path,
        *,
        jobs: int,
        partition: str | None = None,
        account: str | None = None,
        time_min: int = 60,
        gpus_per_cell: int = 1,
        cpus_per_cell: int = 1,
        mem_gb: float | None = None,
        wait: bool = True,
        cluster: str | None = None,
        max_timeouts: int = 20,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        submitit = _import_submitit()
        if jobs < 1:
            raise ExecutorError("--jobs: at least 1 cell in flight")
        if cluster == "debug":
            raise ExecutorError(
                "--cluster debug runs a job inside the grid's process only when its result is "
                "asked for, which the grid never blocks on: use --cluster local"
            )
        if cluster is None:
            found = submitit.AutoExecutor.which()
            if found != "slurm":
                raise ExecutorError(
                    "--executor slurm: no Slurm here (srun is not on PATH); run compare on a "
                    "login node, or use --cluster local to try the executor on this machine"
                )
            cluster = "slurm"
        self.folder = Path(folder).resolve()
        if cluster == "slurm" and str(self.folder).startswith(NODE_LOCAL):
            raise ExecutorError(
                f"--executor slurm: {self.folder} is on a node-local filesystem; the jobs run "
                "on other nodes and need the output folder on a shared one (use --out)"
            )
        self.cluster, self.jobs, self.waits = cluster, jobs, wait
        self.local = cluster == "local"
        self.options = {
            "partition": partition,
            "account": account,
            "time_min": time_min,
            "gpus_per_cell": gpus_per_cell,
            "cpus_per_cell": cpus_per_cell,
            "mem_gb": mem_gb,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        self._executor = submitit.AutoExecutor(
            folder=self.folder,
            cluster=cluster,
            slurm_max_num_timeout=max_timeouts,
            local_max_num_timeout=max_timeouts,
        )
        self._executor.update_parameters(
            timeout_min=int(time_min),
            gpus_per_node=int(gpus_per_cell) or None,  # CPU-only: no GPU flag at all
            cpus_per_task=int(cpus_per_cell),
            mem_gb=mem_gb,
            nodes=1,
            tasks_per_node=1,
            slurm_partition=partition,
            slurm_account=account,
            **dict(extra or {}),
        )
        self._in_flight: set[SlurmHandle] = set()
        self._last_refresh = float("-inf")

    # -- submission -------------------------------------------------------------------------
    def free_slots(self) -> int:
        return max(0, self.jobs - len(self._in_flight))

    def _job_fn(self, launch: CellLaunch) -> CellJob:
        # Absolute: the job may start elsewhere; the cell's config (relative run.dir, data
        # cache) is read from the grid's working directory, as a local cell would.
        return CellJob(
            str(Path(launch.run_dir).resolve()),
            launch.cell_id,
            launch.threads,
            dict(launch.env),
            os.getcwd(),
            ranks=max(1, int(self.options["gpus_per_cell"])),
        )

    def _submit(self, fn: CellJob) -> Any:
        self._executor.update_parameters(name=f"budgetlm:{fn.cell_id}")
        try:
            return self._executor.submit(fn)
        except Exception as e:  # sbatch refused it: a partition, account or limit it rejects
            raise ExecutorError(f"cell {fn.cell_id} was not submitted: {_last_line(e)}") from e

    def _handle(self, job: Any, fn: CellJob, record: dict | None = None) -> SlurmHandle:
        if record is None:
            record = {
                "job_id": str(job.job_id),
                "cluster": self.cluster,
                "folder": str(self.folder),
                "cell_id": fn.cell_id,
                "threads": fn.threads,
                "env": fn.env,
                "cwd": fn.cwd,
                "ranks": fn.ranks,
                "submitted": _now(),
            }
            _write_json(Path(fn.run_dir) / JOB_RECORD, record)
        handle = SlurmHandle(self, job, fn, record)
        self._in_flight.add(handle)
        return handle

    def start(self, launch: CellLaunch) -> CellHandle:
        """Submit the cell, unless a job of an earlier grid is still on it: that one is
        followed instead (`attach`)."""
        attached = self.attach(launch.run_dir)
        if attached is not None:
            return attached
        fn = self._job_fn(launch)
        return self._handle(self._submit(fn), fn)

    def start_many(self, launches: Sequence[CellLaunch]) -> list[CellHandle]:
        """A wave of cells in one submission: a Slurm job array (one sbatch for all; its
        parameters are the executor's, named "budgetlm:wave"). Each cell is still its own
        array task, with its own handle, requeue and record."""
        handles: list[CellHandle | None] = [self.attach(x.run_dir) for x in launches]
        todo = [i for i, handle in enumerate(handles) if handle is None]
        if len(todo) < 2:
            return [h or self.start(x) for h, x in zip(handles, launches, strict=True)]
        fns = [self._job_fn(launches[i]) for i in todo]
        self._executor.update_parameters(name="budgetlm:wave")
        try:
            with self._executor.batch():
                jobs = [self._executor.submit(fn) for fn in fns]
        except Exception as e:
            message = f"a wave of {len(fns)} cells was not submitted: {_last_line(e)}"
            raise ExecutorError(message) from e
        for i, job, fn in zip(todo, jobs, fns, strict=True):
            handles[i] = self._handle(job, fn)
        return [h for h in handles if h is not None]

    def attach(self, run_dir: Path) -> CellHandle | None:
        """A handle on the cell's job of an earlier grid (its slurm-job.json), counted in
        flight: while the job is queued or running, and once it ended without a grid to read
        its end (then `poll` returns that end at once, error.json written for a job lost
        without a result). None when there is nothing to follow: no job recorded, its end
        already read, or it ended interrupted (130: the cell is to be started again)."""
        run_dir = Path(run_dir).resolve()
        record = read_record(run_dir)
        if record is None or "ended" in record or record.get("cluster") != self.cluster:
            return None
        submitit = _import_submitit()
        job_class = submitit.LocalJob if self.local else submitit.SlurmJob
        job = job_class(folder=record["folder"], job_id=str(record["job_id"]))
        fn = CellJob(
            str(run_dir),
            record["cell_id"],
            int(record["threads"]),
            record.get("env", {}),
            record.get("cwd", os.getcwd()),
            ranks=int(record.get("ranks", 1)),
        )
        handle = self._handle(job, fn, record)
        # Without a result the job is queued, running or lost: `poll` tells, with one sacct
        # call for every job attached meanwhile rather than one per job.
        if handle._result() is not None and handle._check(resubmit=False) == EXIT_INTERRUPTED:
            return None
        return handle

    # -- bookkeeping ------------------------------------------------------------------------
    def refresh_states(self) -> None:
        """One sacct call for every job in flight, at most every STATE_REFRESH_SECONDS."""
        if self.local or not self._in_flight:
            return
        now = time.monotonic()
        if now - self._last_refresh >= STATE_REFRESH_SECONDS:
            self._last_refresh = now
            _import_submitit().SlurmJob.watcher.update()

    def _ended(self, handle: SlurmHandle) -> None:
        self._in_flight.discard(handle)

    def close(self) -> None:
        """With wait, cells still in flight are asked to checkpoint and stop (as local cells
        whose grid is gone do); without, they go on and the next `compare` attaches to them."""
        if self.waits:
            for handle in list(self._in_flight):
                if not handle._killed:
                    handle.stop()

    def describe(self) -> str:
        o = self.options
        where = "submitit local jobs" if self.local else "slurm (submitit)"
        parts = [
            f"partition {o['partition']}" if o["partition"] else None,
            f"account {o['account']}" if o["account"] else None,
            f"{o['time_min']} min per job",
            f"{o['gpus_per_cell']} GPU, {o['cpus_per_cell']} CPU"
            + (f", {o['mem_gb']:g} GB" if o["mem_gb"] else "")
            + " per cell",
            f"up to {self.jobs} in flight",
            None if self.waits else "no wait: a re-run collects",
        ]
        return f"{where}: " + ", ".join(p for p in parts if p)
