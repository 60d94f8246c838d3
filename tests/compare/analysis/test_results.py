"""LR tuning read from planted cells: the search widens past an edge, carries, and is recorded."""

from __future__ import annotations

import json
import math
from pathlib import Path

from budgetlm.compare.analysis.results import (
    arm_records,
    judged_cells,
    planned_tuning_cells,
    read_cell,
    tuning,
)
from budgetlm.compare.run.experiment import Cell, Experiment

from ..planted import plant_cell, planted_experiment

OPTIMUM = 2.4e-2  # far above the first grid around 3e-3 (1.5e-3, 3e-3, 6e-3)


def loss_at(lr: float, optimum: float = OPTIMUM) -> float:
    """A convex function of log LR, lowest at `optimum`."""
    return 3.0 + 0.1 * math.log2(lr / optimum) ** 2


def experiment(out: Path, **tuning) -> Experiment:
    return planted_experiment(
        out,
        {
            "seeds": [1, 2],
            "budgets": ["20steps", "40steps"],
            "arms": [{"name": "baseline"}, {"name": "lion", "optim": "lion", "tune": False}],
            "tuning": {"budgets": "first", **tuning},
        },
    )


def run_tuning(exp: Experiment, out: Path, objective=loss_at) -> list[Cell]:
    """Finish every tuning cell the search asks for until it asks for no more, like the grid
    does (an objective of None: the cell failed); return the cells in the order planted."""
    planted: list[Cell] = []
    while todo := [c for c in planned_tuning_cells(exp, out) if c not in planted]:
        for cell in todo:
            loss = objective(cell.lr)
            plant_cell(exp, out, cell, loss, error=None if loss is not None else "diverged")
            planted.append(cell)
    return planted


def test_the_search_extends_past_the_edge_and_stops_inside(tmp_path):
    out = tmp_path / "grid"
    exp = experiment(out, max_extensions=4)
    baseline = exp.arm("baseline")
    assert baseline.lr_grid == (1.5e-3, 3e-3, 6e-3)
    # Before anything ran: the first grid only, no choice, no judged cells.
    assert planned_tuning_cells(exp, out) == exp.tuning_cells()
    assert judged_cells(exp, out)["baseline", "20steps"] is None

    planted = run_tuning(exp, out)
    assert [c.lr for c in planted] == [1.5e-3, 3e-3, 6e-3, 1.2e-2, 2.4e-2, 4.8e-2]
    t = tuning(exp, baseline, "20steps", out)
    assert t.chosen == 2.4e-2 and t.status == "chosen"
    assert not t.at_edge and not t.exhausted  # the optimum is bracketed with one to spare
    assert [(e.lr, e.side, e.edge) for e in t.extensions] == [
        (1.2e-2, "above", 6e-3),
        (2.4e-2, "above", 1.2e-2),
        (4.8e-2, "above", 2.4e-2),
    ]
    assert "was the highest tried" in t.extensions[0].reason
    assert t.grid == (1.5e-3, 3e-3, 6e-3) and t.tuned_at == "20steps" and not t.carried
    assert list(t.scores) == [c.lr for c in planted]
    # The judged seeds run at the chosen LR; no tuning cell is among them.
    assert judged_cells(exp, out)["baseline", "20steps"] == [
        Cell("baseline", "20steps", seed, 2.4e-2) for seed in (1, 2)
    ]


def test_a_search_out_of_extensions_records_that_it_is_at_the_edge(tmp_path):
    out = tmp_path / "grid"
    exp = experiment(out, max_extensions=1)
    planted = run_tuning(exp, out)
    assert [c.lr for c in planted] == [1.5e-3, 3e-3, 6e-3, 1.2e-2]
    t = tuning(exp, exp.arm("baseline"), "20steps", out)
    assert t.chosen == 1.2e-2 and t.at_edge and t.exhausted
    assert [e.lr for e in t.extensions] == [1.2e-2]


def test_the_search_extends_downwards_too(tmp_path):
    out = tmp_path / "grid"
    exp = experiment(out)
    planted = run_tuning(exp, out, lambda lr: loss_at(lr, optimum=1e-3))
    assert [c.lr for c in planted] == [1.5e-3, 3e-3, 6e-3, 7.5e-4, 3.75e-4]
    t = tuning(exp, exp.arm("baseline"), "20steps", out)
    assert [(e.lr, e.side) for e in t.extensions] == [(7.5e-4, "below"), (3.75e-4, "below")]
    assert "was the lowest tried" in t.extensions[0].reason
    assert t.chosen == 7.5e-4 and not t.at_edge


def test_a_failed_lr_bounds_the_search(tmp_path):
    out = tmp_path / "grid"
    exp = experiment(out)
    for lr in (1.5e-3, 3e-3):
        plant_cell(exp, out, Cell("baseline", "20steps", 1002, lr), loss_at(lr))
    plant_cell(exp, out, Cell("baseline", "20steps", 1002, 6e-3), None, error="loss is nan")
    t = tuning(exp, exp.arm("baseline"), "20steps", out)
    assert t.chosen == 3e-3 and t.extensions == () and not t.at_edge
    assert t.scores[6e-3] == math.inf


def test_every_lr_failing_tries_lower_then_gives_up(tmp_path):
    out = tmp_path / "grid"
    exp = experiment(out, max_extensions=1)
    run_tuning(exp, out, lambda lr: None)
    t = tuning(exp, exp.arm("baseline"), "20steps", out)
    assert [(e.lr, e.side) for e in t.extensions] == [(7.5e-4, "below")]
    assert t.chosen is None and t.status == "failed"
    assert judged_cells(exp, out)["baseline", "20steps"] is None


def test_an_lr_chosen_at_the_first_budget_is_carried(tmp_path):
    out = tmp_path / "grid"
    exp = experiment(out, max_extensions=3)
    planted = run_tuning(exp, out)
    assert {c.budget for c in planted} == {"20steps"}  # nothing is tuned at 40steps
    t = tuning(exp, exp.arm("baseline"), "40steps", out)
    assert t.carried and t.tuned_at == "20steps" and t.chosen == 2.4e-2
    assert judged_cells(exp, out)["baseline", "40steps"] == [
        Cell("baseline", "40steps", seed, 2.4e-2) for seed in (1, 2)
    ]


def test_arm_records_say_what_the_report_shows(tmp_path):
    out = tmp_path / "grid"
    exp = experiment(out, max_extensions=3)
    run_tuning(exp, out)
    splits = {
        "train": {"n_documents": 149, "n_tokens": 60265},
        "tune": {"n_documents": 5, "n_tokens": 2427},
        "test": {"n_documents": 4, "n_tokens": 2039},
    }
    judged = Cell("baseline", "20steps", 1, 2.4e-2)
    run_dir = plant_cell(exp, out, judged, 3.0)
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps({**meta, "dataset": {"splits": splits}}))
    assert read_cell(judged, out).splits == splits

    records = arm_records(exp, out)
    baseline = records["baseline", "20steps"]
    assert baseline.tuned and baseline.lr == 2.4e-2 and baseline.splits == splits
    assert baseline.tuning is not None and len(baseline.tuning.extensions) == 3
    assert records["baseline", "40steps"].tuning.carried
    lion = records["lion", "20steps"]
    assert not lion.tuned and lion.tuning is None and lion.lr is None
    assert lion.splits is None  # no lion cell has finished
