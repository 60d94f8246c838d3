"""Cells as Ray actors: a grid spread over the nodes of a Ray cluster (or a local runtime).

Each cell gets its own actor, created with the resources one cell reserves (`num_cpus`,
`num_gpus`; Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned). The actor runs the cell as
a child process, exactly as the local executor does (`python -m budgetlm.compare.run.cell
CELL_DIR`, or through torchrun on K processes when a cell has K > 1 whole GPUs), with its output
appended to the cell's `cell.log`, and returns the child's exit code and the node's name. An
actor rather than a task: an actor can be called while it works, so `stop()` asks it to send
SIGTERM to its child (the cell checkpoints and exits 130, and the call that ran it returns that
code), which a task's cancellation cannot do (ray.get then raises TaskCancelledError and the
code is lost); and a dead actor is not retried behind the grid's back as a task would be.

- The cell folders must be on a filesystem every node mounts at the same path: the driver
  writes `cell.yaml` there, a node trains in it, the driver reads `summary.json` back. With
  more than one node alive, a relative folder or one under a node-local path (/tmp, /dev/shm,
  /var/tmp, $TMPDIR) is refused before anything runs. budgetlm must be installed on every node.
- A cell whose worker or node died fails: its `error.json` says so (its last complete
  checkpoint is kept; `--retry-failed` resumes from it). While the cell's own process survives
  its worker (it then stops by itself, with a checkpoint, as for a killed grid), the cell
  counts as running: it holds the cell's lock, and the failure is recorded once it let go (a
  dead node's lock goes stale once its heartbeat stops, train/shared_lock.py).
- `close()` shuts down a runtime this executor started (`address=None` and no cluster to join)
  and leaves a cluster it connected to running; a runtime already initialised in this process
  (a notebook, a test) is left alone.

Ray is imported only when the executor is built: `pip install 'budgetlm[ray]'`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from budgetlm.compare.run.cell import (
    CELL_CONFIG,
    GRID_PID_ENV,
    LOCK_FILE,
    RANKS_EXIT_FILE,
    write_error,
)
from budgetlm.compare.run.executors.base import CellHandle, CellLaunch, Executor, ExecutorError
from budgetlm.compare.run.executors.local import (
    CELL_LOG,
    LocalHandle,
    cell_command,
    cell_environment,
)
from budgetlm.errors import EXIT_FAILED, EXIT_INTERRUPTED

#: Folders that each node has its own copy of: cell folders there are invisible to the others.
NODE_LOCAL = ("/tmp", "/dev/shm", "/var/tmp")
#: The driver's variables a cell needs wherever it runs: the data cache (the grid prepares
#: datasets there before the cells start), Hugging Face's cache and offline switches,
#: budgetlm's own settings (lock timings, ...). The rest of a cell's environment is its node's.
FORWARDED_PREFIXES = ("BUDGETLM_", "HF_")
#: A hang guard: how long a cell whose worker died may keep its lock (its process stopping by
#: itself, checkpoint first) before it is reported failed anyway.
ORPHAN_GRACE_SECONDS = 600.0
#: How long `kill()` waits for the actor to kill its child before killing the actor itself.
KILL_WAIT_SECONDS = 5.0


class RayExecutorError(ExecutorError):
    """The grid cannot run on this Ray cluster as asked (no shared folder, no node that fits)."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise RayExecutorError(
            "the Ray executor needs ray: pip install 'budgetlm[ray]' (or 'ray>=2.9')"
        ) from e
    return ray


def node_local_roots() -> list[Path]:
    """Folders that are private to each node: /tmp, /dev/shm, /var/tmp and $TMPDIR."""
    roots = [Path(p) for p in NODE_LOCAL]
    if os.environ.get("TMPDIR"):
        roots.append(Path(os.environ["TMPDIR"]))
    roots.append(Path(tempfile.gettempdir()))
    seen: list[Path] = []
    for root in roots:
        for path in (root, root.resolve()):
            if path not in seen:
                seen.append(path)
    return seen


def check_shared_out_dir(out_dir: Path, nodes: int) -> None:
    """Refuse a folder the other nodes of a cluster cannot see (a one-node runtime takes any)."""
    if nodes <= 1:
        return
    if not Path(out_dir).is_absolute():
        raise RayExecutorError(
            f"the Ray cluster has {nodes} nodes and the output folder {out_dir} is relative: "
            "cells run on other nodes, in other working directories. Give --out as an absolute "
            "path on a filesystem every node mounts at the same place (NFS, Lustre, ...)"
        )
    for candidate in (Path(out_dir), Path(out_dir).resolve()):
        for root in node_local_roots():
            if candidate == root or root in candidate.parents:
                raise RayExecutorError(
                    f"the Ray cluster has {nodes} nodes and the output folder {out_dir} is under "
                    f"{root}, which each node has its own copy of: a cell trained on another node "
                    "would write where this one cannot read. Use a folder on a filesystem every "
                    "node mounts at the same path (NFS, Lustre, ...)"
                )


def cell_ranks(gpus_per_cell: float) -> int:
    """Processes per cell: K for K > 1 whole GPUs (torchrun, as local cells), else 1."""
    return int(gpus_per_cell) if gpus_per_cell > 1 and float(gpus_per_cell).is_integer() else 1


# -- in the Ray worker ------------------------------------------------------------------------
class CellRunner:
    """The actor (one per cell): runs the cell as its child process; `send` signals it.

    Made remote with `max_concurrency=2`, so that `send` runs while `run` waits for the child.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cell: LocalHandle | None = None
        self._signal: int | None = None  # a signal asked for before the child started

    def node(self) -> str:
        """The node's name, with the GPUs Ray gave this cell: "node12", "node12 cuda:0,1"."""
        import ray

        gpus = ray.get_gpu_ids()
        host = socket.gethostname()
        return f"{host} cuda:{','.join(str(g) for g in gpus)}" if gpus else host

    def run(self, launch: CellLaunch, ranks: int, cwd: str) -> tuple[int, str]:
        where = self.node()
        run_dir = Path(launch.run_dir)
        if not (run_dir / CELL_CONFIG).is_file():
            raise FileNotFoundError(
                f"cell {launch.cell_id}: {run_dir / CELL_CONFIG} does not exist on node {where}; "
                "the output folder must be on a filesystem every node of the Ray cluster mounts "
                "at the same path"
            )
        # This worker's environment (as Ray set it: CUDA_VISIBLE_DEVICES) plus the cell's.
        env = cell_environment(launch)
        if ranks > 1:  # the ranks' parent is torchrun's agent: they watch this worker instead
            env[GRID_PID_ENV] = str(os.getpid())
            (run_dir / RANKS_EXIT_FILE).unlink(missing_ok=True)
        log = open(run_dir / CELL_LOG, "a")  # noqa: SIM115 - closed by the LocalHandle
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} cell {launch.cell_id} on {where}\n")
        log.flush()
        with self._lock:
            try:
                if self._signal is not None:  # stopped or killed before it started
                    log.close()
                    return EXIT_INTERRUPTED, where
                process = subprocess.Popen(
                    cell_command(run_dir, ranks),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=cwd if os.path.isdir(cwd) else None,  # relative paths: the grid's cwd
                    start_new_session=True,
                )
            except BaseException:
                log.close()
                raise
            self._cell = LocalHandle(process, log, where=where, run_dir=run_dir, ranks=ranks)
        try:
            process.wait()
            return self._cell.poll(), where  # type: ignore[return-value]
        finally:
            self._cell.close()

    def send(self, signum: int) -> None:
        with self._lock:
            cell = self._cell
            if cell is None:
                self._signal = signum
                return
        if signum == signal.SIGKILL:
            cell.kill()
        else:
            cell.stop()

    def pid(self) -> int:
        """The worker's process id (tests kill it to stand for a dead worker)."""
        return os.getpid()


# -- in the grid (the Ray driver) ---------------------------------------------------------------
def lock_free(path: Path) -> bool:
    """Whether no live process holds the cell's lock (a stale one, left by a process that died
    or by a node whose heartbeat stopped, is taken over and let go)."""
    from budgetlm.train.shared_lock import LockBusy, SharedLock

    try:
        SharedLock(path).acquire(blocking=False).release()
    except LockBusy:
        return False
    except OSError:
        return True  # no folder to lock (it is gone): nothing holds it
    return True


def _trained(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status") == "finished"
    except (OSError, ValueError, AttributeError):
        return False


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class RayCellHandle(CellHandle):
    def __init__(self, executor: RayExecutor, launch: CellLaunch, actor: Any, run: Any) -> None:
        self._executor, self.launch, self._actor, self._run = executor, launch, actor, run
        self._node = actor.node.remote()
        self._where: str | None = None
        self._code: int | None = None
        self._stopping = self._killed = False
        self._lost: tuple[float, BaseException] | None = None  # when the worker was seen dead

    @property
    def where(self) -> str:  # type: ignore[override]
        self._find_node()
        return self._where or "ray (waiting for resources)"

    def _find_node(self) -> bool:
        """Whether the actor was placed on a node (then `where` names it)."""
        if self._where is None:
            ray = self._executor.ray
            ready, _ = ray.wait([self._node], timeout=0)
            if ready:
                with contextlib.suppress(ray.exceptions.RayError):
                    self._where = ray.get(self._node)
        return self._where is not None

    def poll(self) -> int | None:
        if self._code is None:
            self._code = self._poll()
            if self._code is not None:
                self._executor._ended(self)
        return self._code

    def _poll(self) -> int | None:
        ray = self._executor.ray
        self._find_node()
        if self._lost is None:
            ready, _ = ray.wait([self._run], timeout=0)
            if not ready:
                return None
            try:
                code, self._where = ray.get(self._run)
                return code
            except ray.exceptions.RayTaskError as e:  # run() itself raised: nothing trained
                return self._failed(e.cause if e.cause is not None else e)
            except ray.exceptions.RayError as e:  # the actor, its worker or its node died
                if self._killed:
                    return -signal.SIGKILL
                if self._stopping:
                    return EXIT_INTERRUPTED
                self._lost = (time.monotonic(), e)
        # The worker is gone; the cell's process may live on, checkpointing before it stops
        # (it stops by itself once orphaned). It is done once it let go of the cell's lock.
        seen, error = self._lost
        run_dir = Path(self.launch.run_dir)
        waited = time.monotonic() - seen
        if waited < ORPHAN_GRACE_SECONDS and not lock_free(run_dir / LOCK_FILE):
            return None
        if _trained(run_dir):  # its process finished the run before it stopped
            return 0
        return self._failed(
            RuntimeError(
                f"the Ray worker running the cell on {self._where or 'an unknown node'} died "
                f"({type(error).__name__}: {_first_line(error)}); its last checkpoint is kept: "
                "--retry-failed resumes it"
            )
        )

    def _failed(self, error: BaseException) -> int:
        run_dir = Path(self.launch.run_dir)
        if run_dir.is_dir():
            write_error(run_dir, error, user_error=isinstance(error, FileNotFoundError))
        return EXIT_FAILED

    def stop(self) -> None:
        if self._stopping or self._code is not None:
            return
        self._stopping = True
        if self._find_node():
            self._actor.send.remote(signal.SIGTERM)
        else:  # still waiting for resources (maybe forever): nothing to checkpoint
            self._executor.ray.kill(self._actor, no_restart=True)

    def kill(self) -> None:
        if self._killed or self._code is not None:
            return
        self._killed = True
        ray = self._executor.ray
        if self._find_node():
            self._actor.send.remote(signal.SIGKILL)
            ray.wait([self._run], timeout=KILL_WAIT_SECONDS)
        ray.kill(self._actor, no_restart=True)

    def close(self) -> None:
        """End the actor (and free its resources) once the cell ended."""
        self._executor._ended(self)
        ray = self._executor.ray
        if ray.is_initialized():
            with contextlib.suppress(ray.exceptions.RayError):
                ray.kill(self._actor, no_restart=True)


class RayExecutor(Executor):
    """Each cell a Ray actor with `cpus_per_cell` CPUs and `gpus_per_cell` GPUs (a fraction
    shares a GPU; K > 1 whole GPUs train through torchrun); at most `jobs` cells in flight
    (queued for resources or running). `gpus_per_cell=None`: 1 when a node of the cluster has
    a GPU, else 0 (cells on CPUs)."""

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None,
        jobs: int,
        gpus_per_cell: float | None,
        cpus_per_cell: float,
        out_dir: Path,
    ) -> None:
        if jobs < 1:
            raise RayExecutorError(f"--jobs must be at least 1, got {jobs}")
        if (gpus_per_cell or 0) < 0 or cpus_per_cell < 0:
            raise RayExecutorError("--gpus-per-cell and --cpus-per-cell cannot be negative")
        self.ray = ray = _import_ray()
        self.address, self.jobs = address, jobs
        self.gpus_per_cell, self.cpus_per_cell = gpus_per_cell or 0, cpus_per_cell
        self.out_dir = Path(out_dir)
        self._live: set[RayCellHandle] = set()
        self._remote: Any = None
        self._cwd = os.getcwd()
        self._started = False  # whether this executor called ray.init (close shuts it down)
        if not ray.is_initialized():
            try:
                ray.init(
                    address=address,
                    include_dashboard=False,
                    log_to_driver=False,  # a cell's output goes to its cell.log
                    logging_level=logging.WARNING,
                )
            except (ConnectionError, ValueError) as e:
                where = f"the Ray cluster at {address}" if address else "a Ray runtime"
                raise RayExecutorError(
                    f"could not reach {where}: {_first_line(e)} (start one with `ray start "
                    "--head`, or give --address; none for a runtime on this machine)"
                ) from e
            self._started = True
        try:
            nodes = [n for n in ray.nodes() if n.get("Alive", n.get("alive", False))]
            self.nodes = len(nodes)
            if gpus_per_cell is None:
                gpus = any(n.get("Resources", {}).get("GPU", 0) > 0 for n in nodes)
                self.gpus_per_cell = 1 if gpus else 0
            check_shared_out_dir(self.out_dir, self.nodes)
            self._check_fits(nodes)
        except BaseException:
            self.close()
            raise

    def _check_fits(self, nodes: list[dict]) -> None:
        """A cell no node can hold would wait forever: refused on a runtime started here, a
        warning on a cluster (its autoscaler may add such a node)."""
        need = {"CPU": self.cpus_per_cell, "GPU": self.gpus_per_cell}
        if any(all(n.get("Resources", {}).get(k, 0) >= v for k, v in need.items()) for n in nodes):
            return
        biggest = ", ".join(
            f"{n.get('Resources', {}).get('CPU', 0):g} CPUs and "
            f"{n.get('Resources', {}).get('GPU', 0):g} GPUs"
            for n in nodes[:3]
        )
        message = (
            f"no node of the Ray cluster has the {self.cpus_per_cell:g} CPUs and "
            f"{self.gpus_per_cell:g} GPUs one cell asks for (nodes: {biggest or 'none'}); lower "
            "--cpus-per-cell or --gpus-per-cell (0 for cells on CPUs)"
        )
        node = getattr(getattr(self.ray, "_private", None), "worker", None)
        head_here = bool(getattr(getattr(node, "_global_node", None), "head", False))
        if head_here and self._started:
            raise RayExecutorError(message)
        print(f"warning: {message}; cells wait until a node that fits joins", file=sys.stderr)

    def free_slots(self) -> int:
        return max(0, self.jobs - len(self._live))

    def start(self, launch: CellLaunch) -> CellHandle:
        if self._remote is None:
            self._remote = self.ray.remote(
                num_cpus=self.cpus_per_cell,
                num_gpus=self.gpus_per_cell,
                max_concurrency=2,  # `send` runs while `run` waits for the cell
                max_restarts=0,
            )(CellRunner)
        launch = CellLaunch(
            cell_id=launch.cell_id,
            run_dir=Path(launch.run_dir).absolute(),
            threads=launch.threads,
            env=self._env(launch),
        )
        actor = self._remote.remote()
        run = actor.run.remote(launch, cell_ranks(self.gpus_per_cell), self._cwd)
        handle = RayCellHandle(self, launch, actor, run)
        self._live.add(handle)
        return handle

    def _env(self, launch: CellLaunch) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k.startswith(FORWARDED_PREFIXES) and k != GRID_PID_ENV
        }
        if not self.gpus_per_cell:
            env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU reserved, none used (Ray sets none then)
        return {**env, **launch.env}

    def _ended(self, handle: RayCellHandle) -> None:
        self._live.discard(handle)

    def close(self) -> None:
        live = list(self._live)
        for handle in live:  # the grid ended without collecting them: let each checkpoint
            handle.stop()
        deadline = time.monotonic() + 120
        while any(h.poll() is None for h in live) and time.monotonic() < deadline:
            time.sleep(0.2)
        for handle in live:
            handle.close()
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()  # a runtime started here stops; a cluster only loses this driver
        self._started = False

    def describe(self) -> str:
        resources = self.ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
        where = self.address or "local runtime"
        with contextlib.suppress(Exception):  # only a description
            where = f"{where} at {self.ray.get_runtime_context().gcs_address}"
        per_cell = f"{self.cpus_per_cell:g} CPUs" + (
            f" and {self.gpus_per_cell:g} GPUs" if self.gpus_per_cell else ""
        )
        if cell_ranks(self.gpus_per_cell) > 1:
            per_cell += " (torchrun)"
        return (
            f"ray ({where}): {self.nodes} node{'s' * (self.nodes != 1)}, {cpus:g} CPUs, "
            f"{gpus:g} GPUs; up to {self.jobs} cells at a time, {per_cell} each"
        )
