"""Read a grid's cells back from disk: status, final metrics, curves, the LR each arm was given.

Everything here is derived from the cells' own files (summary.json, metrics.jsonl, meta.json,
error.json), so `budgetlm report DIR` can rebuild the report at any time, and a report never
holds a number its runs did not write.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetlm.compare.run.cell import ERROR_FILE, FINETUNE_ERROR
from budgetlm.compare.run.experiment import Arm, Cell, Experiment
from budgetlm.finetune.store import read_results


@dataclass
class CellResult:
    cell: Cell
    status: str  # finished | failed | interrupted | pending
    run_dir: Path
    summary: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)  # the run's eval records
    meta: dict[str, Any] | None = None
    downstream: dict[str, dict[str, Any]] = field(default_factory=dict)  # suite -> scores
    # Loss of the last logged training step (metrics.jsonl): one batch, as the method saw it.
    train_loss: float | None = None

    @property
    def final_loss(self) -> float | None:
        return None if self.summary is None else self.summary.get("final_val_loss")

    @property
    def progress(self) -> float:
        if self.status == "finished":
            return 1.0
        return last_progress(self.run_dir / "metrics.jsonl")


def read_cell(cell: Cell, out_dir: Path, with_curve: bool = True) -> CellResult:
    run_dir = out_dir / "cells" / cell.id
    summary_path, error_path = run_dir / "summary.json", run_dir / ERROR_FILE
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("status") == "finished":
            meta_path = run_dir / "meta.json"
            finetune_error = run_dir / FINETUNE_ERROR
            records = _records(run_dir / "metrics.jsonl")
            train = [r["loss"] for r in records if r.get("event") == "train" and "loss" in r]
            return CellResult(
                cell,
                "finished",
                run_dir,
                summary=summary,
                curve=[r for r in records if r.get("event") == "eval"] if with_curve else [],
                train_loss=float(train[-1]) if train else None,
                meta=json.loads(meta_path.read_text()) if meta_path.is_file() else None,
                downstream=read_results(run_dir),
                # Trained, but its fine-tuning failed: the loss counts, the report says why.
                error=json.loads(finetune_error.read_text()) if finetune_error.is_file() else None,
            )
    if error_path.is_file():
        return CellResult(cell, "failed", run_dir, error=json.loads(error_path.read_text()))
    if (run_dir / "checkpoints").is_dir() or (run_dir / "metrics.jsonl").is_file():
        return CellResult(cell, "interrupted", run_dir)
    return CellResult(cell, "pending", run_dir)


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_progress(path: Path) -> float:
    """Budget progress of a running cell, from the tail of its metrics log (0 when none yet)."""
    if not path.is_file():
        return 0.0
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 4096))
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        try:
            return float(json.loads(line)["p"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0.0


# -- learning-rate tuning -----------------------------------------------------------------------


@dataclass
class Tuning:
    """The LR grid of one arm at one budget, scored on the tuning seeds."""

    arm: str
    budget: str
    scores: dict[float, float | None]  # lr -> mean final held-out loss (inf: failed; None: not run)
    chosen: float | None  # None until every grid cell has an outcome

    @property
    def at_edge(self) -> bool:
        grid = sorted(self.scores)
        return self.chosen is not None and len(grid) > 2 and self.chosen in (grid[0], grid[-1])


def tuning(exp: Experiment, arm: Arm, budget: str, out_dir: Path) -> Tuning:
    """Score each LR by its mean loss over the tuning seeds; a failed (diverged) run counts as
    infinitely bad, so a grid that diverges at high LR still chooses among the rest."""
    scores: dict[float, float | None] = {}
    complete = True
    for lr in arm.lr_grid:
        losses: list[float] = []
        for seed in exp.tuning_seeds:
            result = read_cell(Cell(arm.name, budget, seed, lr), out_dir, with_curve=False)
            if result.status == "finished" and result.final_loss is not None:
                losses.append(float(result.final_loss))
            elif result.status == "failed":
                losses.append(math.inf)
            else:
                complete = False
        scores[lr] = sum(losses) / len(losses) if len(losses) == len(exp.tuning_seeds) else None
    chosen = None
    if complete:
        finite = {lr: s for lr, s in scores.items() if s is not None and math.isfinite(s)}
        if finite:
            chosen = min(finite, key=lambda lr: (finite[lr], arm.lr_grid.index(lr)))
    return Tuning(arm.name, budget, scores, chosen)


def judged_cells(exp: Experiment, out_dir: Path) -> dict[tuple[str, str], list[Cell] | None]:
    """The cells each (arm, budget) is judged on; None while its LR tuning is unfinished (or
    every LR of its grid failed)."""
    out: dict[tuple[str, str], list[Cell] | None] = {}
    for arm in exp.arms:
        for budget in exp.budgets:
            if arm.tuned:
                chosen = tuning(exp, arm, budget, out_dir).chosen
                out[arm.name, budget] = (
                    None if chosen is None else exp.final_cells(arm, budget, chosen)
                )
            else:
                out[arm.name, budget] = exp.final_cells(arm, budget, None)
    return out


def all_cells(exp: Experiment, out_dir: Path) -> list[Cell]:
    """Every cell the grid has run or will run, tuning cells first."""
    cells = dict.fromkeys(exp.tuning_cells())
    for judged in judged_cells(exp, out_dir).values():
        cells.update(dict.fromkeys(judged or []))
    return list(cells)
