"""Experiment files: strict parsing, cells, and the config each cell trains with."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from budgetlm.compare.run.experiment import Cell, ExperimentError
from budgetlm.compare.run.experiment_file import load_experiment

ROOT = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, raw: dict) -> Path:
    raw = {"base": str(ROOT / "configs" / "gpt-tiny.yaml"), "budgets": ["10steps"], **raw}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cells_and_configs(tmp_path):
    exp = load_experiment(
        write(
            tmp_path,
            {
                "set": {"train.batch_size": 4, "optim": {"weight_decay": 0.0}},
                "seeds": [1, 2],
                "arms": [
                    {"name": "baseline"},
                    {"name": "drop", "method": "layer_drop", "set": {"train.batch_size": 8}},
                    {"name": "lion", "optim": "lion", "lr_grid": [1e-4, 3e-4]},
                ],
            },
        )
    )
    # No tuning section: only the arm with an LR grid is tuned, on a seed that is not judged.
    assert exp.baseline == "baseline" and exp.tuning_seeds == (1002,)
    assert [a.name for a in exp.arms if a.tuned] == ["lion"]
    assert [c.id for c in exp.tuning_cells()] == [
        "lion/10steps/lr0.0001/seed1002",
        "lion/10steps/lr0.0003/seed1002",
    ]
    assert [c.id for c in exp.untuned_cells()] == [
        "baseline/10steps/seed1",
        "baseline/10steps/seed2",
        "drop/10steps/seed1",
        "drop/10steps/seed2",
    ]
    out = tmp_path / "out"
    cfg = exp.config_for(Cell("drop", "10steps", 2), out)
    assert cfg.method == "layer_drop" and cfg.run.seed == 2 and cfg.budget == "10steps"
    assert cfg.train.batch_size == 8  # the arm's setting beats the shared one
    assert cfg.optim.weight_decay == 0.0  # nested shared settings merge key by key
    assert cfg.optim.lr == 3e-3  # untouched keys come from the base config
    assert Path(cfg.run.dir) == out / "cells" / "drop" / "10steps" / "seed2"
    lion = exp.config_for(Cell("lion", "10steps", 1002, 3e-4), out)
    assert lion.optim.name == "lion" and lion.optim.lr == 3e-4


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"arms": [{"name": "a"}], "seeds": [1], "budget": ["1steps"]}, "did you mean 'budgets'"),
        ({"arms": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"arms": [{"name": "a"}], "baseline": "b"}, "no arm named 'b'"),
        ({"arms": [{"name": "a", "lr_grid": [1e-3], "set": {"optim.lr": 1}}]}, "either optim.lr"),
        ({"arms": [{"name": "a", "method": "layer_dorp"}]}, "did you mean 'layer_drop'"),
        ({"arms": [{"name": "a", "set": {"optim.lrr": 1}}]}, "did you mean 'optim.lr'"),
        ({"arms": [{"name": "a"}], "budgets": ["ten minutes"]}, "cannot read budget"),
        ({"arms": [{"name": "a"}], "seeds": [1, 1]}, "distinct"),
        ({"arms": [{"name": "a"}], "stats": {"test": "anova"}}, "welch or bootstrap"),
        ({"arms": [{"name": "a b"}]}, "use letters"),
        ({"arms": []}, "at least one arm"),
    ],
)
def test_bad_experiments_are_refused_with_a_reason(tmp_path, raw, message):
    with pytest.raises(ExperimentError, match=message):
        load_experiment(write(tmp_path, raw))


def test_missing_base_config(tmp_path):
    with pytest.raises(ExperimentError, match="base: config file not found"):
        load_experiment(write(tmp_path, {"base": "nope.yaml", "arms": ["baseline"]}))


def test_committed_experiments_load():
    """Every experiment shipped in experiments/ parses and builds all its cell configs."""
    paths = sorted((ROOT / "experiments").glob("*.yaml"))
    assert paths
    for path in paths:
        exp = load_experiment(path)
        assert len(exp.arms) >= 2 and exp.baseline in [a.name for a in exp.arms]


# -- the tuning protocol ------------------------------------------------------------------------

ARMS = [
    {"name": "baseline"},  # gpt-tiny.yaml's AdamW at 3e-3
    {"name": "lion", "optim": "lion", "set": {"optim.lr": 4e-4}},
    {"name": "fixed", "method": "layer_drop", "tune": False},
    {"name": "grid", "lr_grid": [1e-3, 2e-3]},
]


def tuned_experiment(tmp_path: Path, **tuning):
    raw = {"seeds": [1, 2, 3], "budgets": ["10steps", "20steps"], "arms": ARMS, "tuning": tuning}
    return load_experiment(write(tmp_path, raw))


def test_a_tuning_section_tunes_every_arm_around_its_own_lr(tmp_path):
    exp = tuned_experiment(tmp_path)
    assert {a.name: a.tuned for a in exp.arms} == {
        "baseline": True,
        "lion": True,
        "fixed": False,
        "grid": True,
    }
    # Three LRs a factor 2 apart around each arm's own configured LR; an lr_grid overrides it.
    assert exp.arm("baseline").lr_grid == (1.5e-3, 3e-3, 6e-3)
    assert exp.arm("lion").lr_grid == (2e-4, 4e-4, 8e-4)
    assert exp.arm("grid").lr_grid == (1e-3, 2e-3) and exp.arm("grid").grid_given
    by_arm: dict[str, set] = {}
    for cell in exp.tuning_cells():
        by_arm.setdefault(cell.arm, set()).add((cell.budget, cell.lr, cell.seed))
    assert set(by_arm) == {"baseline", "lion", "grid"}  # `tune: false` has no tuning cells
    assert by_arm["lion"] == {
        (b, lr, 1003) for b in ("10steps", "20steps") for lr in (2e-4, 4e-4, 8e-4)
    }
    assert [c.id for c in exp.untuned_cells()] == [
        f"fixed/{b}/seed{s}" for b in ("10steps", "20steps") for s in (1, 2, 3)
    ]


def test_trials_factor_and_budgets(tmp_path):
    exp = tuned_experiment(tmp_path, trials=4, factor=3, budgets="first", seeds=[7, 8])
    assert exp.arm("baseline").lr_grid == pytest.approx(
        [3e-3 * 3**k for k in (-1.5, -0.5, 0.5, 1.5)], rel=1e-5
    )
    assert {c.budget for c in exp.tuning_cells()} == {"10steps"}
    assert {c.seed for c in exp.tuning_cells()} == {7, 8}
    assert exp.tuned_at("20steps") == "10steps" and exp.tuned_at("10steps") == "10steps"
    exp = tuned_experiment(tmp_path, budgets=["20steps"])
    assert {c.budget for c in exp.tuning_cells()} == {"20steps"}
    assert exp.tuned_at("10steps") == "20steps"


def test_tuning_cells_evaluate_on_tune_and_judged_cells_on_test(tmp_path):
    exp = tuned_experiment(tmp_path)
    judged_seeds = set(exp.seeds)
    for cell in exp.tuning_cells():
        assert cell.seed not in judged_seeds
        assert exp.config_for(cell).train.eval_split == "tune"
    for arm in exp.arms:
        lr = arm.lr_grid[0] if arm.tuned else None
        for cell in exp.final_cells(arm, "10steps", lr):
            assert cell.seed in judged_seeds
            assert exp.config_for(cell).train.eval_split == "test"
    # The arm's own settings cannot move a cell off its split.
    raw = {"seeds": [1], "arms": [{"name": "a", "set": {"train.eval_split": "tune"}}], "tuning": {}}
    exp = load_experiment(write(tmp_path, raw))
    assert exp.config_for(Cell("a", "10steps", 1, 3e-3)).train.eval_split == "test"


def test_the_record_reads_back_without_building_a_config(tmp_path, monkeypatch):
    from budgetlm.compare.run import experiment as module
    from budgetlm.compare.run.experiment_file import experiment_from_dict

    exp = tuned_experiment(tmp_path, budgets="first")

    def no_config(*args, **kwargs):
        raise AssertionError("the report must not need a config (it would import torch)")

    monkeypatch.setattr(module, "load_config", no_config)
    record = {k: v for k, v in exp.to_dict().items() if k != "source"}  # as `report` reads it
    again = experiment_from_dict(record, tmp_path)
    assert again.arms == exp.arms and again.tuning == exp.tuning
    assert again.tuning_seeds == exp.tuning_seeds == (1003,)


@pytest.mark.parametrize(
    "tuning, arms, message",
    [
        ({"seeds": [2, 9]}, None, r"share \[2\] with the judged seeds"),
        ({"trails": 3}, None, "did you mean 'tuning.trials'"),
        ({"trials": 1}, None, r"tuning.trials: an integer >= 2"),
        ({"factor": 1}, None, "tuning.factor: a number > 1"),
        ({"max_extensions": -1}, None, "tuning.max_extensions"),
        ({"budgets": ["10step"]}, None, "did you mean '10steps'"),
        ({"budgets": "last"}, None, "not one of the budgets"),
        ({}, [{"name": "a", "lr_grid": [1e-3]}], "needs at least 2 LRs"),
        ({}, [{"name": "a", "tune": False, "lr_grid": [1e-3, 2e-3]}], "tune: false with an"),
        ({}, [{"name": "a", "tune": "yes"}], "tune must be true or false"),
        ({}, [{"name": "a", "default_lr": 1e-3}], "what compare records"),
    ],
)
def test_bad_tuning_is_refused_with_a_reason(tmp_path, tuning, arms, message):
    raw = {"seeds": [1, 2, 3], "arms": arms or [{"name": "a"}], "tuning": tuning}
    with pytest.raises(ExperimentError, match=message):
        load_experiment(write(tmp_path, raw))


def test_dry_run_lists_every_arms_tuning_cells(tmp_path, capsys):
    from budgetlm.cli import main

    raw = {"seeds": [1, 2, 3], "budgets": ["10steps", "20steps"], "arms": ARMS, "tuning": {}}
    assert main(["compare", str(write(tmp_path, raw)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    tune = [line.split()[1] for line in out.splitlines() if line.startswith("  tune ")]
    assert {t.split("/")[0] for t in tune} == {"baseline", "lion", "grid"}
    assert "lion/10steps/lr0.0008/seed1003" in tune and len(tune) == 2 * (3 + 3 + 2)
    assert "arm fixed: untuned" in out
    assert "up to 12 more tuning cells" in out  # 3 tuned arms x 2 budgets x 2 extensions


def test_the_saved_record_keeps_whether_the_file_had_a_tuning_section(tmp_path):
    """Reloading experiment.json must not turn 'no tuning section' into 'tune every arm'."""
    from budgetlm.compare.run.experiment_file import experiment_from_dict

    base = {"config": {"model": {"preset": "gpt-tiny"}}, "budgets": ["20steps"], "seeds": [1, 2]}
    for raw in ({**base, "arms": ["baseline"]}, {**base, "arms": ["baseline"], "tuning": {}}):
        exp = experiment_from_dict(raw, tmp_path)
        record = {k: v for k, v in exp.to_dict().items() if k != "source"}
        again = experiment_from_dict(record, tmp_path)
        assert again.spec.given == exp.spec.given == ("tuning" in raw)
        assert [a.tuned for a in again.arms] == [a.tuned for a in exp.arms]


def test_finetune_max_dropped_is_checked_and_reaches_the_fine_tuning_call(tmp_path):
    from budgetlm.compare.run.cell import finetune_limits

    def load(value):
        spec = {"suite": "offline", "tasks": ["bbc_news"], "max_dropped": value}
        return load_experiment(write(tmp_path, {"arms": ["baseline"], "finetune": spec}))

    assert finetune_limits(load(0.3).finetune) == {"max_dropped": 0.3}
    assert finetune_limits({"suite": "offline"}) == {}  # the fine-tuning default applies
    for bad in (1.5, -0.1, "lots", True):
        with pytest.raises(ExperimentError, match="finetune.max_dropped"):
            load(bad)
