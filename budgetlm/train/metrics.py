"""metrics.jsonl: JSON lines, flushed as written, cut back to a checkpoint on resume; and the
experiment trackers (train.loggers) that get the same records."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from budgetlm.train.tracking.base import Tracker
from budgetlm.train.tracking.records import metrics_of, summary_of


class MetricsLog:
    """The run's log: metrics.jsonl always (other code reads it), then the trackers, if any."""

    def __init__(self, path: Path, trackers: Tracker | None = None) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run
        self.trackers = trackers

    def write(self, record: dict[str, Any]) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self.trackers is not None:
            self.trackers.log_metrics(metrics_of(record), int(record.get("step", 0)))

    def summary(self, summary: dict[str, Any]) -> None:
        """The attempt's summary, for the trackers (summary.json is the trainer's to write)."""
        if self.trackers is not None:
            self.trackers.log_summary(summary_of(summary))

    def close(self) -> None:
        """Close the file and end the trackers' runs; safe to call twice."""
        self._file.close()
        trackers, self.trackers = self.trackers, None
        if trackers is not None:
            trackers.close()


def truncate_after(path: Path, step: int) -> None:
    """Drop records past `step`: they came from an attempt that died after its last checkpoint."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    path.write_text("".join(line + "\n" for line in kept))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
