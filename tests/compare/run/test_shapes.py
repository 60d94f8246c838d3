"""Shape studies before they run: the RST table must price every shape an arm trains (growth
targets included), else `compare` (and `--dry-run`) refuses with the command that prices it."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest
import yaml

from budgetlm.budget.rst import rehash_table, shape_key
from budgetlm.cli import main
from budgetlm.compare.run.experiment_file import load_experiment
from budgetlm.compare.run.shapes import (
    SHAPE_FILE,
    check_rst_coverage,
    fitted_shape,
    rst_coverage,
    shape_label,
    write_shape_record,
)
from budgetlm.config import load_config
from budgetlm.methods.growth import StagedGrowth
from budgetlm.models import count_params, get_shape

ROOT = Path(__file__).resolve().parents[3]
# gpt-tiny on the fixture corpus with a 2048 vocabulary: the shipped cpu-reference table has it.
CONFIG = {
    "model": {"preset": "gpt-tiny"},
    "data": {"corpus": "fixture", "vocab_size": 2048},
    "optim": {"lr": 3e-3},
}
TINY = dataclasses.replace(get_shape("gpt-tiny"), vocab_size=2048)


def write(tmp_path: Path, arms: list, **raw) -> Path:
    raw = {"config": CONFIG, "budgets": ["20s-rst"], "seeds": [1], "arms": arms, **raw}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def dry_run(path: Path, out: Path) -> int:
    return main(["compare", str(path), "--dry-run", "--quiet", "--out", str(out)])


def test_a_covered_experiment_passes_the_dry_run(tmp_path, capsys):
    path = write(tmp_path, [{"name": "baseline"}, {"name": "lion", "optim": "lion"}])
    assert dry_run(path, tmp_path / "out") == 0
    assert "2 cells in all" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_an_uncovered_arm_shape_is_refused_with_its_calibrate_command(
    tmp_path, capsys, monkeypatch
):
    arms = [{"name": "baseline"}, {"name": "wide", "set": {"model.d_model": 256}}]
    path = write(tmp_path, arms, budgets=["20s-rst", "40s-rst", "100steps"])
    out = tmp_path / "out"
    assert dry_run(path, out) == 2
    assert not out.exists()  # refused before any cell folder
    err = capsys.readouterr().err
    wide = dataclasses.replace(TINY, d_model=256)
    # The arm, the RST budgets it would fail at (not the steps budget), the shape.
    assert "arm wide (budgets 20s-rst, 40s-rst), its configured shape" in err
    assert shape_label(wide) in err
    assert "arm baseline" not in err
    assert "shipped table cpu-reference covers: " in err
    assert "rst.fallback=flops" in err
    command = next(line.strip() for line in err.splitlines() if "budgetlm calibrate" in line)
    assert measured(command, monkeypatch) == (wide, ["adamw"])


def measured(command: str, monkeypatch) -> tuple[object, list[str]]:
    """Run a printed `budgetlm calibrate` command up to its measurement: the fitted shape of
    the config it would measure, and the optimizers it would time."""
    import budgetlm.train.calibrate as calibrate

    seen = {}

    def capture(cfg, **kwargs):
        seen["cfg"], seen["optimizers"] = cfg, kwargs["optimizers"]
        raise SystemExit(0)

    monkeypatch.setattr(calibrate, "calibrate_config", capture)
    argv = shlex.split(command)
    assert argv[:2] == ["budgetlm", "calibrate"]
    with pytest.raises(SystemExit):
        main(argv[1:])
    return fitted_shape(seen["cfg"]), seen["optimizers"]


def deepened(cls, options, shape):
    """What staged growth trains with methods.staged.grow: depth@0.5: the shape, then it
    twice as deep (planted until growth.py implements shapes_used)."""
    return [shape, dataclasses.replace(shape, n_layers=2 * shape.n_layers)]


def test_an_uncovered_growth_target_is_refused_though_the_start_shape_is_covered(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(StagedGrowth, "shapes_used", classmethod(deepened))
    arms = [{"name": "baseline"}, {"name": "grow", "method": "staged", "optim": "lion"}]
    path = write(tmp_path, arms)
    out = tmp_path / "out"
    assert dry_run(path, out) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    deep = dataclasses.replace(TINY, n_layers=8)
    assert "arm grow (budget 20s-rst), a shape method=staged grows it into" in err
    assert shape_label(deep) in err
    assert "its configured shape" not in err  # gpt-tiny is priced, with lion too
    command = next(line.strip() for line in err.splitlines() if "budgetlm calibrate" in line)
    assert "model.n_layers=8" in command
    assert measured(command, monkeypatch) == (deep, ["lion"])


def test_staged_growth_targets_are_checked_as_the_method_plans_them(tmp_path, capsys):
    """Not planted: staged growth's own shapes_used (depth growth doubles the layers)."""
    arms = [{"name": "grow", "method": "staged", "set": {"methods.staged.grow": "depth@0.5"}}]
    assert dry_run(write(tmp_path, arms), tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "arm grow (budget 20s-rst), a shape method=staged grows it into" in err
    assert shape_label(dataclasses.replace(TINY, n_layers=8)) in err


def test_a_real_run_is_refused_before_any_cell_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(StagedGrowth, "shapes_used", classmethod(deepened))
    path = write(tmp_path, [{"name": "baseline"}, {"name": "grow", "method": "staged"}])
    out = tmp_path / "out"
    assert main(["compare", str(path), "--quiet", "--out", str(out)]) == 2
    assert not out.exists()
    assert "a shape method=staged grows it into" in capsys.readouterr().err


def test_an_optimizer_the_table_lacks_is_refused_and_its_table_file_extended(tmp_path):
    """A table file (a committed table without muon) prices the shape but not the arm's
    optimizer: the command measures it into that file."""
    data = json.loads((ROOT / "budgetlm/budget/tables/cpu-reference.json").read_text())
    for entry in data["entries"]:
        entry["optimizer_seconds"].pop("muon")
        entry["optimizer_points"].pop("muon", None)
    table = tmp_path / "table.json"
    table.write_text(json.dumps(data))
    rehash_table(table)
    arms = [{"name": "baseline"}, {"name": "muon", "optim": "muon"}]
    exp = load_experiment(write(tmp_path, arms, set={"rst.table": str(table)}))
    problems, tables = rst_coverage(exp)
    assert [(p.arm, p.optimizer) for p in problems] == [("muon", "muon")]
    assert list(tables) == [str(table)]
    assert problems[0].shipped_cover == ["cpu-reference"]
    argv = shlex.split(problems[0].command)
    assert argv[argv.index("--out") + 1] == str(table)
    assert argv[argv.index("--optimizers") + 1] == "muon"


def test_only_rst_budgets_under_refuse_are_checked(tmp_path):
    """Steps budgets, and arms that estimate uncovered shapes from FLOPs, fit no data."""
    arms = [
        {"name": "baseline", "set": {"model.d_model": 256}},
        {"name": "flops", "set": {"model.d_model": 256, "rst.fallback": "flops"}},
    ]
    exp = load_experiment(write(tmp_path, arms, budgets=["100steps"]))

    def refuse(cfg):
        raise AssertionError("no shape needs fitting")

    check_rst_coverage(exp, fit=refuse)
    exp = load_experiment(write(tmp_path, arms[1:]))
    check_rst_coverage(exp, fit=refuse)


def test_a_broken_table_is_refused_by_the_check(tmp_path):
    table = tmp_path / "table.json"
    table.write_text("{}")
    exp = load_experiment(write(tmp_path, [{"name": "baseline"}], set={"rst.table": str(table)}))
    with pytest.raises(Exception, match="arm 'baseline': rst.table"):
        check_rst_coverage(exp, fit=lambda cfg: TINY)


def test_the_cell_records_the_shape_it_started_and_ended_with(tmp_path):
    cfg = load_config(settings={**{"model.preset": "gpt-tiny"}, "model.n_layers": 2})
    end = dataclasses.replace(get_shape("gpt-tiny"), n_layers=4, vocab_size=2048)
    write_shape_record(tmp_path, cfg, end)
    record = json.loads((tmp_path / SHAPE_FILE).read_text())
    start = dataclasses.replace(end, n_layers=2)  # the config's, fitted like the end
    assert shape_key(record["start"]["shape"]) == shape_key(start)
    assert record["start"]["params"] == count_params(start)
    assert record["end"]["params_non_embedding"] == count_params(end, embeddings=False)
    assert record["end"]["label"] == shape_label(end)
