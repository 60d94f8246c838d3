"""Reports from planted cells: statistics, tuning, failures, and the three renderings."""

from __future__ import annotations

import csv
import statistics

import pytest

from budgetlm.compare.analysis.results import tuning
from budgetlm.compare.report.build import build_report, write_report
from budgetlm.compare.run.experiment import Cell

from ..html_check import check_html
from ..planted import plant_cell, planted_experiment

BASE = [3.00, 3.02, 2.98, 3.01]
BETTER = [2.50, 2.52, 2.49, 2.51]
SAME = [3.01, 2.99, 3.02, 2.97]


def planted(tmp_path):
    out = tmp_path / "grid"
    exp = planted_experiment(
        out,
        {
            "seeds": [1, 2, 3, 4],
            "arms": [
                {"name": "baseline"},
                {"name": "good"},
                {"name": "same"},
                {"name": "sb", "method": "selective_backprop"},
            ],
        },
    )
    for seed, (b, g, s) in enumerate(zip(BASE, BETTER, SAME, strict=True), start=1):
        plant_cell(exp, out, Cell("baseline", "20steps", seed), b)
        plant_cell(exp, out, Cell("good", "20steps", seed), g)
        plant_cell(exp, out, Cell("same", "20steps", seed), s)
        by = {"training": 6.0, "selection": 3.0, "optimizer": 1.0}
        if seed == 4:
            plant_cell(exp, out, Cell("sb", "20steps", seed), None, error="loss is nan at step 3")
        else:
            plant_cell(exp, out, Cell("sb", "20steps", seed), 3.5 + seed / 100, by_purpose=by)
    return exp, out


def test_statistics_and_verdicts_from_planted_cells(tmp_path):
    _, out = planted(tmp_path)
    report = build_report(out)
    rows = {r.arm: r for r in report.results["20steps"]}
    assert rows["baseline"].mean_std == pytest.approx(
        (statistics.mean(BASE), statistics.stdev(BASE))
    )
    assert rows["good"].comparison.verdict == "better"
    assert rows["good"].comparison.diff == pytest.approx(
        statistics.mean(BETTER) - statistics.mean(BASE)
    )
    assert (
        rows["good"].comparison.ci_low
        < rows["good"].comparison.diff
        < rows["good"].comparison.ci_high
        < 0
    )
    assert rows["same"].comparison.verdict == "no significant difference"
    assert rows["sb"].comparison.verdict == "worse"
    # The failed seed is reported and left out of the statistics.
    assert len(rows["sb"].losses) == 3
    assert [c.cell.id for c in report.failed] == ["sb/20steps/seed4"]
    assert rows["sb"].overhead_share == pytest.approx(3.0 / 10.0)
    assert not report.missing


def test_written_report_files(tmp_path):
    _, out = planted(tmp_path)
    paths = write_report(build_report(out))
    with open(paths["summary_csv"]) as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    assert float(rows["good"]["loss_mean"]) == pytest.approx(statistics.mean(BETTER), abs=1e-5)
    assert rows["good"]["verdict"] == "better" and rows["baseline"]["verdict"] == "baseline"
    assert rows["sb"]["n"] == "3"
    with open(paths["cells_csv"]) as f:
        cells = {r["cell"]: r for r in csv.DictReader(f)}
    assert cells["sb/20steps/seed4"]["status"] == "failed"
    assert "nan" in cells["sb/20steps/seed4"]["error"]
    md = paths["markdown"].read_text()
    assert "| good |" in md and "better" in md and "sb/20steps/seed4" in md
    page = paths["html"].read_text()
    check = check_html(page)
    assert check["errors"] == [] and check["external"] == []
    assert check["counts"]["svg"] >= 3  # loss curves, budget spending, wall time
    assert "loss is nan at step 3" in page


def test_lr_tuning_chooses_the_best_finished_lr(tmp_path):
    out = tmp_path / "grid"
    exp = planted_experiment(
        out,
        {
            "seeds": [1, 2],
            "arms": [
                {"name": "baseline"},
                {"name": "lion", "optim": "lion", "lr_grid": [1e-4, 3e-4, 1e-3]},
            ],
        },
    )
    arm = exp.arm("lion")
    plant_cell(exp, out, Cell("lion", "20steps", 1, 1e-4), 3.3)
    plant_cell(exp, out, Cell("lion", "20steps", 1, 3e-4), 3.1)
    assert tuning(exp, arm, "20steps", out).chosen is None  # 1e-3 has not run yet
    plant_cell(exp, out, Cell("lion", "20steps", 1, 1e-3), None, error="diverged")
    t = tuning(exp, arm, "20steps", out)
    assert t.chosen == 3e-4 and t.scores[1e-3] == float("inf") and not t.at_edge
    for seed, loss in ((1, 3.0), (2, 3.05)):
        plant_cell(exp, out, Cell("baseline", "20steps", seed), loss)
    report = build_report(out)
    lion = report.arm_result("20steps", "lion")
    assert lion.tuned and lion.lr == 3e-4
    assert [c.cell.id for c in lion.cells] == [
        "lion/20steps/lr0.0003/seed1",
        "lion/20steps/lr0.0003/seed2",
    ]
    assert "lion/20steps/lr0.0003/seed2" in report.missing  # not run yet: the grid is unfinished
    assert "lion/20steps/lr0.001/seed1" in [c.cell.id for c in report.failed]
    page = write_report(report)["html"].read_text()
    assert "Unfinished grid" in page and "Learning-rate tuning" in page


def test_report_of_a_non_compare_folder(tmp_path):
    from budgetlm.cli import main

    assert main(["report", str(tmp_path)]) == 2


def test_downstream_scores_of_the_cells_enter_the_report(tmp_path):
    from budgetlm.finetune.store import write_results

    exp, out = planted(tmp_path)
    # Fine-tuning scores as `budgetlm finetune` stores them, for baseline and good only.
    for seed in range(1, 5):
        for arm, average in (("baseline", 0.60 + seed / 1000), ("good", 0.70 + seed / 1000)):
            run_dir = out / "cells" / arm / "20steps" / f"seed{seed}"
            write_results(
                run_dir,
                "offline",
                {
                    "average": average,
                    "protocol": {"lr": 4e-5, "epochs": 5, "select": "final"},
                    "tasks": {"rotten_tomatoes": {"mean": average, "main_metric": "accuracy"}},
                },
            )
    report = build_report(out)
    (d,) = report.downstream["20steps"]
    assert d.suite == "offline" and d.tasks == ["rotten_tomatoes"]
    assert d.verdict("good") == "better"  # higher accuracy: better, even though loss is lower
    assert d.comparisons["good"].diff == pytest.approx(0.10)
    assert "same" not in d.comparisons  # no downstream scores: not compared
    paths = write_report(report)
    with open(paths["downstream_csv"]) as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    assert float(rows["good"]["average_mean"]) == pytest.approx(0.7025)
    assert rows["good"]["verdict"] == "better"
    assert "Downstream: offline" in paths["html"].read_text()
    assert "### Downstream: offline" in paths["markdown"].read_text()
