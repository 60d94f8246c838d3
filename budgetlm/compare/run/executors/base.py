"""The executor interface: how the grid starts a cell, follows it and stops it.

The grid (compare/run/grid.py) decides what runs and in which order (tuning cells first, then
the judged seeds of tuned arms); an executor decides where: a local process (with its own GPUs,
through torchrun when a cell has several: `local.py`), a Slurm job through submitit
(`slurm.py`), a Ray task (`ray.py`). Whatever the executor, a cell is the same thing: an ordinary
run directory that `python -m budgetlm.compare.run.cell CELL_DIR` trains, checkpoints and
resumes bit-exactly, and whose status the grid reads from its files (`summary.json`,
`error.json`). So the report stays a function of the cell folders, and a grid interrupted under
one executor can be finished under another.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

from budgetlm.errors import UserError


class ExecutorError(UserError):
    """A setting of an executor that cannot work (one line, exit 2): too few GPUs for a cell,
    a missing extra (`pip install 'budgetlm[slurm]'`), a bad option value."""


@dataclass(frozen=True)
class CellLaunch:
    """What an executor needs to start one cell."""

    cell_id: str  # "<arm>/<budget>/[lr<x>/]seed<k>", for messages and job names
    run_dir: Path  # the cell's folder: cell.yaml is written there before the launch
    threads: int  # CPU threads per training process (OMP_NUM_THREADS)
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the cell


class CellHandle(abc.ABC):
    """One started cell. `poll` never blocks; the grid calls it every poll interval."""

    #: where the cell runs, for progress lines: "local", "cuda:0,1", "node12 (job 4242)", ...
    where: str = "local"

    @abc.abstractmethod
    def poll(self) -> int | None:
        """Called every poll interval (half a second), so cheap: cache a cluster's answers.
        None while queued or running; else the cell's exit code (0 finished, 130 stopped
        with its checkpoint kept, 1 failed, 2 bad config; a negative code: killed by that
        signal; any other code: the executor lost it)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Ask the cell to checkpoint and exit (idempotent): a SIGTERM to the process."""

    @abc.abstractmethod
    def kill(self) -> None:
        """End the cell now (a second Ctrl-C): its last checkpoint is what remains."""

    def close(self) -> None:
        """Release what the handle holds (log files, devices); called once the cell ended."""
        return None

    def detach(self) -> None:
        """The grid exits while the cell is still queued or running (an executor whose `waits`
        is False): release what this process holds, leave the cell running. The next grid
        collects it through `Executor.start` of the same cell."""
        return None


class Executor(abc.ABC):
    """Starts cells; the grid asks `free_slots()` before each start."""

    name: str = "executor"
    #: False: the grid starts what it can, collects what has ended, and returns without waiting
    #: for the rest (Slurm with --no-wait); its cells go on, and a re-run of the grid collects
    #: them: `start` of a cell already queued or running must re-attach to it, not start it twice.
    waits: bool = True

    @abc.abstractmethod
    def free_slots(self) -> int:
        """How many more cells may start now (local: --jobs minus running, or fewer when the
        devices run out; a cluster: the cap on cells in flight). Count only the cells this
        executor object started or re-attached to: a re-run's fresh executor must leave room
        for the grid to re-attach (through `start`) to what an earlier run left in flight."""

    @abc.abstractmethod
    def start(self, launch: CellLaunch) -> CellHandle:
        """Start (or submit) one cell; returns at once."""

    def close(self) -> None:
        """Called once when the grid ends (normally or not)."""
        return None

    def describe(self) -> str:
        """One line for the grid's first message, e.g. "local, 4 GPUs, 2 per cell"."""
        return self.name
