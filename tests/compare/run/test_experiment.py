"""Experiment files: strict parsing, cells, and the config each cell trains with."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from budgetlm.compare.run.experiment import Cell, ExperimentError, load_experiment

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
    assert exp.baseline == "baseline" and exp.tuning_seeds == (1,)
    assert [c.id for c in exp.tuning_cells()] == [
        "lion/10steps/lr0.0001/seed1",
        "lion/10steps/lr0.0003/seed1",
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
    lion = exp.config_for(Cell("lion", "10steps", 1, 3e-4), out)
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
