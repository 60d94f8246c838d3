"""The report page at a 1280 px window: every table shows all its columns, nothing scrolls
sideways, and no chart text is cut off."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from budgetlm.budget.clock import Budget
from budgetlm.compare.report.build import build_report
from budgetlm.compare.report.tables import SHAPE_HEADER
from budgetlm.compare.report.write import write_report
from budgetlm.compare.run.experiment import Cell
from budgetlm.finetune.store import write_results
from budgetlm.models import get_shape

from ..browser import WINDOW, need_browser, render
from ..planted import (
    POWER_ARMS,
    POWER_BUDGETS,
    POWER_SEEDS,
    baseline_loss,
    plant_cell,
    plant_power_law_grid,
    planted_experiment,
)

# Long arm names, an LR grid, a failed cell with a long log path and a downstream suite with
# eight tasks: the widest tables a report has.
ARMS = [
    {"name": "baseline"},
    {"name": "selective_backprop_keep_half", "method": "selective_backprop"},
    {"name": "layer_drop_progressive", "method": "layer_drop"},
    {"name": "lion_with_tuned_learning_rate", "optim": "lion", "lr_grid": [1e-4, 3e-4, 9e-4]},
    {"name": "sophia_g", "optim": "sophia"},
]
TASKS = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]


def wide_grid(out: Path) -> Path:
    exp = planted_experiment(out, {"seeds": [1, 2, 3], "arms": ARMS, "budgets": ["20steps"]})
    for i, arm in enumerate(ARMS):
        lr = 3e-4 if "lr_grid" in arm else None
        for seed in (1, 2, 3):
            cell = Cell(arm["name"], "20steps", seed, lr)
            if arm["name"] == "sophia_g" and seed == 3:
                plant_cell(exp, out, cell, None, error="loss is nan at step 3; " * 12)
                continue
            plant_cell(exp, out, cell, 3.0 + i / 10 + seed / 1000, rst=123.456, epochs=0.00421)
            scores = {t: {"mean": 0.61234, "main_metric": "accuracy"} for t in TASKS}
            write_results(
                out / "cells" / cell.id,
                "glue",
                {"average": 0.6 + i / 50, "protocol": {"lr": 4e-5}, "tasks": scores},
            )
        if lr is not None:  # its LR search, on the tuning seed: 3e-4 wins inside the grid
            for grid_lr, loss in ((1e-4, 3.4), (3e-4, 3.3), (9e-4, 3.5)):
                plant_cell(
                    exp, out, Cell(arm["name"], "20steps", exp.tuning_seeds[0], grid_lr), loss
                )
    return out


def test_every_table_fits_a_1280px_window(tmp_path):
    need_browser()
    page = write_report(build_report(wide_grid(tmp_path / "grid")))["html"]
    info = render(page, screenshot=tmp_path / "report.png")
    assert info["window_width"] == WINDOW[0] == 1280
    headers = [t["header"][:2] for t in info["tables"]]
    # Summary, downstream, LR tuning, failed cells.
    assert len(info["tables"]) == 4, headers
    summary = info["tables"][0]
    assert summary["header"][-1] == "selection + Hessian"  # the column that used to be cut off
    for t in info["tables"]:
        # The table is no wider than its box, so the box has nothing to scroll.
        assert t["box_scroll_width"] <= t["box_client_width"], t
        assert t["right"] <= WINDOW[0], t
    scroll_width, client_width = info["document_width"]
    assert scroll_width <= client_width, "the page scrolls sideways"
    # The charts' legends and labels fit their figures, long arm names included.
    assert info["svg_count"] == 4
    assert info["clipped_text"] == []


def test_compute_saved_sensitivity_and_references_fit_a_1280px_window(tmp_path):
    """Four RST budgets: the compute-saved column, verdicts with their price sensitivity, the
    n-gram warnings and references table, the fit on the loss-vs-budget chart."""
    import json

    need_browser()
    out = tmp_path / "grid"
    plant_power_law_grid(out, POWER_ARMS)
    refs = {
        b: {"unigram": 10.0, "bigram": 6.0, "tokens": 10**6, "split": "test", "note": "n" * 90}
        for b in ("15s-rst", "30s-rst", "60s-rst", "120s-rst")
    }
    (out / "references.json").write_text(json.dumps(refs))
    page = write_report(build_report(out))["html"]
    info = render(page, screenshot=tmp_path / "report.png")
    assert info["errors"] == []
    # Four budget tables and the references table.
    assert len(info["tables"]) == 5
    assert "compute saved" in info["tables"][0]["header"]
    for t in info["tables"]:
        assert t["box_scroll_width"] <= t["box_client_width"], t
        assert t["right"] <= WINDOW[0], t
    scroll_width, client_width = info["document_width"]
    assert scroll_width <= client_width, "the page scrolls sideways"
    assert info["svg_count"] == 4 * 4 + 1
    assert info["clipped_text"] == []
    # Every arm series is on screen with an area, the baseline's fit among them.
    assert all(w > 0 and h > 0 for w, h in info["series_boxes"])
    text = page.read_text()
    assert text.count('data-part="fit"') == 1
    # Baseline means 9.22, 7.45, 6.27, 5.50 against a bigram of 6.0: three budgets warn.
    assert text.count("models are still in the n-gram regime") == 3


@pytest.mark.parametrize(
    ("wide_arm", "growing_arm", "budgets"),
    [
        # As long as the longest names above, at one budget (no compute saved).
        ("wide_model_d1024_as_shape_arm", "staged_growth_depth_doubling2", ("15s-rst",)),
        # Four RST budgets: compute saved and price sensitivity in every row.
        ("wide_model_d1024", "staged_depth_growth", POWER_BUDGETS),
    ],
)
def test_a_shape_study_fits_a_1280px_window(tmp_path, wide_arm, growing_arm, budgets):
    """The model column of a shape study (a growing arm's start → end) beside the others."""
    need_browser()
    tiny = dataclasses.replace(get_shape("gpt-tiny"), vocab_size=2048)
    wide, deep = dataclasses.replace(tiny, d_model=1024), dataclasses.replace(tiny, n_layers=32)
    arms = {"baseline": (tiny, tiny, 0.0), wide_arm: (wide, wide, 0.05)}
    arms[growing_arm] = (tiny, deep, -0.05)
    raw_arms = [
        {"name": "baseline"},
        {"name": wide_arm, "set": {"model.d_model": 1024}},
        {"name": growing_arm, "method": "staged"},
    ]
    out = tmp_path / "grid"
    exp = planted_experiment(
        out, {"seeds": list(POWER_SEEDS), "budgets": list(budgets), "arms": raw_arms}
    )
    for name, (start, end, shift) in arms.items():
        for budget in budgets:
            amount = Budget.parse(budget).amount
            for seed in POWER_SEEDS:
                plant_cell(
                    exp,
                    out,
                    Cell(name, budget, seed),
                    baseline_loss(amount, seed) + shift + seed / 1000,
                    rst=amount,
                    steps=37,
                    shapes=(start, end),
                )
    page = write_report(build_report(out))["html"]
    info = render(page, screenshot=tmp_path / "report.png")
    assert info["errors"] == []
    assert SHAPE_HEADER in info["tables"][0]["header"]
    for t in info["tables"]:
        assert t["box_scroll_width"] <= t["box_client_width"], t
        assert t["right"] <= WINDOW[0], t
    scroll_width, client_width = info["document_width"]
    assert scroll_width <= client_width, "the page scrolls sideways"
    assert info["clipped_text"] == []
