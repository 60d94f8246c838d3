"""The random-init control: the same fine-tuning from fresh weights, alone and in a grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from budgetlm.cli import main
from budgetlm.compare.analysis.control import read_control
from budgetlm.compare.run.cell import ERROR_FILE
from budgetlm.compare.run.control import control_dir, prepare_control, run_control
from budgetlm.compare.run.experiment import Cell
from budgetlm.compare.run.grid import GridRunner
from budgetlm.finetune import run as finetune_module
from budgetlm.finetune.control import control_source, finetune_random_init, random_backbone
from budgetlm.finetune.loop import Protocol
from budgetlm.finetune.run import finetune_run, load_backbone, read_results
from budgetlm.finetune.store import write_results
from budgetlm.train.session import open_run

from ..compare.planted import plant_cell, planted_experiment
from ..train.helpers import tiny_config

FIXTURES = Path(__file__).parent / "fixtures"
QUICK = Protocol(epochs=1, batch_size=8, max_length=32, lr=1e-3, max_train=16, max_eval=8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 6-step tiny GPT run with a checkpoint."""
    run_dir = tmp_path_factory.mktemp("gpt") / "run"
    trainer = open_run(tiny_config("gpt", run_dir, "budget=6steps"), progress=False)
    trainer.run()
    trainer.log.close()
    return run_dir


def _first_weight(model: torch.nn.Module) -> torch.Tensor:
    return next(p for p in model.parameters() if p.ndim >= 2).detach().clone()


def test_random_init_finetunes_fresh_weights_in_the_same_format(trained, tmp_path, monkeypatch):
    seen: list[torch.Tensor] = []
    real = finetune_module.finetune_task

    def spy(backbone, *args, **kwargs):
        seen.append(_first_weight(backbone))
        return real(backbone, *args, **kwargs)

    monkeypatch.setattr(finetune_module, "finetune_task", spy)
    kw = dict(tasks=["rotten_tomatoes"], seeds=(1, 2), protocol=QUICK, progress=False)
    out = tmp_path / "control"
    control = finetune_random_init(trained, "offline", out_dir=out, **kw)
    pretrained = finetune_run(trained, "offline", **kw)
    assert len(seen) == 4  # two fine-tuning seeds each: the control's, then the run's
    trained_weight = _first_weight(load_backbone(trained)[0])
    # The control fine-tuned fresh weights, one initialisation per seed; the run, its own.
    assert not torch.equal(seen[0], trained_weight) and not torch.equal(seen[1], trained_weight)
    assert not torch.equal(seen[0], seen[1])
    assert torch.equal(seen[2], trained_weight) and torch.equal(seen[3], trained_weight)
    # Seed s starts where a pre-training run of seed s starts; deterministic.
    cfg, shape, _ = control_source(trained)
    assert shape is not None and torch.equal(_first_weight(random_backbone(shape, 1)), seen[0])
    # The same format, where the same reader finds it, plus what it was built from.
    stored = read_results(out)["offline"]
    assert stored["average"] == pytest.approx(control["average"])
    assert set(pretrained) <= set(stored) and stored["init"] == "random"
    assert stored["protocol"] == pretrained["protocol"] and stored["seeds"] == [1, 2]
    task, ref = stored["tasks"]["rotten_tomatoes"], pretrained["tasks"]["rotten_tomatoes"]
    assert set(task) == set(ref) and len(task["reported"]) == 2
    assert task["train_examples"] == 16 and task["eval_examples"] == 8
    assert task["sizes"] == ref["sizes"] and 0.0 <= task["mean"] <= 1.0
    assert "init" not in read_results(trained)["offline"]  # the run's own results: pre-trained


def test_cli_random_init_writes_to_out(trained, tmp_path, capsys):
    out = tmp_path / "ctl"
    args = ["finetune", str(trained), "--random-init", "--out", str(out), "--quiet"]
    args += ["--suite", "glue", "--data-dir", str(FIXTURES / "glue"), "--tasks", "rte"]
    args += ["--epochs", "1", "--max-length", "32", "--max-train", "8", "--max-eval", "8"]
    assert main(args) == 0
    stored = json.loads((out / "finetune" / "glue.json").read_text())
    assert stored["init"] == "random" and set(stored["tasks"]) == {"rte"}
    assert not (trained / "finetune" / "glue.json").exists()
    assert main(["finetune", str(tmp_path / "nothing"), "--random-init", "--out", str(out)]) == 2


FINETUNE = {
    "suite": "glue",
    "data_dir": str(FIXTURES / "glue"),
    "tasks": ["rte"],
    "seeds": [1, 2],
    "epochs": 1,
    "batch_size": 8,
    "max_length": 32,
    "max_train": 8,
    "max_eval": 8,
}


def test_the_grid_runs_one_control_after_its_cells_and_skips_it_once_done(tmp_path):
    out = tmp_path / "grid"
    raw = {"seeds": [1, 2], "arms": [{"name": "baseline"}, {"name": "ld", "method": "layer_drop"}]}
    exp = planted_experiment(out, {**raw, "finetune": FINETUNE})
    for arm in ("baseline", "ld"):  # finished, fine-tuned cells: the grid has nothing to run
        for seed in (1, 2):
            run_dir = plant_cell(exp, out, Cell(arm, "20steps", seed), 3.0)
            rte = {"main_metric": "accuracy", "mean": 0.5, "std": 0.0, "seeds": [1, 2]}
            write_results(run_dir, "glue", {"average": 0.5, "protocol": {}, "tasks": {"rte": rte}})
    outcome = GridRunner(exp, out, jobs=1, threads=1, progress=False, poll_seconds=0.05).run()
    assert len(outcome.skipped) == 4 and not outcome.failed
    assert outcome.control == "finished", (control_dir(out) / "control.log").read_text()[-2000:]
    control = read_control(out)
    assert control is not None and control.arm == "baseline" and control.error is None
    stored = control.downstream["glue"]
    assert stored["init"] == "random" and stored["seeds"] == [1, 2]
    assert len(control.scores("glue")) == 2 and len(control.scores("glue", "rte")) == 2
    assert control.model == exp.config_for(Cell("baseline", "20steps", 1)).to_dict()["model"]
    # Its results are there: a second grid, and the control's own process, run nothing.
    results = control_dir(out) / "finetune" / "glue.json"
    before = results.stat().st_mtime_ns
    again = GridRunner(exp, out, jobs=1, threads=1, progress=False, poll_seconds=0.05).run()
    assert again.control == "skipped" and run_control(control_dir(out)) == 0
    assert results.stat().st_mtime_ns == before


def test_a_failed_control_stays_failed_until_retried(tmp_path):
    out = tmp_path / "grid"
    broken = {**FINETUNE, "data_dir": str(tmp_path / "no-glue-here")}
    exp = planted_experiment(out, {"seeds": [1], "arms": ["baseline"], "finetune": broken})
    assert prepare_control(exp, out) == "todo"
    assert run_control(control_dir(out)) != 0
    control = read_control(out)
    assert control is not None and control.error is not None and not control.downstream
    assert prepare_control(exp, out) == "failed"
    assert prepare_control(exp, out, retry_failed=True) == "todo"
    assert not (control_dir(out) / ERROR_FILE).exists()
    plain = planted_experiment(tmp_path / "plain", {"seeds": [1], "arms": ["baseline"]})
    assert prepare_control(plain, tmp_path / "plain") == "none"  # no finetune: no control
    assert read_control(tmp_path / "plain") is None
