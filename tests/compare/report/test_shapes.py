"""Shape studies in the report: parameters, FLOPs per token and RST per step beside the loss."""

from __future__ import annotations

import csv
import dataclasses

import pytest

from budgetlm.compare.report.build import build_report
from budgetlm.compare.report.tables import (
    SHAPE_HEADER,
    SUMMARY_HEADER,
    fmt_si,
    fmt_start_end,
    summary_header,
)
from budgetlm.compare.report.write import write_report
from budgetlm.compare.run.experiment import Cell
from budgetlm.models import count_params, flops_per_token, get_shape

from ..html_check import check_html, tables
from ..planted import plant_cell, planted_experiment

TINY = dataclasses.replace(get_shape("gpt-tiny"), vocab_size=2048)
WIDE = dataclasses.replace(TINY, d_model=256)
DEEP = dataclasses.replace(TINY, n_layers=8)
ARMS = [
    {"name": "baseline"},
    {"name": "wide", "set": {"model.d_model": 256}},
    {"name": "grow", "method": "staged"},
]
# arm -> (start, end, RST spent, steps): 20 RST seconds each, bought in more or fewer steps.
PLAN = {
    "baseline": (TINY, TINY, 20.0, 40),
    "wide": (WIDE, WIDE, 20.0, 16),
    "grow": (TINY, DEEP, 20.0, 25),
}


def shape_grid(out, plan=PLAN, budgets=("20s-rst",)):
    arms = [a for a in ARMS if a["name"] in plan]
    exp = planted_experiment(out, {"seeds": [1, 2], "arms": arms, "budgets": list(budgets)})
    for budget in budgets:
        for i, (arm, (start, end, rst, steps)) in enumerate(plan.items()):
            for seed in (1, 2):
                cell = Cell(arm, budget, seed)
                loss = 3.0 - i / 10 + seed / 100
                plant_cell(exp, out, cell, loss, rst=rst, steps=steps, shapes=(start, end))
    return exp


def spaced(text: str) -> str:
    """No-break spaces (which keep a figure on one line) read as spaces."""
    return text.replace("\u00a0", " ")


def csv_rows(path):
    with open(path) as f:
        return {row["arm"]: row for row in csv.DictReader(f)}


def test_a_shape_study_shows_params_flops_and_rst_per_step_beside_the_loss(tmp_path):
    out = tmp_path / "grid"
    shape_grid(out)
    report = build_report(out)
    assert report.shape_study
    paths = write_report(report)

    # The page: the model column sits just before the held-out loss.
    page = paths["html"].read_text()
    assert check_html(page)["errors"] == []
    header, *rows = tables(page)[0]
    col = header.index(SHAPE_HEADER)
    assert header[col + 1] == "held-out loss (mean ± std)"
    shown = {row[0]: spaced(row[col]) for row in rows}
    tiny = fmt_si(count_params(TINY, embeddings=False))
    wide = fmt_si(count_params(WIDE, embeddings=False))
    deep = fmt_si(count_params(DEEP, embeddings=False))
    # Its lines: parameters, FLOPs per token, RST per step (20 RST seconds / 40 steps).
    assert shown["baseline"] == f"{tiny} {fmt_si(flops_per_token(TINY))} 0.5 s"
    assert shown["wide"] == f"{wide} {fmt_si(flops_per_token(WIDE))} 1.25 s"
    # The growing arm: start → end.
    flops = f"{fmt_si(flops_per_token(TINY))} → {fmt_si(flops_per_token(DEEP))}"
    assert shown["grow"] == f"{tiny} → {deep} {flops} 0.8 s"
    assert "grew during training" in page

    # Markdown: the same column, its lines joined like the header's parts.
    md = spaced(paths["markdown"].read_text())
    assert f"| n | {SHAPE_HEADER} | held-out loss (mean ± std) |" in md
    assert f"| {tiny} → {deep} · {flops} · 0.8 s |" in md
    assert md.count("Shape study:") == 1

    # summary.csv: the numbers, total parameters too.
    rows = csv_rows(paths["summary_csv"])
    assert float(rows["wide"]["params_non_embedding"]) == count_params(WIDE, embeddings=False)
    assert float(rows["wide"]["params"]) == count_params(WIDE)
    assert float(rows["grow"]["params"]) == count_params(TINY)
    assert float(rows["grow"]["params_end"]) == count_params(DEEP)
    assert float(rows["grow"]["params_non_embedding_end"]) == count_params(DEEP, embeddings=False)
    assert float(rows["grow"]["train_flops_per_token"]) == pytest.approx(flops_per_token(TINY))
    assert float(rows["grow"]["train_flops_per_token_end"]) == pytest.approx(flops_per_token(DEEP))
    assert float(rows["baseline"]["rst_per_step_mean"]) == pytest.approx(0.5)
    assert float(rows["grow"]["rst_per_step_mean"]) == pytest.approx(0.8)
    with open(paths["cells_csv"]) as f:
        cells = {row["cell"]: row for row in csv.DictReader(f)}
    assert cells["grow/20s-rst/seed1"]["shape_end"].startswith("gpt L8 d128")


def test_arms_of_one_shape_get_no_model_column_but_the_csv_has_the_numbers(tmp_path):
    out = tmp_path / "grid"
    plan = {"baseline": PLAN["baseline"], "wide": (TINY, TINY, 20.0, 20)}
    shape_grid(out, plan)
    report = build_report(out)
    assert not report.shape_study
    assert summary_header(report) == SUMMARY_HEADER
    paths = write_report(report)
    assert SHAPE_HEADER not in paths["markdown"].read_text()
    assert "Shape study" not in paths["html"].read_text()
    rows = csv_rows(paths["summary_csv"])
    assert float(rows["wide"]["params_non_embedding"]) == count_params(TINY, embeddings=False)
    assert float(rows["wide"]["rst_per_step_mean"]) == pytest.approx(1.0)


def test_runs_without_a_shape_record_show_dashes(tmp_path):
    """Cells run before shape.json existed: no shape study is detected from them, and a
    study with a record missing on one arm shows a dash there."""
    out = tmp_path / "grid"
    exp = shape_grid(out)
    for seed in (1, 2):
        (out / "cells" / Cell("wide", "20s-rst", seed).id / "shape.json").unlink()
    report = build_report(out)
    assert report.shape_study  # the growing arm still shows it
    row = report.arm_result("20s-rst", "wide")
    assert row.shape_values("start", "params") == []
    paths = write_report(report)
    assert csv_rows(paths["summary_csv"])["wide"]["params"] == ""
    assert exp.arm("wide")


@pytest.mark.parametrize(
    ("start", "end", "shown"),
    [
        ([1.05e6, 1.05e6], [1.05e6, 1.05e6], "1.05M"),
        ([1.05e6, 1.05e6], [2.1e6, 2.1e6], "1.05M → 2.1M"),
        ([1.05e6, 1.05e6], [1.05e6, 2.1e6], "1.05M → 1.05M–2.1M"),
        ([], [], "–"),
        ([2.1e5], [], "210k"),
    ],
)
def test_start_end_formatting(start, end, shown):
    assert spaced(fmt_start_end(start, end)) == shown
