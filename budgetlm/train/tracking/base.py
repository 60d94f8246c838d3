"""The interface every tracker implements, and what a tracker is told about the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from budgetlm.config import TrainConfig


@dataclass(frozen=True)
class RunIdentity:
    """Who the run is to a tracker: its name, where it lives, how it is grouped."""

    name: str
    run_dir: Path
    out_dir: Path  # run.out_dir: home of shared local stores (MLflow's default)
    tags: dict[str, str] = field(default_factory=dict)
    resumed_at: int = 0  # the checkpoint step this attempt continues from; 0 = a fresh start
    settings: TrainConfig = field(default_factory=TrainConfig)

    @property
    def experiment(self) -> str | None:
        """A compare grid's name: the group its cells are shown under."""
        return self.tags.get("experiment")


class Tracker(Protocol):
    """One experiment tracker of a run. Called on rank 0 only, in this order: `log_config` once,
    `log_metrics` per record, `log_summary` at the end of an attempt (absent if it crashed),
    then `close`. Values arrive already shaped (budgetlm/train/tracking/records.py)."""

    name: str

    def log_config(self, config: dict[str, Any]) -> None:
        """The resolved config as {dotted key: value}, run.tags included."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Named metrics (`train/loss`, `eval/val_loss`, `progress/p`, ...) at optimizer step
        `step`."""

    def log_summary(self, summary: dict[str, float | str]) -> None:
        """The attempt's summary as {path: number or text}, `status` included."""

    def close(self) -> None:
        """Flush and end the tracker's run: failed when no summary came."""
