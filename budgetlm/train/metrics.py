"""metrics.jsonl: JSON lines, written through as they come, cut back to a checkpoint on resume;
and the experiment trackers (train.loggers) that get the same records.

A record that cannot be written whole (the disk is full, over quota or read-only) is cut off
the file again, so the log never holds a torn line, and the run stops with a StorageError
(exit 5). A torn last line left by a process killed mid-write is dropped on resume.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

from budgetlm.train.checkpoint import STORAGE_ERRNOS, storage_error, storage_guard
from budgetlm.train.tracking.base import Tracker
from budgetlm.train.tracking.records import metrics_of, summary_of


class MetricsLog:
    """The run's log: metrics.jsonl always (other code reads it), then the trackers, if any.

    It also holds the run folder's lock (run_lock.py) for the trainer: closing the log is the
    end of the trainer's life, so `close()` releases it."""

    def __init__(self, path: Path, trackers: Tracker | None = None, lock: Any = None) -> None:
        self.path = path
        with storage_guard(path, "the metrics log"):
            self._fd: int | None = os.open(
                path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        self.trackers = trackers
        self.lock = lock

    def _append(self, data: bytes) -> None:
        """Write all of `data` at the end of the file (a loop: a write may be partial)."""
        assert self._fd is not None, "the metrics log is closed"
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _write_line(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record) + "\n").encode()
        assert self._fd is not None, "the metrics log is closed"
        size = os.fstat(self._fd).st_size
        try:
            self._append(data)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)  # no torn line: the next start can read the log
            if e.errno in STORAGE_ERRNOS:
                raise storage_error(e, self.path, "a record to", len(data)) from e
            raise

    def write(self, record: dict[str, Any]) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        self._write_line(clean)
        if self.trackers is not None:
            self.trackers.log_metrics(metrics_of(record), int(record.get("step", 0)))

    def note(self, record: dict[str, Any]) -> None:
        """A record for metrics.jsonl alone (a warning, say): nothing for the trackers."""
        self._write_line(record)

    def summary(self, summary: dict[str, Any]) -> None:
        """The attempt's summary, for the trackers (summary.json is the trainer's to write)."""
        if self.trackers is not None:
            self.trackers.log_summary(summary_of(summary))

    def close(self) -> None:
        """Close the file, end the trackers' runs and release the run lock; safe to call twice."""
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                os.close(fd)
            trackers, self.trackers = self.trackers, None
            if trackers is not None:
                trackers.close()
        finally:
            lock, self.lock = self.lock, None
            if lock is not None:
                lock.release()


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def truncate_after(path: Path, step: int) -> None:
    """Drop records past `step`: they came from an attempt that died after its last checkpoint.
    (Also a torn last line of a process killed mid-write.) Written atomically."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    kept = []
    for i, line in enumerate(lines):
        record = _parse(line)
        if record is None:
            if i == len(lines) - 1:
                continue  # torn by a process killed mid-write
            raise ValueError(f"{path}: line {i + 1} is not a JSON record")
        if record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    data = "".join(line + "\n" for line in kept)
    try:
        with storage_guard(path, "the metrics log", len(data.encode())):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def count_records(path: Path) -> tuple[int, int | None]:
    """How many records metrics.jsonl holds, and the last step it reached (None: no records)."""
    if not path.is_file():
        return 0, None
    n, last = 0, None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            record = _parse(line) if line.strip() else None
            if record is not None:
                n += 1
                if isinstance(record.get("step"), int):
                    last = max(last or 0, record["step"])
    return n, last


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
