"""Cells as processes of this machine, `jobs` at a time, each with its own GPUs when asked.

Without `gpus` a cell is `python -m budgetlm.compare.run.cell CELL_DIR` with the machine's
environment, as before executors existed. With `gpus` (`all`, or indices such as `0,1,3`) the
devices are a pool: a cell takes `gpus_per_cell` of them, sees only those (its
`CUDA_VISIBLE_DEVICES`), and gives them back when it ends; a cell starts only when both a job
slot and its devices are free, so no two cells ever share a device. A cell on several devices
trains through torchrun, one process per device:

    python -m torch.distributed.run --standalone --nproc-per-node K -m budgetlm.compare.run.cell DIR

and its config's `train.parallel` (ddp, the default, or fsdp) says how the ranks share the
model (docs/distributed.md). Rank 0 takes the cell's locks and writes its files (cell.py).

Indices are torch's numbering in this process: when `CUDA_VISIBLE_DEVICES` is already set
(`CUDA_VISIBLE_DEVICES=4,5,6,7 budgetlm compare ... --gpus all`), `--gpus 0` is its first entry
and a cell is given the entries themselves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from budgetlm.compare.run.cell import GRID_PID_ENV, RANKS_EXIT_FILE
from budgetlm.compare.run.executors.base import CellHandle, CellLaunch, Executor, ExecutorError

CELL_MODULE = "budgetlm.compare.run.cell"
CELL_LOG = "cell.log"


def cell_command(run_dir: Path, ranks: int = 1, python: str | None = None) -> list[str]:
    """The command that trains one cell: itself, or through torchrun on `ranks` processes."""
    python = python or sys.executable
    if ranks <= 1:
        return [python, "-m", CELL_MODULE, str(run_dir)]
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(ranks),
        "-m",
        CELL_MODULE,
        str(run_dir),
    ]


def cell_environment(launch: CellLaunch, devices: Sequence[str] | None = None) -> dict[str, str]:
    """This process's environment plus the cell's: its threads, its devices (when given)."""
    env = {
        **os.environ,
        **launch.env,
        "OMP_NUM_THREADS": str(launch.threads),
        "MKL_NUM_THREADS": str(launch.threads),
        "PYTHONUNBUFFERED": "1",
    }
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    return env


def ranks_exit_code(run_dir: Path, code: int) -> int:
    """torchrun exits 1 whatever its ranks returned; rank 0 of a cell records its own exit code
    (cell.py) so that a stopped cell still reads as stopped (130) and a bad config as 2."""
    if code == 0:
        return 0
    try:
        return int((Path(run_dir) / RANKS_EXIT_FILE).read_text().strip())
    except (OSError, ValueError):
        return code


def parse_gpus(value: Any, where: str = "--gpus") -> str | tuple[int, ...] | None:
    """`all`, `0,1,3` (or a list of indices from a YAML file), or None: the value of --gpus."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    items: list[Any]
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ExecutorError(f"{where}: `all` or GPU indices such as 0,1,3, got {value!r}")
    indices = []
    for item in items:
        if isinstance(item, bool):
            item = "?"
        try:
            index = int(item)
        except (TypeError, ValueError):
            raise ExecutorError(
                f"{where}: `all` or GPU indices such as 0,1,3, got {value!r}"
            ) from None
        if index < 0:
            raise ExecutorError(f"{where}: GPU indices are 0 or more, got {index}")
        indices.append(index)
    if not indices or len(set(indices)) != len(indices):
        raise ExecutorError(f"{where}: give distinct GPU indices, got {value!r}")
    return tuple(indices)


def _visible_devices() -> list[str] | None:
    """The parent's CUDA_VISIBLE_DEVICES entries, when it restricts them."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _cuda_device_count() -> int:
    import torch  # only when --gpus asks for devices: `budgetlm compare --help` stays light

    return torch.cuda.device_count()


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc; empty elsewhere)."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


class LocalHandle(CellHandle):
    """A cell process (or the torchrun agent of its ranks), its log and its devices."""

    def __init__(
        self,
        process: Any,
        log: Any = None,
        *,
        where: str = "local",
        run_dir: Path | None = None,
        ranks: int = 1,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.process, self.log, self.where = process, log, where
        self.run_dir, self.ranks = run_dir, ranks
        self._release = release
        self._code: int | None = None

    def poll(self) -> int | None:
        if self._code is None:
            code = self.process.poll()
            if code is None:
                return None
            if self.ranks > 1 and self.run_dir is not None:
                code = ranks_exit_code(self.run_dir, code)
            self._code = code
        return self._code

    def _signal_ranks(self, sig: int) -> bool:
        """Signal the rank processes themselves (torchrun's agent would give them 30 seconds
        to write their checkpoint, then kill them); False when none were found."""
        if self.ranks <= 1:
            return False
        ranks = _children(self.process.pid) if hasattr(self.process, "pid") else []
        for pid in ranks:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        return bool(ranks)

    def stop(self) -> None:
        # Under torchrun a stop request on any rank stops every rank at the same step.
        if self.poll() is None and not self._signal_ranks(signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.poll() is None:
            self._signal_ranks(signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        self.process.wait()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
        if self._release is not None:
            release, self._release = self._release, None
            release()


class LocalExecutor(Executor):
    """`jobs` cells at a time on this machine; with `gpus`, each on its own `gpus_per_cell`."""

    name = "local"

    def __init__(
        self,
        jobs: int | None = 1,
        gpus: str | Sequence[int] | None = None,
        gpus_per_cell: int = 1,
        device_count: int | None = None,
        *,
        popen: Callable[..., Any] | None = None,
    ) -> None:
        if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
            raise ExecutorError(f"--jobs must be at least 1, got {jobs!r}")
        if isinstance(gpus_per_cell, bool) or not isinstance(gpus_per_cell, int):
            if not (isinstance(gpus_per_cell, float) and gpus_per_cell.is_integer()):
                raise ExecutorError(
                    f"--gpus-per-cell: a whole number for local cells, got {gpus_per_cell!r}"
                )
            gpus_per_cell = int(gpus_per_cell)
        if gpus_per_cell < 1:
            raise ExecutorError(f"--gpus-per-cell must be at least 1, got {gpus_per_cell}")
        self.per_cell = gpus_per_cell
        self._popen = popen
        self._running: list[LocalHandle] = []
        self.devices = self._devices(parse_gpus(gpus), device_count)  # None: CPU, as before
        if jobs is None:  # as many as the devices allow
            jobs = len(self.devices) // gpus_per_cell if self.devices else 1
        self.jobs = max(1, jobs)
        if self.devices is None and gpus_per_cell > 1:
            raise ExecutorError(
                f"--gpus-per-cell {gpus_per_cell} needs --gpus (the devices to share out: "
                "`all` or indices such as 0,1,2,3)"
            )
        if self.devices is not None and gpus_per_cell > len(self.devices):
            raise ExecutorError(
                f"--gpus-per-cell {gpus_per_cell} but only {len(self.devices)} GPU"
                f"{'s' if len(self.devices) != 1 else ''} to share out "
                f"({', '.join(self.devices) or 'none'}); lower it or give more with --gpus"
            )
        self._free = list(self.devices or [])

    @staticmethod
    def _devices(gpus: str | tuple[int, ...] | None, device_count: int | None) -> list[str] | None:
        """The CUDA_VISIBLE_DEVICES entries to share out (None: no GPUs asked for)."""
        if gpus is None:
            return None
        visible = _visible_devices()
        if device_count is None:
            device_count = len(visible) if visible is not None else _cuda_device_count()
        if device_count < 1:
            raise ExecutorError("--gpus: no CUDA device here (torch.cuda.device_count() is 0)")
        indices = range(device_count) if gpus == "all" else gpus
        if missing := [i for i in indices if i >= device_count]:
            raise ExecutorError(
                f"--gpus: no GPU {', '.join(map(str, missing))} here; this machine has "
                f"{device_count} (0 to {device_count - 1})"
            )
        return [visible[i] if visible is not None else str(i) for i in indices]

    # -- Executor ---------------------------------------------------------------------------
    def free_slots(self) -> int:
        self._running = [h for h in self._running if h._release is not None]
        slots = self.jobs - len(self._running)
        if self.devices is not None:
            slots = min(slots, len(self._free) // self.per_cell)
        return max(0, slots)

    def start(self, launch: CellLaunch) -> CellHandle:
        if self.free_slots() < 1:
            raise RuntimeError(f"no free slot for cell {launch.cell_id}")  # a grid bug
        devices = None
        if self.devices is not None:
            devices, self._free = self._free[: self.per_cell], self._free[self.per_cell :]
        ranks = self.per_cell if devices is not None else 1
        run_dir = Path(launch.run_dir)
        env = cell_environment(launch, devices)
        if ranks > 1:
            env[GRID_PID_ENV] = str(os.getpid())
            (run_dir / RANKS_EXIT_FILE).unlink(missing_ok=True)
        log = open(run_dir / CELL_LOG, "a")  # noqa: SIM115 - closed by the handle
        where = f"cuda:{','.join(devices)}" if devices is not None else "local"
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} cell {launch.cell_id} on {where}\n")
        log.flush()
        try:
            process = (self._popen or subprocess.Popen)(
                cell_command(run_dir, ranks),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # Its own session: a Ctrl-C reaches the grid, which asks each cell to stop once.
                start_new_session=True,
            )
        except BaseException:
            log.close()
            if devices is not None:
                self._free = sorted([*self._free, *devices], key=self._order)
            raise

        def release() -> None:
            if devices is not None:
                self._free = sorted([*self._free, *devices], key=self._order)

        handle = LocalHandle(
            process, log, where=where, run_dir=run_dir, ranks=ranks, release=release
        )
        self._running.append(handle)
        return handle

    def _order(self, device: str) -> int:
        return (self.devices or []).index(device)

    def describe(self) -> str:
        if self.devices is None:
            return f"local, {self.jobs} cell{'s' if self.jobs != 1 else ''} at a time"
        at_once = min(self.jobs, len(self.devices) // self.per_cell)
        ranks = " through torchrun" if self.per_cell > 1 else ""
        return (
            f"local, GPUs {','.join(self.devices)}, {self.per_cell} per cell{ranks}: "
            f"{at_once} cell{'s' if at_once != 1 else ''} at a time"
        )
