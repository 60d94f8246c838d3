"""`budgetlm train`'s start-of-run summary: what the budget means, checked against the run."""

from __future__ import annotations

import json
import math
import re

import pytest

from budgetlm.cli import main
from budgetlm.data import load_prepared
from budgetlm.models import ModelShape, forward_flops
from budgetlm.train.plan_summary import PlanSummary, format_plan

from .helpers import train_args

SCALE = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}


def _number(text: str) -> float:
    value, suffix = re.fullmatch(r"([\d.]+)([kMG]?)", text).groups()
    return float(value) * SCALE[suffix]


def _train(capsys, run_dir, *overrides: str) -> str:
    assert main(train_args("gpt", run_dir, *overrides)) == 0
    return capsys.readouterr().err


def _meta(run_dir) -> dict:
    return json.loads((run_dir / "meta.json").read_text())


def _budget_line(err: str) -> re.Match:
    line = next(line for line in err.splitlines() if line.startswith("budget: "))
    match = re.search(
        r"~?(\d+) steps x (\d+) sequences = ~?([\d.]+[kMG]?) tokens = ~?([\d.]+) epochs of "
        r"([\d.]+[kMG]?) training tokens",
        line,
    )
    assert match, line
    return match


def test_summary_of_a_step_budget_matches_the_run(capsys, tmp_path):
    run = tmp_path / "run"
    err = _train(capsys, run, "budget=6steps")
    meta = _meta(run)
    train_tokens = len(load_prepared(meta["dataset"]["path"]).tokens("train"))

    model = re.search(
        r"model: gpt, ([\d.]+[kM]) parameters \(([\d.]+[kM]) without embeddings\)", err
    )
    assert model, err
    assert _number(model[1]) == pytest.approx(meta["params"], rel=5e-3)
    assert _number(model[2]) == pytest.approx(meta["params_non_embedding"], rel=5e-3)

    budget = _budget_line(err)
    tokens = 6 * 8 * 32  # steps x batch x seq_len (a causal LM reads seq_len new tokens each)
    assert (int(budget[1]), int(budget[2])) == (6, 8)
    assert _number(budget[3]) == pytest.approx(tokens, rel=5e-3)
    assert float(budget[4]) == pytest.approx(tokens / train_tokens, rel=0.02)
    assert _number(budget[5]) == pytest.approx(train_tokens, rel=5e-3)
    assert "estimated" not in err and "warning" not in err
    assert json.loads((run / "summary.json").read_text())["steps"] == 6


def test_resume_says_where_it_continues(capsys, tmp_path):
    run = tmp_path / "run"
    _train(capsys, run, "budget=6steps", "--stop-after", "3")
    err = _train(capsys, run, "budget=6steps", "--resume", "auto")
    assert "resuming from step 3 (p = 0.50 of the budget)" in err
    assert "budget: 6 steps x 8 sequences" in err


def test_a_token_budget_is_estimated_in_the_steps_the_clock_takes(capsys, tmp_path):
    run = tmp_path / "run"
    err = _train(capsys, run, "budget=1900 tokens")  # 256 tokens a step: 7.4 -> 8 steps
    assert int(_budget_line(err)[1]) == math.ceil(1900 / 256) == 8
    assert "estimated from the cost of one step of the full model at p = 0" in err
    assert json.loads((run / "summary.json").read_text())["steps"] == 8


def test_a_flop_budget_is_estimated_from_the_step_cost(capsys, tmp_path):
    run = tmp_path / "run"
    err = _train(capsys, run, "budget=1e9 flops", "--stop-after", "1")
    shape = ModelShape(**_meta(run)["shape"])
    per_step = 3 * forward_flops(shape, batch_size=8)  # forward + backward over the batch
    assert int(_budget_line(err)[1]) == math.ceil(1e9 / per_step)


def test_a_small_corpus_read_many_times_is_warned_about(capsys, tmp_path):
    run = tmp_path / "run"
    err = _train(capsys, run, "budget=400steps", "data.max_bytes=20000", "--stop-after", "1")
    epochs = float(_budget_line(err)[4])
    assert epochs > 4
    assert f"warning: the run reads its training data {epochs:.1f} times" in err
    assert "memorisation" in err


def test_a_wall_clock_budget_has_no_step_count(capsys, tmp_path):
    err = _train(capsys, tmp_path / "run", "budget=300s", "--stop-after", "1")
    assert "budget: 5.0m of wall clock; steps unknown until they are timed" in err


def test_methods_are_named_as_changing_the_estimate():
    summary = PlanSummary(
        family="gpt",
        params=150_000,
        params_non_embedding=30_000,
        flops_per_token=1e6,
        budget="1.5m-rst",
        unit="rst",
        steps=100,
        exact=False,
        batch_size=8,
        tokens_per_step=256,
        train_examples=1000,
        train_tokens=32_000,
        start_step=0,
        start_progress=0.0,
        methods=("layer_drop",),
    )
    lines = format_plan(summary)
    assert lines[1] == (
        "budget: 1.5m-rst = ~100 steps x 8 sequences = ~25.6k tokens = ~0.8 epochs of 32k "
        "training tokens"
    )
    assert lines[2].endswith("at p = 0; methods (layer_drop) change it")
    assert len(lines) == 3
