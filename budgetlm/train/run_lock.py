"""One process per run folder: an exclusive lock held for the life of a training process.

The lock is `RUN_DIR/.run.lock`, a shared-file-system lock (train/shared_lock.py): a file
created atomically that names its holder (pid, host, start time, a token) and whose heartbeat
the holder refreshes while it trains, so that it works where run folders live on NFS or Lustre
and `flock` does not. A second process is refused at once (`RunBusy`, exit 4) with the holder
named. A lock is stale when its holder ran on this machine and its process is gone (killed,
crashed), or, wherever it ran, when its heartbeat is older than the staleness limit (60 s by
default): such a lock is taken over with a warning naming the vanished holder. A clean release
removes the file.

Who locks:
- `open_run` (rank 0 alone under torchrun: the other ranks write nothing into the folder) takes
  the lock before it reads the run's history, and the run's `MetricsLog` releases it when the
  trainer is closed (`trainer.log.close()`), or the garbage collector / interpreter exit does.
- Within one process the lock is re-entrant: a process that opens the same run folder again
  (a test, a notebook, a grid cell that took the lock before opening its run) shares the lock
  it already holds, which is released when its last holder lets go. The lock is about
  processes; two trainers of one process on one folder at once are not a supported use. A
  forked child does not inherit the right to its parent's lock.
- A grid cell (compare/run/cell.py) first takes its cell lock, `CELL_DIR/.lock` (a blocking
  lock of the same kind: the re-run of a killed grid waits for a leftover cell process), then
  this run lock on the same folder (its run folder is the cell folder). They are two files on
  purpose: the cell's `open_run` re-enters the run lock its process holds instead of waiting for
  itself on the cell lock, and a `budgetlm train --resume auto` by hand on a cell folder while
  the cell works is refused with `RunBusy` (the run lock is never waited for: exit 4, retry
  later).
"""

from __future__ import annotations

import weakref
from pathlib import Path

from budgetlm.errors import RunBusy
from budgetlm.train.shared_lock import LockBusy, SharedLock

LOCK_NAME = ".run.lock"


def lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / LOCK_NAME


class RunLock:
    """A held run lock; `release()` (idempotent) or the garbage collector lets it go.

    `took_over` names the vanished holder of a stale lock that this acquisition replaced."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = lock_path(self.run_dir)
        self.took_over: str | None = None
        lock = SharedLock(self.path, reentrant=True)
        try:
            lock.acquire(blocking=False)
        except LockBusy as e:
            raise RunBusy(
                f"{self.run_dir} is in use by {e.description}: one process per run folder. Wait "
                "for it to finish (or stop it), then run again; a lock whose process is gone is "
                "taken over by itself"
            ) from None
        if lock.took_over:
            self.took_over = f"took over the lock of {self.run_dir} from {lock.took_over}"
        self._finalizer = weakref.finalize(self, lock.release)

    @property
    def held(self) -> bool:
        return self._finalizer.alive

    def release(self) -> None:
        self._finalizer()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(run_dir: Path) -> RunLock:
    """Lock `run_dir` (created if missing) for this process, or raise RunBusy naming the
    holder. A stale lock is taken over: `lock.took_over` says whose it was. Also a context
    manager: `with acquire(run_dir): ...`."""
    return RunLock(run_dir)
