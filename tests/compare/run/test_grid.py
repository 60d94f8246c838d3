"""Real grids: every cell a real tiny training run in its own process."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from budgetlm.cli import main
from budgetlm.compare.analysis.results import judged_cells, tuning
from budgetlm.compare.run.experiment_file import load_experiment
from budgetlm.train.checkpoint import complete_checkpoints

from ..html_check import check_html
from .tiny_grid import small_gpt, summary_table

ROOT = Path(__file__).resolve().parents[3]
PAUSE_HOOK = Path(__file__).resolve().with_name("pause_hook")
SMALL_GPT = small_gpt(eval_every=0.25, checkpoint_every=0.1)


FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "finetune" / "fixtures"
# Every finished cell is fine-tuned on one small GLUE task (the committed fixture files).
FINETUNE = {
    "suite": "glue",
    "data_dir": str(FIXTURES / "glue"),
    "tasks": ["rte"],
    "epochs": 1,
    "batch_size": 4,
    "max_length": 32,
    "lr": 1e-3,
}


def experiment(tmp_path: Path, arms: list, name: str = "grid", **extra) -> Path:
    raw = {
        **extra,
        "name": name,
        "config": SMALL_GPT,
        "budgets": ["100steps"],
        "seeds": [1, 2],
        "arms": arms,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


TWO_ARMS = [
    {"name": "baseline"},
    {"name": "lion", "optim": "lion", "set": {"optim.lr": 3e-4}, "tune": False},
]
# The protocol at its cheapest: the baseline's LR is searched on 2 LRs around 3e-3 on seed 1002
# (never judged), on the tune split. With 2 LRs the best is always at an edge, so the search
# always adds the 1 extension it may: 3 tuning cells, then 2 judged seeds per arm (7 cells).
TUNING = {"trials": 2, "max_extensions": 1}


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("grid")
    out = tmp / "out"
    code = main(
        [
            "compare",
            str(experiment(tmp, TWO_ARMS, finetune=FINETUNE, tuning=TUNING)),
            "--out",
            str(out),
            "--jobs",
            "2",
            "--threads",
            "1",
            "--quiet",
        ]
    )
    assert code == 0
    return out


def judged(out: Path) -> dict[str, list[Path]]:
    """Each arm's judged run directories (at 100steps), by the grid's own results."""
    exp = load_experiment(out.parent / "grid.yaml")
    cells = judged_cells(exp, out)
    return {
        arm: [out / "cells" / c.id for c in cells[arm, "100steps"]] for arm in ("baseline", "lion")
    }


@pytest.mark.slow
def test_the_protocol_tuned_the_baseline_apart_from_its_judged_seeds(finished_grid):
    exp = load_experiment(finished_grid.parent / "grid.yaml")
    t = tuning(exp, exp.arm("baseline"), "100steps", finished_grid)
    assert len(t.grid) == 2 and len(t.extensions) == 1 and t.chosen in t.scores
    assert all(score is not None and math.isfinite(score) for score in t.scores.values())
    runs = judged(finished_grid)
    assert [p.parent.name for p in runs["baseline"]] == [f"lr{t.chosen:g}"] * 2
    assert [p.name for p in runs["baseline"]] == ["seed1", "seed2"]
    assert [p.relative_to(finished_grid / "cells").as_posix() for p in runs["lion"]] == [
        "lion/100steps/seed1",
        "lion/100steps/seed2",
    ]
    for cell in t.cells(exp):  # tuning cells: tune split, a seed no arm is judged on
        config = yaml.safe_load((finished_grid / "cells" / cell.id / "config.yaml").read_text())
        assert cell.seed == 1002 and config["train"]["eval_split"] == "tune"
    for run in runs["baseline"] + runs["lion"]:
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["train"]["eval_split"] == "test"
        splits = json.loads((run / "meta.json").read_text())["dataset"]["splits"]
        assert splits["tune"]["n_documents"] >= 4 and splits["test"]["n_documents"] >= 4


@pytest.mark.slow
def test_report_lists_both_arms_from_the_runs_own_summaries(finished_grid):
    finals = {
        arm: [json.loads((run / "summary.json").read_text())["final_val_loss"] for run in runs]
        for arm, runs in judged(finished_grid).items()
    }
    with open(finished_grid / "summary.csv") as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"baseline", "lion"}
    for arm, losses in finals.items():
        assert float(rows[arm]["loss_mean"]) == pytest.approx(statistics.mean(losses), rel=1e-5)
        assert float(rows[arm]["loss_std"]) == pytest.approx(statistics.stdev(losses), rel=1e-4)
        assert rows[arm]["n"] == "2"
    # Each run recorded its shape (shape.json): one shape for both arms, no model column.
    for runs in judged(finished_grid).values():
        for run in runs:
            shapes = json.loads((run / "shape.json").read_text())
            meta = json.loads((run / "meta.json").read_text())
            assert shapes["start"] == shapes["end"]
            assert shapes["end"]["params"] == meta["params"]
            assert shapes["end"]["shape"] == meta["shape"]
    assert float(rows["lion"]["params"]) == meta["params"]
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    per_step = [s["spent"]["rst"] / s["steps"] for s in summaries if s["spent"].get("rst")]
    if per_step:  # RST is logged where the table covers the shape
        assert float(rows["lion"]["rst_per_step_mean"]) == pytest.approx(statistics.mean(per_step))
    else:
        assert rows["lion"]["rst_per_step_mean"] == ""
    md = (finished_grid / "report.md").read_text()
    assert "Shape study" not in md
    assert "| baseline |" in md and "| lion |" in md
    check = check_html((finished_grid / "report.html").read_text())
    assert check["errors"] == [] and check["external"] == []
    # Each cell was fine-tuned after training: scores in the cell, downstream rows in the report.
    for runs in judged(finished_grid).values():
        stored = json.loads((runs[0] / "finetune/glue.json").read_text())
        assert set(stored["tasks"]) == {"rte"}
    with open(finished_grid / "downstream.csv") as f:
        # ... and the baseline's architecture fine-tuned from random weights, the control.
        assert {r["arm"] for r in csv.DictReader(f)} == {
            "baseline",
            "lion",
            "random init (control)",
        }


@pytest.mark.slow
def test_rerun_of_a_finished_grid_runs_nothing(finished_grid, capsys):
    exp = finished_grid.parent / "grid.yaml"
    assert main(["compare", str(exp), "--out", str(finished_grid), "--quiet"]) == 0
    assert "0 run now, 7 already finished" in capsys.readouterr().out


@pytest.mark.slow
def test_report_renders_in_headless_chromium(finished_grid, tmp_path):
    from ..browser import need_browser, png_pixels, render

    need_browser()
    shot = tmp_path / "report.png"
    page = render(finished_grid / "report.html", screenshot=shot)
    assert page["svg_count"] >= 3
    assert len(page["series_boxes"]) >= 2 and all(w > 0 and h > 0 for w, h in page["series_boxes"])
    assert not page["errors"]
    pixels = png_pixels(shot.read_bytes())
    assert len({tuple(p) for p in pixels.reshape(-1, pixels.shape[-1])[::97]}) > 5


@pytest.mark.slow
def test_a_failing_cell_is_reported_and_the_others_complete(tmp_path):
    arms = [
        {"name": "baseline"},
        {"name": "broken", "set": {"data.corpus": str(tmp_path / "missing.txt")}},
    ]
    out = tmp_path / "out"
    code = main(
        [
            "compare",
            str(experiment(tmp_path, arms, "fails")),
            "--out",
            str(out),
            "--jobs",
            "2",
            "--threads",
            "1",
            "--quiet",
        ]
    )
    assert code == 1  # some cells failed
    for seed in (1, 2):
        assert (out / f"cells/baseline/100steps/seed{seed}/summary.json").is_file()
        error = json.loads((out / f"cells/broken/100steps/seed{seed}/error.json").read_text())
        assert "missing.txt" in error["message"]
    with open(out / "cells.csv") as f:
        status = {r["cell"]: r["status"] for r in csv.DictReader(f)}
    assert (
        status["broken/100steps/seed1"] == "failed"
        and status["baseline/100steps/seed2"] == "finished"
    )
    assert "Failed cells" in (out / "report.html").read_text()


def _unlocked(path: Path) -> bool:
    return not path.exists()  # the shared lock's file exists exactly while it is held


@pytest.mark.slow
def test_killed_grid_finishes_only_missing_cells_with_the_same_report(tmp_path, finished_grid):
    exp = experiment(tmp_path, TWO_ARMS, finetune=FINETUNE, tuning=TUNING)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "budgetlm",
        "compare",
        str(exp),
        "--out",
        str(out),
        "--jobs",
        "1",
        "--threads",
        "1",
        "--quiet",
    ]
    # The first two cells to run: the baseline's first grid, on its tuning seed.
    first, second = (out / "cells" / c.id for c in load_experiment(exp).tuning_cells()[:2])
    # The second cell pauses after its first checkpoint until the grid is gone (pause_hook/):
    # killing the grid is then no race with the cell finishing, however busy the machine.
    paused = tmp_path / "paused"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(PAUSE_HOOK), os.environ.get("PYTHONPATH")])
        ),
        "BUDGETLM_TEST_PAUSE_AT": str(second / "checkpoints"),
        "BUDGETLM_TEST_PAUSE_MARKER": str(paused),
    }
    grid = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900  # a hang guard, not a speed test
    while not paused.exists():
        assert time.monotonic() < deadline and grid.poll() is None, "grid ended before the kill"
        time.sleep(0.05)
    assert complete_checkpoints(second / "checkpoints")
    grid.send_signal(signal.SIGKILL)  # no clean-up: the cell notices its parent is gone
    grid.wait()
    while not _unlocked(second / ".lock"):
        time.sleep(0.05)
    assert (first / "summary.json").is_file()
    assert not (second / "summary.json").is_file(), "the second cell finished before the kill"
    first_done = (first / "summary.json").stat().st_mtime_ns

    assert (
        main(["compare", str(exp), "--out", str(out), "--jobs", "1", "--threads", "1", "--quiet"])
        == 0
    )
    assert (first / "summary.json").stat().st_mtime_ns == first_done  # not run again
    attempts = json.loads((second / "meta.json").read_text())["attempts"]
    assert len(attempts) == 2 and attempts[1]["resumed_from"]  # resumed from its checkpoint
    assert summary_table(out) == summary_table(finished_grid)


def test_a_cell_killed_before_its_first_checkpoint_starts_over_with_its_files_kept(tmp_path):
    # A cell's process killed outright (out of memory) after its step-0 evaluation but before
    # a checkpoint: nothing to resume. A run by hand would be refused (--restart); the grid
    # owns the folder, so the cell starts over and the old files move to previous/.
    from budgetlm.compare.run import cell
    from budgetlm.config import dump_yaml

    from ...train.helpers import tiny_config

    cell_dir = tmp_path / "cells" / "a"
    cell_dir.mkdir(parents=True)
    cfg = tiny_config("gpt", cell_dir, "budget=2steps")
    (cell_dir / cell.CELL_CONFIG).write_text(dump_yaml(cfg))
    killed = '{"event": "eval", "step": 0, "p": 0.0, "val_loss": 7.6}\n'
    (cell_dir / "metrics.jsonl").write_text(killed)
    (cell_dir / "checkpoints" / "step_000001").mkdir(parents=True)  # no manifest: incomplete
    assert cell.run_cell(cell_dir) == 0
    assert json.loads((cell_dir / "summary.json").read_text())["status"] == "finished"
    (moved,) = (cell_dir / "previous").iterdir()
    assert (moved / "metrics.jsonl").read_text() == killed
