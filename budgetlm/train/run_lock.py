"""One process per run folder: an exclusive lock held for the life of a training process.

The lock is `fcntl.flock` on `RUN_DIR/.run.lock`, plus the holder's pid, host and start time
written inside so that a refused process can say who holds it. flock belongs to the open file,
so the kernel drops it when the holder dies, however it dies; "stale" therefore means a lock
file that still names a holder (it never released it: killed, crashed) but that no process
holds. Such a lock is taken over with a warning naming the vanished holder. A clean release
empties the file and keeps it (deleting it would let a process that opened the old file before
the delete and one that creates a new file both "hold" the lock).

Who locks:
- `open_run` (rank 0 alone under torchrun: the other ranks write nothing into the folder) takes
  the lock before it reads the run's history, and the run's `MetricsLog` releases it when the
  trainer is closed (`trainer.log.close()`), or the garbage collector / interpreter exit does.
- Within one process the lock is re-entrant: a process that opens the same run folder again
  (a test, a notebook, a grid cell that took the lock before opening its run) shares the lock
  it already holds, which is released when its last holder lets go. The lock is about
  processes; two trainers of one process on one folder at once are not a supported use.
- A grid cell (compare/run/cell.py) first takes its cell lock, `CELL_DIR/.lock` (a blocking
  flock: the re-run of a killed grid waits for a leftover cell process), then this run lock on
  the same folder (its run folder is the cell folder). They are two files on purpose: the
  cell's `open_run` re-enters the run lock its process holds instead of waiting for itself on
  the cell lock, and a `budgetlm train --resume auto` by hand on a cell folder while the cell
  works is refused with `RunBusy` (the run lock is never waited for: exit 4, retry later).

On NFS, Linux emulates flock with byte-range locks, which work across hosts (NFSv4); the host
in the lock file is there to tell a user where the holder runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budgetlm.errors import RunBusy

LOCK_NAME = ".run.lock"


@dataclass
class _Held:
    """This process's hold on one lock file (shared by re-entrant acquisitions)."""

    fd: int
    pid: int
    count: int = 1


_HELD: dict[str, _Held] = {}
_HELD_GUARD = threading.RLock()  # threads share _HELD; RLock: a GC finalizer may run inside


def lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / LOCK_NAME


def holder_text(info: dict[str, Any]) -> str:
    pid, host, since = info.get("pid", "?"), info.get("host", "?"), info.get("since", "?")
    return f"pid {pid} on {host} since {since}"


def read_holder(path: Path) -> dict[str, Any]:
    """The holder a lock file names ({} when empty, unreadable or released)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    try:
        info = json.loads(text) if text.strip() else {}
    except ValueError:
        return {"pid": "?", "host": "?", "since": "?", "raw": text[:200]}
    return info if isinstance(info, dict) else {}


class RunLock:
    """A held run lock; `release()` (idempotent) or the garbage collector lets it go.

    `took_over` names the vanished holder of a stale lock that this acquisition replaced."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = lock_path(self.run_dir)
        self.took_over: str | None = None
        with _HELD_GUARD:
            self._key = _acquire(self)
        self._finalizer = weakref.finalize(self, _release, self._key)

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


def _acquire(lock: RunLock) -> str:
    lock.run_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(lock.path)
    held = _HELD.get(key)
    if held is not None and held.pid == os.getpid():
        held.count += 1
        return key
    # A forked child inherits its parent's entry but not its right to the lock.
    _HELD.pop(key, None)
    while True:
        fd = os.open(lock.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = read_holder(lock.path)
            who = holder_text(info) if info else "another process (starting up)"
            raise RunBusy(
                f"{lock.run_dir} is in use by {who}: one process per run folder. Wait for it "
                f"to finish (or stop it), then run again; a lock whose process is gone is taken "
                "over by itself"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The file may have been removed (a failed first attempt cleaning up) between our open
        # and our lock: then we hold a lock nobody else sees; start over on the new file.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock.path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        previous = _read_fd(fd)
        if previous:
            lock.took_over = (
                f"took over the lock of {lock.run_dir} from {holder_text(previous)}: that "
                "process is gone without releasing it (killed or crashed)"
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    _HELD[key] = _Held(fd=fd, pid=os.getpid())
    return key


def _read_fd(fd: int) -> dict[str, Any]:
    data = b""
    while chunk := os.pread(fd, 4096, len(data)):
        data += chunk
    text = data.decode(errors="replace")
    if not text.strip():
        return {}
    try:
        info = json.loads(text)
    except ValueError:
        return {"raw": text[:200]}
    return info if isinstance(info, dict) else {}


def _release(key: str) -> None:
    with _HELD_GUARD:
        _release_held(key)


def _release_held(key: str) -> None:
    held = _HELD.get(key)
    if held is None or held.pid != os.getpid():
        return
    held.count -= 1
    if held.count > 0:
        return
    del _HELD[key]
    with contextlib.suppress(OSError):
        os.ftruncate(held.fd, 0)  # released cleanly: no holder to report, nothing stale
    with contextlib.suppress(OSError):
        fcntl.flock(held.fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(held.fd)
