"""`budgetlm report DIR1 DIR2 --out OUT`: output folders of one experiment, each holding part of
a grid, merge into the report one folder holding every cell gives; other experiments and two
different finished runs of one cell are refused; the folders merged are only read."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from budgetlm.cli import main
from budgetlm.compare.report.build import build_report
from budgetlm.compare.report.merge import MERGE_FILE
from budgetlm.compare.report.write import write_report
from budgetlm.compare.run.experiment import Cell

from ..planted import plant_cell, planted_experiment, planted_grid
from .test_control_row import plant_control, with_finetune

REPORT_FILES = ("report.html", "report.md", "summary.csv", "cells.csv")


def _part(full: Path, dest: Path, keep) -> Path:
    """A folder holding the cells of `full` whose id `keep` accepts (and its experiment.json)."""
    dest.mkdir(parents=True)
    shutil.copy(full / "experiment.json", dest / "experiment.json")
    for cell in sorted((full / "cells").glob("*/*/**/seed*")):
        cid = cell.relative_to(full / "cells").as_posix()
        if keep(cid):
            shutil.copytree(cell, dest / "cells" / cid)
    return dest


def _cells(folder: Path) -> dict[str, tuple[str, str]]:
    """cells.csv: cell id -> (status, final held-out loss)."""
    with open(folder / "cells.csv", newline="") as f:
        return {r["cell"]: (r["status"], r["final_val_loss"]) for r in csv.DictReader(f)}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _assert_same_report(full: Path, merged: Path) -> None:
    """The merged folder's report is byte for byte the full folder's (its path aside)."""
    write_report(build_report(full))
    for name in REPORT_FILES:
        expected = (full / name).read_bytes().replace(str(full).encode(), str(merged).encode())
        assert (merged / name).read_bytes() == expected, name


def test_two_folders_each_holding_some_arms_merge_into_the_report_of_all(tmp_path, capsys):
    full = tmp_path / "full"
    planted_grid(full)  # baseline, good, same, sb (one failed cell) x 4 seeds
    a = _part(full, tmp_path / "a", lambda cid: cid.split("/")[0] in ("baseline", "good"))
    b = _part(full, tmp_path / "b", lambda cid: cid.split("/")[0] in ("same", "sb"))
    before = _snapshot(a), _snapshot(b)
    merged = tmp_path / "merged"
    assert main(["report", str(a), str(b), "--out", str(merged)]) == 0
    out = capsys.readouterr().out
    assert f"cells 8 from {a}, 8 from {b}" in out
    _assert_same_report(full, merged)
    assert (_snapshot(a), _snapshot(b)) == before  # the folders merged are only read
    record = json.loads((merged / MERGE_FILE).read_text())
    assert record["cells"]["good/20steps/seed1"] == str(a.resolve())
    assert record["cells"]["sb/20steps/seed4"] == str(b.resolve())
    # Merging again replaces the earlier merge; a report of the merged folder alone is the same.
    assert main(["report", str(b), str(a), "--out", str(merged)]) == 0
    assert main(["report", str(merged)]) == 0
    _assert_same_report(full, merged)
    assert not list(tmp_path.glob(".merged*"))  # nothing left beside it


def test_lr_tuning_in_one_folder_and_judged_cells_in_another(tmp_path):
    # Neither folder alone knows the judged cells: the LR search's cells are in one, the runs
    # at the LR it chose in the other.
    full = tmp_path / "full"
    exp = planted_experiment(
        full,
        {
            "seeds": [1, 2],
            "arms": [
                {"name": "baseline"},
                {"name": "lion", "optim": "lion", "lr_grid": [1e-4, 3e-4, 1e-3]},
            ],
        },
    )
    (ts,) = exp.tuning_seeds
    for lr, loss in ((1e-4, 3.3), (3e-4, 3.1), (1e-3, 3.2)):
        plant_cell(exp, full, Cell("lion", "20steps", ts, lr), loss)
    for seed, loss in ((1, 3.0), (2, 3.05)):
        plant_cell(exp, full, Cell("baseline", "20steps", seed), loss)
        plant_cell(exp, full, Cell("lion", "20steps", seed, 3e-4), loss - 0.1)
    tuning = lambda cid: cid.endswith(f"seed{ts}")  # noqa: E731
    a = _part(full, tmp_path / "a", tuning)
    b = _part(full, tmp_path / "b", lambda cid: not tuning(cid))
    merged = tmp_path / "merged"
    assert main(["report", str(b), str(a), "--out", str(merged)]) == 0
    _assert_same_report(full, merged)
    report = build_report(merged)
    assert report.missing == [] and report.arm_result("20steps", "lion").lr == 3e-4


def test_of_several_copies_of_a_cell_the_finished_one_is_taken(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    exp = planted_experiment(a, {"seeds": [1, 2, 3], "arms": [{"name": "baseline"}]})
    planted_experiment(b, {"seeds": [1, 2, 3], "arms": [{"name": "baseline"}]})
    seed = lambda k: Cell("baseline", "20steps", k)  # noqa: E731
    plant_cell(exp, a, seed(1), None, error="out of memory")  # failed in a, finished in b
    plant_cell(exp, b, seed(1), 3.0)
    # Interrupted in a (checkpoints, not copied), failed in b: the failure is the news.
    plant_cell(exp, b, seed(2), None, error="loss is nan at step 3")
    (a / "cells" / seed(2).id / "checkpoints" / "step_000010").mkdir(parents=True)
    (a / "cells" / seed(2).id / "checkpoints" / "step_000010" / "model.bin").write_bytes(b"x")
    # Finished in both, the same run (copied): no conflict.
    shutil.copytree(plant_cell(exp, a, seed(3), 3.2), b / "cells" / seed(3).id)
    merged = tmp_path / "merged"
    assert main(["report", str(a), str(b), "--out", str(merged)]) == 0
    assert _cells(merged) == {
        seed(1).id: ("finished", "3"),
        seed(2).id: ("failed", ""),
        seed(3).id: ("finished", "3.2"),
    }
    sources = json.loads((merged / MERGE_FILE).read_text())["cells"]
    assert sources == {
        seed(1).id: str(b.resolve()),
        seed(2).id: str(b.resolve()),
        seed(3).id: str(a.resolve()),
    }
    # An interrupted copy keeps its status without its checkpoints.
    shutil.rmtree(b / "cells" / seed(2).id)
    assert main(["report", str(a), str(b), "--out", str(merged)]) == 0
    assert _cells(merged)[seed(2).id] == ("interrupted", "")
    assert list((merged / "cells" / seed(2).id / "checkpoints").iterdir()) == []


def test_two_different_finished_runs_of_a_cell_are_refused_unless_the_first_is_preferred(
    tmp_path, capsys
):
    a, b = tmp_path / "a", tmp_path / "b"
    exp = planted_experiment(a, {"seeds": [1, 2], "arms": [{"name": "baseline"}]})
    planted_experiment(b, {"seeds": [1, 2], "arms": [{"name": "baseline"}]})
    plant_cell(exp, a, Cell("baseline", "20steps", 1), 3.0)
    plant_cell(exp, b, Cell("baseline", "20steps", 1), 3.5)
    merged = tmp_path / "merged"
    capsys.readouterr()
    assert main(["report", str(a), str(b), "--out", str(merged)]) == 2
    err = capsys.readouterr().err
    assert "cell baseline/20steps/seed1 (final held-out loss 3.0 in " in err
    assert f"3.5 in {b}" in err and "--prefer-first" in err
    assert not merged.exists() and not list(tmp_path.glob(".merged*"))  # nothing written
    assert main(["report", str(a), str(b), "--out", str(merged), "--prefer-first"]) == 0
    assert "warning: cell baseline/20steps/seed1" in capsys.readouterr().err
    assert _cells(merged)["baseline/20steps/seed1"] == ("finished", "3")


def test_folders_of_different_experiments_are_refused(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    planted_grid(a)
    planted_grid(b)
    record = json.loads((b / "experiment.json").read_text())
    # Where and when each folder ran is not the experiment: these merge.
    record.update(command="budgetlm compare x.yaml --jobs 4", updated="2030-01-01 00:00:00")
    record["source"] = "/elsewhere/x.yaml"
    (b / "experiment.json").write_text(json.dumps(record))
    merged = tmp_path / "merged"
    assert main(["report", str(a), str(b), "--out", str(merged)]) == 0
    kept = json.loads((merged / "experiment.json").read_text())
    assert kept["command"] == "test; budgetlm compare x.yaml --jobs 4"
    assert kept["updated"] == "2030-01-01 00:00:00"
    for change, named in (
        ({"seeds": [1, 2, 3]}, "seeds ([1, 2, 3] vs [1, 2, 3, 4])"),
        ({"arms": record["arms"][:3]}, "arms (baseline, good, same vs baseline, good, same, sb)"),
        ({"set": {"train.batch_size": 4}}, "set ("),
    ):
        (b / "experiment.json").write_text(json.dumps({**record, **change}))
        capsys.readouterr()
        assert main(["report", str(a), str(b), "--out", str(tmp_path / "m2")]) == 2
        err = capsys.readouterr().err
        assert f"{b} and {a} hold different experiments" in err and named in err, err
        assert not (tmp_path / "m2").exists()


def test_the_random_init_control_and_the_references_come_from_the_folder_that_has_them(
    tmp_path,
):
    full = tmp_path / "full"
    planted_grid(full)
    with_finetune(full)
    plant_control(full, {"rotten_tomatoes": [0.5, 0.52]})
    references = {
        "20steps": {"unigram": 7.5, "bigram": 6.0, "tokens": 10000, "split": "test", "note": ""},
        "_inputs": {"20steps": {"tokens": 10000}},
    }
    (full / "references.json").write_text(json.dumps(references))
    a = _part(full, tmp_path / "a", lambda cid: cid.startswith("baseline"))
    b = _part(full, tmp_path / "b", lambda cid: not cid.startswith("baseline"))
    shutil.copytree(full / "controls", b / "controls")
    shutil.copy(full / "references.json", b / "references.json")
    merged = tmp_path / "merged"
    assert main(["report", str(a), str(b), "--out", str(merged)]) == 0
    _assert_same_report(full, merged)
    assert json.loads((merged / "references.json").read_text()) == references
    assert json.loads((merged / MERGE_FILE).read_text())["control"] == str(b.resolve())


def test_merging_needs_a_new_out_folder(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    planted_grid(a)
    planted_grid(b)
    capsys.readouterr()
    assert main(["report", str(a), str(b)]) == 2
    assert "2 folders: give --out DIR" in capsys.readouterr().err
    assert not (a / "report.html").exists()
    assert main(["report", str(a), str(b), "--out", str(a)]) == 2
    assert "is one of the folders to merge" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["report", str(a), str(b), "--out", str(other)]) == 2
    assert "exists and is not a merged folder" in capsys.readouterr().err
    assert main(["report", str(a), str(a), "--out", str(tmp_path / "m")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["report", str(a), str(tmp_path / "nothing"), "--out", str(tmp_path / "m")]) == 2
    assert "is not a compare folder" in capsys.readouterr().err


def test_one_folder_with_out_is_a_copy_with_the_same_report(tmp_path):
    full = tmp_path / "full"
    planted_grid(full)
    merged = tmp_path / "merged"
    assert main(["report", str(full), "--out", str(merged)]) == 0
    _assert_same_report(full, merged)


def test_merging_imports_no_torch(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    planted_grid(a)
    shutil.copytree(a, b)
    code = (
        "import sys\n"
        "from budgetlm.cli import main\n"
        "assert main(['report', sys.argv[1], sys.argv[2], '--out', sys.argv[3]]) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(a), str(b), str(tmp_path / "m")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
