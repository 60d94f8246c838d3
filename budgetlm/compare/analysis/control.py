"""Read the random-init control back (compare/run/control.py): its scores, or why it failed.

Apart from `results.py` so that a report built by a grid process that started before the
control existed (it imported `results` then) still finds everything it imports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from budgetlm.compare.run.cell import ERROR_FILE
from budgetlm.compare.run.control import CONTROL_CONFIG, CONTROL_SPEC, control_dir
from budgetlm.finetune.store import read_results


@dataclass
class ControlResult:
    """The baseline's architecture fine-tuned from random weights: its scores by suite (each
    fine-tuning seed with its own initialisation), or why it failed."""

    run_dir: Path
    arm: str | None  # the arm whose architecture it has (the baseline)
    downstream: dict[str, dict[str, Any]] = field(default_factory=dict)  # suite -> scores
    error: dict[str, Any] | None = None
    model: dict[str, Any] | None = None  # the `model` section of its config

    def scores(self, suite: str, task: str | None = None) -> list[float]:
        """The suite average (or a task's main metric) of each fine-tuning seed."""
        stored = self.downstream.get(suite)
        if not stored:
            return []
        tasks = stored.get("tasks", {})
        chosen = [task] if task is not None else list(tasks)
        per_task = []
        for name in chosen:
            t = tasks.get(name) or {}
            main = t.get("main_metric")
            reported = t.get("reported") or []
            if main is None or not reported:
                if "mean" in t:  # results without per-seed scores: the task's mean only
                    per_task.append([float(t["mean"])])
                continue
            per_task.append([float(r[main]) for r in reported])
        if not per_task or len({len(v) for v in per_task}) != 1:
            return [float(stored["average"])] if task is None and "average" in stored else []
        return [sum(seed) / len(seed) for seed in zip(*per_task, strict=True)]


def read_control(out_dir: Path) -> ControlResult | None:
    """The experiment's random-init control, if the grid ran (or started) one."""
    folder = control_dir(out_dir)
    if not folder.is_dir():
        return None
    spec_path, config_path = folder / CONTROL_SPEC, folder / CONTROL_CONFIG
    spec = json.loads(spec_path.read_text()) if spec_path.is_file() else {}
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else None
    error_path = folder / ERROR_FILE
    return ControlResult(
        folder,
        spec.get("arm"),
        downstream=read_results(folder),
        error=json.loads(error_path.read_text()) if error_path.is_file() else None,
        model=(config or {}).get("model"),
    )
