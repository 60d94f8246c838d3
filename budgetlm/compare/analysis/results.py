"""Read a grid's cells back from disk: status, final metrics, curves, the LR each arm was given.

Everything here is derived from the cells' own files (summary.json, metrics.jsonl, meta.json,
error.json), so `budgetlm report DIR` can rebuild the report at any time, and a report never
holds a number its runs did not write.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetlm.compare.run.cell import ERROR_FILE, FINETUNE_ERROR
from budgetlm.compare.run.experiment import TEST_SPLIT, TUNE_SPLIT, Arm, Cell, Experiment
from budgetlm.compare.run.shapes import SHAPE_FILE
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
    # shape.json: {"start": facts, "end": facts}, facts = label, params, params_non_embedding,
    # train_flops_per_token, shape (compare/run/shapes.py); None for runs from before it.
    shapes: dict[str, dict[str, Any]] | None = None

    @property
    def final_loss(self) -> float | None:
        return None if self.summary is None else self.summary.get("final_val_loss")

    @property
    def splits(self) -> dict[str, dict[str, int]] | None:
        """Documents and tokens per split of the run's prepared dataset (train, tune, test),
        as its meta.json recorded them."""
        dataset = (self.meta or {}).get("dataset") or {}
        return dataset.get("splits")

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
            meta_path, shape_path = run_dir / "meta.json", run_dir / SHAPE_FILE
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
                shapes=json.loads(shape_path.read_text()) if shape_path.is_file() else None,
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


@dataclass(frozen=True)
class Extension:
    """One LR a search added because its best LR sat at an edge of the LRs tried so far."""

    lr: float  # the LR added
    side: str  # "above" or "below" the LRs tried before it
    edge: float  # the edge LR it was added beyond
    reason: str  # in words, for the report


@dataclass
class Tuning:
    """How one arm's LR was chosen at one budget: its search on the tuning seeds, scored on the
    tune split. At a budget that carries an LR (`tuning.budgets`), the search of `tuned_at`."""

    arm: str
    budget: str
    # Every LR tried, the first grid then the extensions in order: mean final held-out loss
    # over the tuning seeds (inf: a seed failed, e.g. diverged; None: not finished yet).
    scores: dict[float, float | None]
    chosen: float | None  # None while cells are unfinished, or when every LR failed
    grid: tuple[float, ...] = ()  # the first grid
    extensions: tuple[Extension, ...] = ()
    max_extensions: int = 0
    tuned_at: str = ""  # the budget whose tuning cells chose; this budget unless carried
    seeds: tuple[int, ...] = ()  # the tuning seeds
    default_lr: float | None = None  # the arm's configured LR (centre of a default grid)
    grid_given: bool = False  # the first grid is the arm's own lr_grid
    split: str = TUNE_SPLIT  # the held-out split the scores are losses on

    @property
    def carried(self) -> bool:
        """The LR was chosen at another budget (`tuned_at`) and carried here."""
        return bool(self.tuned_at) and self.tuned_at != self.budget

    @property
    def status(self) -> str:
        """running (cells to finish), chosen, or failed (every LR tried failed)."""
        if self.chosen is not None:
            return "chosen"
        return "running" if any(s is None for s in self.scores.values()) else "failed"

    @property
    def at_edge(self) -> bool:
        """The chosen LR is the lowest or highest tried: the extensions ran out before the
        search bracketed the best LR (a failed LR beyond it does bracket it)."""
        return (
            self.chosen is not None
            and len(self.scores) > 1
            and self.chosen in (min(self.scores), max(self.scores))
        )

    @property
    def exhausted(self) -> bool:
        """Every extension allowed was used."""
        return len(self.extensions) >= self.max_extensions

    def cells(self, exp: Experiment) -> list[Cell]:
        """The tuning cells behind these scores (at `tuned_at`)."""
        arm = exp.arm(self.arm)
        return exp.tuning_cells_of(arm, self.tuned_at or self.budget, tuple(self.scores))


def tuning(exp: Experiment, arm: Arm, budget: str, out_dir: Path) -> Tuning:
    """Search an arm's LR at a budget (or at the budget its LR is carried from).

    Each LR is scored by its mean loss over the tuning seeds; a failed (diverged) run counts as
    infinitely bad, so a grid that diverges at high LR still chooses among the rest. When the
    best LR is the highest (lowest) tried, the next LR above (below) it is added, up to
    `tuning.max_extensions` times; when every LR failed, the next one below the lowest.
    Everything is derived from the cells' files, so a search resumes where its cells are.
    """
    source = exp.tuned_at(budget)
    spec = exp.spec
    scores = {lr: _score(exp, arm, source, lr, out_dir) for lr in arm.lr_grid}
    extensions: list[Extension] = []
    chosen = None
    while all(s is not None for s in scores.values()):
        best = _best(scores)
        side, edge, reason = _edge(best, scores)
        if side is None or len(extensions) >= spec.max_extensions:
            chosen = best
            break
        lr = spec.beyond(edge, side)
        extensions.append(Extension(lr, side, edge, reason))
        scores[lr] = _score(exp, arm, source, lr, out_dir)
    return Tuning(
        arm.name,
        budget,
        scores,
        chosen,
        grid=arm.lr_grid,
        extensions=tuple(extensions),
        max_extensions=spec.max_extensions,
        tuned_at=source,
        seeds=exp.tuning_seeds,
        default_lr=arm.default_lr,
        grid_given=arm.grid_given,
    )


def _score(exp: Experiment, arm: Arm, budget: str, lr: float, out_dir: Path) -> float | None:
    """Mean final loss of one LR over the tuning seeds; inf if any failed; None if unfinished."""
    losses: list[float] = []
    for cell in exp.tuning_cells_of(arm, budget, (lr,)):
        result = read_cell(cell, out_dir, with_curve=False)
        if result.status == "finished" and result.final_loss is not None:
            losses.append(float(result.final_loss))
        elif result.status == "failed":
            losses.append(math.inf)
        else:
            return None
    return sum(losses) / len(losses)


def _best(scores: dict[float, float | None]) -> float | None:
    """The LR of the lowest finite score (ties: the one tried first); None if all failed."""
    finite = [(s, i, lr) for i, (lr, s) in enumerate(scores.items()) if s is not None]
    finite = [t for t in finite if math.isfinite(t[0])]
    return min(finite)[2] if finite else None


def _edge(best: float | None, scores: dict) -> tuple[str | None, float, str]:
    """Which edge the search should extend beyond, the LR at it, and why (None: no edge)."""
    low, high = min(scores), max(scores)
    if best is None:
        return "below", low, f"every LR tried failed; trying below the lowest, {low:g}"
    if best == high:
        return "above", high, f"the best LR, {high:g}, was the highest tried"
    if best == low:
        return "below", low, f"the best LR, {low:g}, was the lowest tried"
    return None, best, ""


def planned_tuning_cells(exp: Experiment, out_dir: Path) -> list[Cell]:
    """Every tuning cell the grid has run or must run now: each tuned arm's first grid at each
    budget it is tuned at, plus the extensions its search has asked for so far."""
    cells = dict.fromkeys(exp.tuning_cells())
    for arm in exp.arms:
        if arm.tuned:
            for budget in exp.spec.budgets:
                cells.update(dict.fromkeys(tuning(exp, arm, budget, out_dir).cells(exp)))
    return list(cells)


def judged_cells(exp: Experiment, out_dir: Path) -> dict[tuple[str, str], list[Cell] | None]:
    """The cells each (arm, budget) is judged on; None while its LR tuning is unfinished (or
    every LR of its search failed). Tuning cells are never among them."""
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
    cells = dict.fromkeys(planned_tuning_cells(exp, out_dir))
    for judged in judged_cells(exp, out_dir).values():
        cells.update(dict.fromkeys(judged or []))
    return list(cells)


# -- what the report says about each arm at each budget -----------------------------------------


@dataclass
class ArmRecord:
    """How one arm was given its LR at one budget, and what data its losses come from."""

    arm: str
    budget: str
    tuned: bool  # False: the arm opted out (`tune: false`, or no tuning section): "untuned"
    tuning: Tuning | None  # its search (None when untuned)
    lr: float | None  # the LR its judged cells run at (None: untuned at its configured LR)
    judged_split: str = TEST_SPLIT
    # Per split of the prepared dataset (train, tune, test): n_documents and n_tokens, from a
    # cell's meta.json (None until a cell has finished).
    splits: dict[str, dict[str, int]] | None = None


def arm_records(exp: Experiment, out_dir: Path) -> dict[tuple[str, str], ArmRecord]:
    """Per (arm, budget): tuned or not, the tuning record, the LR judged at, the split sizes."""
    out: dict[tuple[str, str], ArmRecord] = {}
    for arm in exp.arms:
        for budget in exp.budgets:
            t = tuning(exp, arm, budget, out_dir) if arm.tuned else None
            lr = t.chosen if t else (arm.lr_grid[0] if arm.lr_grid else None)
            cells = exp.final_cells(arm, budget, lr) if t is None or lr is not None else []
            if t is not None:
                cells += t.cells(exp)
            results = (read_cell(c, out_dir, with_curve=False) for c in cells)
            out[arm.name, budget] = ArmRecord(
                arm.name, budget, arm.tuned, t, lr, splits=split_sizes(results)
            )
    return out


def split_sizes(results: Iterable[CellResult]) -> dict[str, dict[str, int]] | None:
    """The dataset's split sizes recorded by the first finished cell among `results`."""
    for result in results:
        if result.splits:
            return result.splits
    return None
