"""Reports from planted cells: statistics, tuning, failures, the renderings and their columns."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from budgetlm.compare.analysis.results import tuning
from budgetlm.compare.report.build import build_report
from budgetlm.compare.report.write import write_report
from budgetlm.compare.run.experiment import Cell

from ..html_check import check_html, tables
from ..planted import (
    BASE,
    BETTER,
    EPOCHS,
    TRAIN,
    plant_cell,
    planted_experiment,
    planted_grid,
)


@pytest.fixture
def grid(tmp_path):
    out = tmp_path / "grid"
    planted_grid(out)
    return out


def test_statistics_and_verdicts_from_planted_cells(grid):
    report = build_report(grid)
    rows = {r.arm: r for r in report.results["20steps"]}
    assert rows["baseline"].mean_std == pytest.approx(
        (statistics.mean(BASE), statistics.stdev(BASE))
    )
    good = rows["good"].comparison
    assert good.verdict == "better"
    assert good.diff == pytest.approx(statistics.mean(BETTER) - statistics.mean(BASE))
    assert good.ci_low < good.diff < good.ci_high < 0
    assert rows["same"].comparison.verdict == "no significant difference"
    assert rows["sb"].comparison.verdict == "worse"
    # The failed seed is reported and left out of the statistics.
    assert len(rows["sb"].losses) == 3
    assert [c.cell.id for c in report.failed] == ["sb/20steps/seed4"]
    assert rows["sb"].overhead_share == pytest.approx(3.0 / 10.0)
    assert not report.missing


def planted_train(arm: str) -> tuple[float, float]:
    seeds = range(1, 4) if arm == "sb" else range(1, 5)
    values = [TRAIN[arm] + seed / 100 for seed in seeds]
    return statistics.mean(values), statistics.stdev(values)


def test_training_loss_and_epochs_columns_show_the_planted_values(grid):
    report = build_report(grid)
    paths = write_report(report)
    for r in report.results["20steps"]:
        assert r.train_loss == pytest.approx(planted_train(r.arm))
        assert r.epochs == pytest.approx(EPOCHS[r.arm])
    # The page: the first table is the budget's summary, one row per arm.
    header, *rows = tables(paths["html"].read_text())[0]
    loss_col = header.index("training loss (mean ± std)")
    epochs_col = header.index("epochs")
    shown = {row[0]: row for row in rows}
    for arm in TRAIN:
        mean, std = planted_train(arm)
        assert shown[arm][loss_col] == f"{mean:.4f} ± {std:.4f}"
        assert float(shown[arm][epochs_col]) == EPOCHS[arm]
    # Markdown has the same columns, CSV the numbers.
    md = paths["markdown"].read_text()
    assert "| training loss (mean ± std) | epochs |" in md
    mean, std = planted_train("good")
    assert f"| {mean:.4f} ± {std:.4f} | {EPOCHS['good']:g} |" in md
    with open(paths["summary_csv"]) as f:
        csv_rows = {r["arm"]: r for r in csv.DictReader(f)}
    assert float(csv_rows["same"]["train_loss_mean"]) == pytest.approx(planted_train("same")[0])
    assert float(csv_rows["sb"]["epochs_mean"]) == EPOCHS["sb"]
    with open(paths["cells_csv"]) as f:
        cells = {r["cell"]: r for r in csv.DictReader(f)}
    assert float(cells["good/20steps/seed2"]["final_train_loss"]) == pytest.approx(2.32)


def test_written_report_files(grid):
    paths = write_report(build_report(grid))
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
    # Final losses by arm, loss curves, budget spending, wall time.
    assert check["counts"]["svg"] == 4
    assert "loss is nan at step 3" in page


def test_two_renders_of_the_same_results_are_byte_identical(grid, tmp_path):
    import shutil
    import subprocess
    import sys

    first = {k: p.read_bytes() for k, p in write_report(build_report(grid)).items()}
    again = {k: p.read_bytes() for k, p in write_report(build_report(grid)).items()}
    assert first == again
    # A fresh process too: nothing may depend on a random salt, the clock or the import order.
    copy = tmp_path / "copy"
    shutil.copytree(grid, copy)
    code = (
        "import sys; from budgetlm.compare.report.build import build_report; "
        "from budgetlm.compare.report.write import write_report; "
        "write_report(build_report(sys.argv[1]))"
    )
    subprocess.run([sys.executable, "-c", code, str(copy)], check=True)
    for kind in ("html", "markdown"):
        name = {"html": "report.html", "markdown": "report.md"}[kind]
        # The cells' folder differs between the copies (failed cells show their log path).
        expected = first[kind].replace(str(grid).encode(), str(copy).encode())
        assert (copy / name).read_bytes() == expected, name


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
    (ts,) = exp.tuning_seeds  # tuning runs on its own seed, never a judged one
    plant_cell(exp, out, Cell("lion", "20steps", ts, 1e-4), 3.3)
    plant_cell(exp, out, Cell("lion", "20steps", ts, 3e-4), 3.1)
    assert tuning(exp, arm, "20steps", out).chosen is None  # 1e-3 has not run yet
    plant_cell(exp, out, Cell("lion", "20steps", ts, 1e-3), None, error="diverged")
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
    assert f"lion/20steps/lr0.001/seed{ts}" in [c.cell.id for c in report.failed]
    page = write_report(report)["html"].read_text()
    assert "Unfinished grid" in page and "Learning-rate tuning" in page
    assert check_html(page)["errors"] == []


def test_report_of_a_non_compare_folder(tmp_path):
    from budgetlm.cli import main

    assert main(["report", str(tmp_path)]) == 2


def test_downstream_scores_of_the_cells_enter_the_report(grid):
    from budgetlm.finetune.store import write_results

    # Fine-tuning scores as `budgetlm finetune` stores them, for baseline and good only.
    for seed in range(1, 5):
        for arm, average in (("baseline", 0.60 + seed / 1000), ("good", 0.70 + seed / 1000)):
            run_dir = grid / "cells" / arm / "20steps" / f"seed{seed}"
            write_results(
                run_dir,
                "offline",
                {
                    "average": average,
                    "protocol": {"lr": 4e-5, "epochs": 5, "select": "final"},
                    "tasks": {"rotten_tomatoes": {"mean": average, "main_metric": "accuracy"}},
                },
            )
    report = build_report(grid)
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


def test_wall_time_chart_names_the_machine_and_the_budget(tmp_path):
    out = tmp_path / "grid"
    exp = planted_experiment(out, {"seeds": [1, 2], "arms": [{"name": "baseline"}]})
    device = {"type": "cpu", "cpu": "Test Xeon 1234", "cpu_count": 16, "torch_threads": 4}
    for seed in (1, 2):
        plant_cell(exp, out, Cell("baseline", "20steps", seed), 3.0 + seed / 100, device=device)
    record = json.loads((out / "experiment.json").read_text())
    (out / "experiment.json").write_text(json.dumps({**record, "command": "compare x --jobs 3"}))
    page = write_report(build_report(out))["html"].read_text()
    caption = page.split("Wall time on ", 1)[1].split("</figcaption>", 1)[0]
    assert caption.startswith("Test Xeon 1234 (16 cores)")
    assert "3 run(s) at a time" in caption and "4 torch thread(s) per run" in caption
    assert "not wall time" in caption and "(20steps)" in caption
    # ...and the chart itself says so, for a reader who copies it out of the page.
    assert "wall seconds per run on Test Xeon 1234" in page
