"""TensorBoard: event files in RUN_DIR/tensorboard, written by torch's SummaryWriter."""

from __future__ import annotations

import json
from typing import Any

from budgetlm.train.tracking.base import RunIdentity


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, run: RunIdentity) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self._hparams = hparams
        self.log_dir = run.run_dir / "tensorboard"
        # A resumed attempt appends a new event file; purge_step makes TensorBoard drop what
        # the dead attempt logged past the checkpoint (metrics.jsonl is cut back the same way).
        purge = run.resumed_at + 1 if run.resumed_at else None
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge)
        self._tags = run.tags
        self._config: dict[str, Any] = {}
        self._step = run.resumed_at

    def log_config(self, config: dict[str, Any]) -> None:
        self._config = config
        self._writer.add_text("config", _markdown_table(config), self._step)
        if self._tags:
            self._writer.add_text("tags", _markdown_table(self._tags), self._step)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, step)
        self._step = step

    def log_summary(self, summary: dict[str, float | str]) -> None:
        step = int(summary.get("steps", self._step))
        numbers = {k: v for k, v in summary.items() if isinstance(v, float)}
        for key, value in numbers.items():
            self._writer.add_scalar(f"summary/{key}", value, step)
        self._writer.add_text("summary", _markdown_table(summary), step)
        if "final_val_loss" in numbers:
            # The HParams dashboard: this run's settings against its final loss, beside the
            # other runs under the same --logdir (e.g. every cell of a compare grid).
            settings = {k: _hparam(v) for k, v in self._config.items()}
            metric = {"summary/final_val_loss": numbers["final_val_loss"]}
            for part in self._hparams(settings, metric):
                self._writer.file_writer.add_summary(part, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _hparam(value: Any) -> int | float | str | bool:
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value)


def _markdown_table(values: dict[str, Any]) -> str:
    rows = [f"| {key} | {_hparam(value)} |" for key, value in values.items()]
    return "\n".join(["| key | value |", "|---|---|", *rows])
