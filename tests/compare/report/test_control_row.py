"""The downstream table's random-init control row, from planted results."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from budgetlm.compare.report.build import build_report
from budgetlm.compare.report.tables import CONTROL_ARM, CONTROL_HEADER
from budgetlm.compare.report.write import write_report
from budgetlm.compare.run.cell import ERROR_FILE
from budgetlm.compare.run.control import control_dir, prepare_control
from budgetlm.compare.run.experiment_file import experiment_from_dict
from budgetlm.finetune.store import write_results

from ..browser import WINDOW, need_browser, render
from ..html_check import check_html
from ..planted import planted_grid
from .test_layout import TASKS, wide_grid

FINETUNE = {"suite": "offline", "tasks": ["rotten_tomatoes"], "seeds": [1, 2]}
PROTOCOL = {"lr": 4e-5, "epochs": 5, "select": "final", "max_length": 128, "batch_size": 16}


def scores(tasks: dict[str, list[float]]) -> dict:
    """Results as `budgetlm finetune` stores them: each task's score per fine-tuning seed."""
    out = {
        task: {
            "main_metric": "accuracy",
            "mean": sum(values) / len(values),
            "reported": [{"accuracy": v} for v in values],
        }
        for task, values in tasks.items()
    }
    average = sum(t["mean"] for t in out.values()) / len(out)
    return {"average": average, "protocol": PROTOCOL, "tasks": out}


def with_finetune(out: Path) -> None:
    """Give a planted grid a `finetune:` section, as a grid that fine-tunes would have."""
    import json

    record = json.loads((out / "experiment.json").read_text())
    record["finetune"] = FINETUNE
    (out / "experiment.json").write_text(json.dumps(record))


def plant_control(out: Path, tasks: dict[str, list[float]], suite: str = "offline") -> Path:
    import json

    record = json.loads((out / "experiment.json").read_text())
    raw = {k: v for k, v in record.items() if k not in ("source", "command", "updated")}
    exp = experiment_from_dict(raw, out)
    assert prepare_control(exp, out) == "todo"  # control.yaml and control.json, as the grid
    folder = control_dir(out)
    write_results(folder, suite, {"init": "random", **scores(tasks)})
    return folder


@pytest.fixture
def grid(tmp_path):
    """Four arms; baseline (0.601-0.604) and good (0.701-0.704) were fine-tuned."""
    out = tmp_path / "grid"
    planted_grid(out)
    with_finetune(out)
    for seed in range(1, 5):
        for arm, average in (("baseline", 0.60 + seed / 1000), ("good", 0.70 + seed / 1000)):
            run_dir = out / "cells" / arm / "20steps" / f"seed{seed}"
            write_results(run_dir, "offline", scores({"rotten_tomatoes": [average, average]}))
    return out


def _downstream_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {r["arm"]: r for r in csv.DictReader(f)}


def test_the_control_row_shows_that_pretraining_helped(grid):
    plant_control(grid, {"rotten_tomatoes": [0.49, 0.50, 0.51]})
    report = build_report(grid)
    (d,) = report.downstream["20steps"]
    c = d.control
    assert c is not None and c.n == 3 and c.mean == pytest.approx(0.50)
    assert c.diffs["baseline"] == pytest.approx(0.1025) and c.diffs["good"] == pytest.approx(0.2025)
    assert "same" not in c.diffs and c.helped and c.test is not None and c.test.ci_low > 0
    assert "good" not in c.other_model and not c.other_model  # one architecture
    assert set(d.comparisons) == {"good"}  # the control is not tested against the baseline
    paths = write_report(report)
    md = paths["markdown"].read_text()
    assert f"| {CONTROL_ARM} | 3 | 0.5000 ± 0.0100 | – | control | – | 0.5000 |" in md
    assert CONTROL_HEADER in md and "| baseline | 4 |" in md and "+0.1025" in md
    assert "Pre-training helped: the baseline beats random initialisation by +0.1025" in md
    assert "did not beat random initialisation" not in md
    page = paths["html"].read_text()
    assert check_html(page)["errors"] == []
    assert "Pre-training helped" in page and '<p class="warning">Pre-training' not in page
    rows = _downstream_rows(paths["downstream_csv"])
    assert float(rows[CONTROL_ARM]["average_mean"]) == pytest.approx(0.50)
    assert float(rows["baseline"]["diff_vs_random_init"]) == pytest.approx(0.1025)
    # Deterministic: the same folder gives the same files.
    again = write_report(build_report(grid))
    assert again["markdown"].read_text() == md and again["html"].read_text() == page


def test_a_control_that_beats_the_baseline_warns(grid):
    plant_control(grid, {"rotten_tomatoes": [0.65, 0.67]})
    paths = write_report(build_report(grid))
    md = paths["markdown"].read_text()
    warning = (
        "> **Warning:** Pre-training did not beat random initialisation on this suite "
        "(baseline − random init: -0.0575"
    )
    assert warning in md
    assert "downstream differences between methods say little" in md
    assert "Pre-training helped" not in md
    assert '<p class="warning">Pre-training did not beat random initialisation' in (
        paths["html"].read_text()
    )


def test_a_control_within_the_noise_warns_too(grid):
    plant_control(grid, {"rotten_tomatoes": [0.50, 0.70]})  # mean 0.60, wide
    md = write_report(build_report(grid))["markdown"].read_text()
    assert "did not beat random initialisation on this suite beyond the noise" in md


def test_no_control_no_row_and_a_failed_control_is_said(grid):
    md = write_report(build_report(grid))["markdown"].read_text()
    assert CONTROL_ARM not in md and CONTROL_HEADER not in md
    folder = plant_control(grid, {"rotten_tomatoes": [0.5, 0.5]})
    (folder / "finetune" / "offline.json").unlink()
    report = build_report(grid)
    assert any("random-init control" in m for m in report.missing)
    (folder / ERROR_FILE).write_text('{"type": "TaskError", "message": "no such task"}')
    md = write_report(build_report(grid))["markdown"].read_text()
    assert "The random-init control failed (TaskError: no such task)" in md
    assert CONTROL_ARM not in md


def test_a_report_with_a_control_imports_no_torch(grid):
    plant_control(grid, {"rotten_tomatoes": [0.49, 0.51]})
    code = (
        "import sys\n"
        "from budgetlm.cli import main\n"
        "assert main(['report', sys.argv[1]]) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(grid)], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert CONTROL_ARM in (grid / "report.md").read_text()


def test_the_widest_downstream_table_with_its_control_fits_1280px(tmp_path):
    need_browser()
    out = wide_grid(tmp_path / "grid")
    with_finetune(out)
    plant_control(out, {t: [0.5, 0.52] for t in TASKS}, suite="glue")
    page = write_report(build_report(out))["html"]
    assert CONTROL_ARM in page.read_text()
    info = render(page, screenshot=tmp_path / "report.png")
    downstream = [t for t in info["tables"] if CONTROL_HEADER in t["header"]]
    assert len(downstream) == 1
    for t in info["tables"]:
        assert t["box_scroll_width"] <= t["box_client_width"], t
        assert t["right"] <= WINDOW[0], t
    scroll_width, client_width = info["document_width"]
    assert scroll_width <= client_width, "the page scrolls sideways"
