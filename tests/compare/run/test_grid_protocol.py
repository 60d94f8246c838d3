"""The grid's tuning protocol, with cells that finish at once with planted losses: the order cells
start in, extensions queued as results arrive, judged seeds after the choice, and a re-run that
runs nothing. (test_grid.py runs real cells.)"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import yaml

from budgetlm.compare.run.experiment import Cell
from budgetlm.compare.run.experiment_file import load_experiment
from budgetlm.compare.run.grid import GridRunner, _Running

ROOT = Path(__file__).resolve().parents[3]
OPTIMUM = 1.2e-2  # above the first grid around gpt-tiny.yaml's 3e-3: one extension reaches it


def loss_at(lr: float) -> float:
    return 3.0 + 0.1 * math.log2(lr / OPTIMUM) ** 2


class _Finished:
    """A cell process that has already exited successfully."""

    returncode = 0

    def poll(self) -> int:
        return 0

    def wait(self) -> int:
        return 0

    def send_signal(self, sig: int) -> None:
        pass

    def kill(self) -> None:
        pass


class PlantingGrid(GridRunner):
    """Every launched cell 'trains' instantly: its summary.json gets the planted loss."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, poll_seconds=0, progress=False, **kwargs)
        self.launched: list[Cell] = []

    def _prepare_data(self, cells: list[Cell]) -> None:
        pass  # nothing trains, nothing to tokenize

    def _launch(self, cell: Cell) -> _Running:
        self.launched.append(cell)
        run_dir = self.out_dir / "cells" / cell.id
        lr = cell.lr if cell.lr is not None else 3e-3
        summary = {"status": "finished", "steps": 20, "final_val_loss": loss_at(lr)}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return _Running(cell, _Finished(), open(os.devnull, "w"))  # noqa: SIM115


def experiment(tmp_path: Path) -> Path:
    raw = {
        "name": "protocol",
        "base": str(ROOT / "configs" / "gpt-tiny.yaml"),
        "budgets": ["20steps"],
        "seeds": [1, 2],
        "tuning": {"max_extensions": 2},
        "arms": [{"name": "baseline"}, {"name": "lion", "optim": "lion", "tune": False}],
    }
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_extensions_queue_as_results_arrive_and_judged_seeds_follow(tmp_path):
    exp = load_experiment(experiment(tmp_path))
    out = tmp_path / "out"
    grid = PlantingGrid(exp, out, jobs=1)
    outcome = grid.run()
    assert [(c.arm, c.lr, c.seed) for c in grid.launched] == [
        # The first grid, then one extension past its edge (best 6e-3 was the highest), then
        # a second (1.2e-2 was the highest) that brackets the optimum: the search stops.
        ("baseline", 1.5e-3, 1002),
        ("baseline", 3e-3, 1002),
        ("baseline", 6e-3, 1002),
        ("baseline", 1.2e-2, 1002),
        ("baseline", 2.4e-2, 1002),
        # The untuned arm's cells were queued from the start, behind the tuning cells.
        ("lion", None, 1),
        ("lion", None, 2),
        # The judged seeds, at the chosen LR, once it was chosen.
        ("baseline", 1.2e-2, 1),
        ("baseline", 1.2e-2, 2),
    ]
    assert len(outcome.finished) == 9 and not outcome.failed
    for cell in grid.launched:
        cfg = yaml.safe_load((out / "cells" / cell.id / "cell.yaml").read_text())
        expected = "tune" if cell.seed == 1002 else "test"
        assert cfg["train"]["eval_split"] == expected, cell.id

    again = PlantingGrid(exp, out, jobs=1)
    outcome = again.run()
    assert again.launched == [] and len(outcome.skipped) == 9


def test_an_extension_starts_before_queued_judged_cells(tmp_path):
    """With two tuned budgets, a judged seed of the first may be queued when the second's search
    asks for an extension: the extension still starts first."""
    path = experiment(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["budgets"] = ["20steps", "40steps"]
    path.write_text(yaml.safe_dump(raw))
    exp = load_experiment(path)
    grid = PlantingGrid(exp, tmp_path / "out", jobs=1)
    grid.run()
    first_judged = next(i for i, c in enumerate(grid.launched) if c.seed != 1002)
    assert all(c.seed != 1002 for c in grid.launched[first_judged:])
    assert Cell("baseline", "40steps", 1002, 2.4e-2) in grid.launched[:first_judged]
