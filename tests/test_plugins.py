"""Plug-ins from outside the package train and resume bit-exactly: a method and an optimizer
named by import path or registered by an installed distribution's entry points; an optimizer's
`incompatible` methods are refused; RST budgets price a plug-in optimizer only once it is
calibrated (docs/optimizers.md, "Plug-in optimizers"; docs/rst.md)."""

from __future__ import annotations

import json

import pytest
import torch

from budgetlm.cli import main
from budgetlm.train.metrics import read_metrics

from .methods.arch_helpers import losses, run, same_state
from .plugin_fixtures.helpers import METHOD, OPTIMIZER, importable, install_distribution
from .train.helpers import tiny_config, tiny_overrides


@pytest.fixture(autouse=True)
def plugins(monkeypatch):
    importable(monkeypatch)


RESUMABLE = [
    "budget=8steps",
    "train.eval_every=0.5",
    "train.checkpoint_every=0",
    "model.dropout=0.1",
]


def _straight_and_resumed(tmp_path, *args: str):
    """The same run twice: straight through, and stopped after 3 steps then resumed."""
    straight, _, straight_metrics = run(tiny_config("gpt", tmp_path / "a", *RESUMABLE, *args))
    run(tiny_config("gpt", tmp_path / "b", *RESUMABLE, *args), stop_after=3)
    resumed, summary, metrics = run(
        tiny_config("gpt", tmp_path / "b", *RESUMABLE, *args), resume="auto"
    )
    assert summary["status"] == "finished" and summary["steps"] == 8
    same_state(straight, resumed)
    ga = straight.state.optimizer.state_dict()["param_groups"]
    assert ga == resumed.state.optimizer.state_dict()["param_groups"]
    assert losses(metrics) == losses(straight_metrics)
    return straight, resumed


def _counter(trainer):
    (counter,) = [m for m in trainer.state.methods if m.name == "step_counter"]
    return counter


def _check_counter(straight, resumed, every: int) -> None:
    a, b = _counter(straight), _counter(resumed)
    assert type(a).__module__ == "budgetlm_test_plugins.counter"
    assert a.every == every  # the option reached the method
    # steps 0-7, counted every `every`-th; 3 evaluations (p = 0, 0.5, 1): a resumed counter
    # that restarted from zero would hold fewer
    assert a.state_dict() == {"steps": len(range(0, 8, every)), "evals": 3}
    assert b.state_dict() == a.state_dict()


def _check_sgd(trainer, momentum: float) -> None:
    optimizer = trainer.state.optimizer
    assert type(optimizer) is torch.optim.SGD
    assert {g["momentum"] for g in optimizer.param_groups} == {momentum}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.01, 0.0}  # matrices only
    assert all("momentum_buffer" in s for s in optimizer.state_dict()["state"].values())


def test_method_by_import_path_trains_and_resumes_bit_exactly(tmp_path):
    # its options go under the class's `name`
    straight, resumed = _straight_and_resumed(
        tmp_path, f"method={METHOD}", "methods.step_counter.every=2"
    )
    _check_counter(straight, resumed, every=2)
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["methods"]["step_counter"] == {"counted_steps": 4, "evals": 3}


def test_optimizer_by_import_path_trains_and_resumes_bit_exactly(tmp_path):
    straight, resumed = _straight_and_resumed(
        tmp_path, f"optim.name={OPTIMIZER}", "optim.options.momentum=0.8", "optim.lr=0.05"
    )
    _check_sgd(straight, 0.8)
    _check_sgd(resumed, 0.8)
    # the steps moved the weights (an optimizer that did nothing would also resume "exactly")
    fresh = run(tiny_config("gpt", tmp_path / "c", *RESUMABLE, "budget=1steps"))[0]
    moved = [
        not torch.equal(v, fresh.state.model.state_dict()[k])
        for k, v in straight.state.model.state_dict().items()
    ]
    assert all(moved)


def test_registered_plugins_train_by_short_name_and_resume_bit_exactly(tmp_path, monkeypatch):
    install_distribution(
        monkeypatch,
        tmp_path / "site",
        "budgetlm-test-plugins",
        methods={"step_counter": METHOD},
        optimizers={"momentum_sgd": OPTIMIZER},
    )
    straight, resumed = _straight_and_resumed(
        tmp_path,
        "method=step_counter",
        "methods.step_counter.every=3",
        "optim.name=momentum_sgd",
        "optim.options.nesterov=true",
        "optim.lr=0.05",
    )
    _check_counter(straight, resumed, every=3)
    _check_sgd(resumed, 0.9)
    assert {g["nesterov"] for g in resumed.state.optimizer.param_groups} == {True}


def test_an_optimizer_refuses_the_methods_it_lists_as_incompatible(tmp_path, capsys):
    args = [*tiny_overrides("gpt", tmp_path / "run"), "budget=2steps"]
    picky = "optim.name=budgetlm_test_plugins.sgd:NoLayerDropSGD"
    assert main(["train", *args, picky, "method=layer_drop", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "NoLayerDropSGD" in err and "cannot be combined with method ['layer_drop']" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    # with another method it trains
    assert main(["train", *args, picky, f"method={METHOD}", "--quiet"]) == 0
    assert (tmp_path / "run" / "summary.json").exists()


def test_an_rst_budget_refuses_an_uncalibrated_plugin_optimizer_with_the_command(tmp_path, capsys):
    # gpt-tiny on the fixture corpus at vocabulary 2048: a shape the shipped table prices
    run_dir = tmp_path / "run"
    args = [*tiny_overrides("gpt", run_dir, small=False), "budget=60s-rst"]
    assert main(["train", *args, f"optim.name={OPTIMIZER}", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"budgetlm calibrate CONFIG --optimizers {OPTIMIZER} adamw --out " in err, err
    assert f"no cost for optimizer {OPTIMIZER!r}" in err and "Traceback" not in err
    assert not run_dir.exists()  # refused before anything was written


def test_calibrate_prices_a_plugin_optimizer_and_an_rst_run_then_accepts_it(tmp_path, capsys):
    run_dir, table = tmp_path / "run", tmp_path / "T.json"
    overrides = tiny_overrides("gpt", run_dir)  # SMALL: a shape no shipped table prices
    config = tmp_path / "tiny.yaml"
    config.write_text("{}\n")
    # the smallest grid that still fits the cost model: two batch sizes by two depths (timings
    # on a shared machine are noisy: a wide tolerance, one warm-up)
    grid = ["--batch-sizes", "1", "2", "--repeats", "3", "--warmup", "1", "--tolerance", "0.9"]
    calibrate = ["calibrate", str(config), "--set", *overrides, "--optimizers", OPTIMIZER]
    assert main([*calibrate, *grid, "--out", str(table), "--quiet"]) == 0
    (entry,) = json.loads(table.read_text())["entries"]
    assert entry["shape"]["d_model"] == 32 and list(entry["optimizer_seconds"]) == [OPTIMIZER]
    assert entry["optimizer_seconds"][OPTIMIZER] > 0

    rst = ["train", *overrides, "budget=1h-rst", f"optim.name={OPTIMIZER}"]
    assert main([*rst, "--stop-after", "2", "--quiet"]) == 2  # no shipped table has the shape
    assert "budgetlm calibrate" in capsys.readouterr().err and not run_dir.exists()
    assert main([*rst, f"rst.table={table}", "--stop-after", "2", "--quiet"]) == 0
    steps = [m for m in read_metrics(run_dir / "metrics.jsonl") if m["event"] == "train"]
    assert [m["step"] for m in steps] == [1, 2] and all(m["rst_s"] > 0 for m in steps)
