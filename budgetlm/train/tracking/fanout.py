"""All of a run's trackers behind one: a tracker that fails is reported once and dropped."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from budgetlm.train.tracking.base import Tracker


class TrackerSet:
    """Calls every tracker in turn. An exception (a full disk, a lost server) must not end the
    training: the tracker is named on stderr once and turned off, and metrics.jsonl, written
    before any tracker is called, stays the complete record."""

    name = "trackers"

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)

    def log_config(self, config: dict[str, Any]) -> None:
        self._each("logging the config", lambda t: t.log_config(config))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if metrics:
            self._each("logging metrics", lambda t: t.log_metrics(metrics, step))

    def log_summary(self, summary: dict[str, float | str]) -> None:
        self._each("logging the summary", lambda t: t.log_summary(summary))

    def close(self) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            try:
                tracker.close()
            except Exception as e:  # closing one must not skip the others
                _warn(tracker, "closing", e)

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as e:  # any tracker failure is survivable
                self.trackers.remove(tracker)
                _warn(tracker, what, e)
                with contextlib.suppress(Exception):  # let it flush what it has; it is off
                    tracker.close()


def _warn(tracker: Tracker, what: str, error: Exception) -> None:
    print(
        f"warning: the {tracker.name} tracker failed {what} and is off for the rest of this "
        f"run (metrics.jsonl has everything): {type(error).__name__}: {error}",
        file=sys.stderr,
    )
