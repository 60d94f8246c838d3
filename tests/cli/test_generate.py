"""`budgetlm generate`: greedy continuation from a run's model, T5 span filling, BERT refused."""

from __future__ import annotations

import pytest
import torch

from budgetlm.cli import main
from budgetlm.models.generate import gpt_step_logits, sample_loop, t5_step_logits
from budgetlm.train.saved_run import load_run_model

from .helpers import train_args

PROMPT = "The king of"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A few trained steps of each family: {family: run directory}."""
    root = tmp_path_factory.mktemp("runs")
    for family in ("gpt", "t5", "bert"):
        assert main(train_args(family, root / family, "budget=4steps")) == 0
    return {family: root / family for family in ("gpt", "t5", "bert")}


def _generate(capsys, run_dir, *options: str) -> str:
    assert main(["generate", str(run_dir), "--prompt", PROMPT, *options]) == 0
    return capsys.readouterr().out


def test_greedy_gpt_is_deterministic_and_starts_at_the_argmax(runs, capsys):
    first = _generate(capsys, runs["gpt"], "--max-new-tokens", "8")
    assert first == _generate(capsys, runs["gpt"], "--max-new-tokens", "8")

    run = load_run_model(runs["gpt"])
    model, tokenizer = run.model.eval(), run.data.dataset.tokenizer
    ids = torch.tensor([[tokenizer.doc_separator_id, *tokenizer.encode(PROMPT)]])
    with torch.no_grad():
        logits = model({"input_ids": ids, "labels": ids}, return_logits=True).logits
    new = sample_loop(gpt_step_logits(model), ids[0].tolist(), 8)
    assert new[0] == int(logits[0, -1].argmax())
    assert first == tokenizer.decode(new, skip_special_tokens=True) + "\n"


def test_sampling_is_seeded(runs, capsys):
    options = ["--temperature", "1.0", "--top-k", "50", "--max-new-tokens", "12"]
    a = _generate(capsys, runs["gpt"], *options, "--seed", "3")
    assert a == _generate(capsys, runs["gpt"], *options, "--seed", "3")


def test_top_k_one_is_greedy():
    logits = torch.tensor([0.1, 2.0, -1.0, 1.9])
    steps = sample_loop(lambda ids: logits, [0], 5, temperature=2.0, top_k=1)
    assert steps == [1] * 5


def test_generation_stops_at_a_stop_id():
    logits = torch.tensor([0.0, 5.0])
    assert sample_loop(lambda ids: logits, [0], 10, stop_ids=[1]) == [1]


def test_t5_fills_a_span(runs, capsys):
    assert main(["generate", str(runs["t5"]), "--prompt", PROMPT]) == 0
    run = load_run_model(runs["t5"])
    tokenizer = run.data.dataset.tokenizer
    encoder_ids = [*tokenizer.encode(PROMPT), tokenizer.sentinel_ids[0], tokenizer.eos_id]
    new = sample_loop(t5_step_logits(run.model.eval(), encoder_ids), [tokenizer.pad_id], 10)
    assert len(new) == 10 and all(0 <= i < tokenizer.vocab_size for i in new)


def test_bert_is_refused(runs, capsys):
    assert main(["generate", str(runs["bert"]), "--prompt", PROMPT]) == 2
    assert "BERT" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option", [["--temperature", "-1"], ["--max-new-tokens", "0"], ["--top-k", "0"]]
)
def test_bad_settings_are_refused(runs, capsys, option):
    assert main(["generate", str(runs["gpt"]), "--prompt", PROMPT, *option]) == 2
    assert "generate: error:" in capsys.readouterr().err
