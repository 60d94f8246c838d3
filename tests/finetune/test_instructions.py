"""Instruction fine-tuning (issue 20): ROUGE-L, the greedy decoder, training, results, the CLI
and the compare report's downstream table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from rouge_score import rouge_scorer

from budgetlm.cli import main
from budgetlm.data.tokenizer import train_tokenizer
from budgetlm.finetune.instructions.data import Instance, InstructionSuite, InstructionTask
from budgetlm.finetune.instructions.protocol import InstructionProtocol, protocol_from_spec
from budgetlm.finetune.instructions.score import rouge_l, suite_rouge_l, task_rouge_l
from budgetlm.finetune.instructions.train import (
    check_suite,
    finetune_instructions,
    gpt_batch,
    greedy_decode,
    load_instructions,
)
from budgetlm.finetune.store import read_suite
from budgetlm.finetune.tasks import TaskError
from budgetlm.models import build_model
from budgetlm.models.generate import sample_loop, t5_step_logits
from budgetlm.models.shapes import PRESETS

SNI_FIXTURE = Path(__file__).parent / "fixtures" / "sni"
BIGBENCH_FIXTURE = Path(__file__).parent / "fixtures" / "bigbench_ni"
QUICK = InstructionProtocol(lr=1e-3, batch_size=4, steps=6, eval_batch_size=3)

# -- ROUGE-L ------------------------------------------------------------------------------------


def test_rouge_l_is_rouge_scores_best_f_measure_over_the_references():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    planted = {
        "plurals": (
            ["the cats are running", "boxes", ""],
            [("the cat runs", "cats running"), ("boxes",), ("a dog",)],
        ),
        "capitals": (["Paris is the capital", "berlin"], [("Paris",), ("Berlin", "Bonn")]),
    }

    def expected(pred: str, refs: tuple[str, ...]) -> float:
        return 100 * max(scorer.score(r, pred)["rougeL"].fmeasure for r in refs)

    per_task, average = suite_rouge_l(
        {t: p for t, (p, _) in planted.items()}, {t: r for t, (_, r) in planted.items()}
    )
    for task, (preds, refs) in planted.items():
        want = [expected(p, r) for p, r in zip(preds, refs, strict=True)]
        assert per_task[task] == pytest.approx(sum(want) / len(want))
        assert task_rouge_l(preds, refs) == pytest.approx(per_task[task])
    assert average == pytest.approx((per_task["plurals"] + per_task["capitals"]) / 2)
    # Stemmed and case-blind (rouge-score's default tokenizer), best reference wins.
    assert rouge_l("Cats runs", ["the dog", "cat running"]) == pytest.approx(100.0)
    assert rouge_l("berlin", ["Bonn", "Berlin"]) == 100.0
    assert rouge_l("", ["a dog"]) == 0.0
    with pytest.raises(ValueError):
        task_rouge_l(["a"], [])


# -- suites built in memory ---------------------------------------------------------------------

WORDS = ["red", "blue", "green", "black", "white", "small", "big"]
WORDS += ["old", "new", "hot", "cold", "fast", "slow"]
HELD_OUT_WORDS = ["apple", "pear", "plum", "grape", "lime", "kiwi"]  # never trained on


def _task(name: str, definition: str, make, words: list[str], n: int = 6) -> InstructionTask:
    instances = tuple(
        Instance(f"{name}-{i}", words[i % len(words)], make(words[i % len(words)]))
        for i in range(n)
    )
    examples = (("sun", make("sun")[0]), ("moon", make("moon")[0]))
    return InstructionTask(name, definition, examples, instances, source="memory")


def small_suite(name: str = "instructions") -> InstructionSuite:
    train = (
        _task("copy", "Repeat the word.", lambda w: (w,), WORDS[:6]),
        _task("shout", "Write the word in capitals.", lambda w: (w.upper(),), WORDS[4:10]),
        _task("double", "Write the word twice.", lambda w: (f"{w} {w}",), WORDS[7:]),
    )
    test = (
        _task("echo", "Say the word again.", lambda w: (w, f"{w}!"), HELD_OUT_WORDS[:4], n=4),
        _task("plural", "Add an s to the word.", lambda w: (f"{w}s",), HELD_OUT_WORDS[3:], n=3),
    )
    return InstructionSuite(name, train, test, source="memory")


@pytest.fixture(scope="module")
def tokenizer():
    suite = small_suite()
    texts = [
        f"{t.definition} {i.input} {' '.join(i.outputs)}"
        for t in (*suite.train, *suite.test)
        for i in t.instances
    ]
    texts += ["Definition: Positive Example Input: Output: Now complete the following example"]
    return train_tokenizer("unigram", texts * 4, 160)


def tiny_t5(vocab_size: int, seed: int = 0):
    shape = dataclasses.replace(
        PRESETS["t5-v1_1-tiny"],
        n_layers=1,
        n_decoder_layers=1,
        d_model=32,
        n_heads=2,
        d_kv=16,
        d_ff=64,
        seq_len=48,
        target_len=12,
        vocab_size=vocab_size,
        dropout=0.0,
    )
    torch.manual_seed(seed)
    return build_model(shape)


def test_the_greedy_decoder_matches_step_by_step_decoding():
    model = tiny_t5(64).eval()
    sources = [[5, 9, 13, 2, 1], [7, 3, 1], [11, 12, 13, 14, 15, 16, 1]]
    eos, start, steps = 1, 0, 6
    reference = [
        sample_loop(t5_step_logits(model, s), [start], steps, stop_ids=[eos])[:steps]
        for s in sources
    ]
    width = max(map(len, sources))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in sources])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sources])
    got = greedy_decode(model, ids, mask, steps, eos, start)
    assert got == [[t for t in r if t != eos] for r in reference]
    # Stopping: make the first source's first token EOS; the others decode on unchanged.
    stop = reference[0][0]
    got = greedy_decode(model, ids, mask, steps, stop, start)
    assert got[0] == []
    for row, ref in zip(got[1:], reference[1:], strict=True):
        assert row == (ref[: ref.index(stop)] if stop in ref else ref)


def test_a_suite_is_checked_before_training():
    suite = small_suite()
    check_suite(suite)
    leaked = dataclasses.replace(suite, test=(*suite.test, suite.train[0]))
    with pytest.raises(TaskError, match="also training"):
        check_suite(leaked)
    with pytest.raises(TaskError, match="no held-out"):
        check_suite(dataclasses.replace(suite, test=()))
    with pytest.raises(TaskError, match="no such SNI folder"):
        load_instructions("sni", "/no/such/sni/folder", QUICK)


def test_a_tiny_t5_fine_tunes_and_is_scored(tokenizer, tmp_path, capsys):
    suite = small_suite()
    backbone = tiny_t5(tokenizer.vocab_size)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    results = finetune_instructions(
        lambda seed: backbone, tokenizer, suite, tmp_path, seeds=[1, 2], protocol=QUICK
    )
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())
    assert results["train_tasks"] == ["copy", "shout", "double"]
    assert results["test_tasks"] == results["average_over"] == ["echo", "plural"]
    assert results["sizes"] == {
        "train_tasks": 3,
        "test_tasks": 2,
        "train_instances": 18,
        "test_instances": 7,
    }
    assert results["steps"] == 6 and results["lengths"] == {"source": 48, "target": 12}
    assert results["protocol"]["metric"] == "rougeL" and results["protocol"]["steps"] == 6
    for entry in results["tasks"].values():
        assert entry["main_metric"] == "rougeL" and entry["seeds"] == [1, 2]
        assert all(0 <= r["rougeL"] <= 100 for r in entry["reported"])
        assert 0 <= entry["mean"] <= 100 and entry["examples"]
    means = [t["mean"] for t in results["tasks"].values()]
    assert results["average"] == pytest.approx(sum(means) / 2)
    assert 0 <= results["average"] <= 100
    assert read_suite(tmp_path, "instructions") == json.loads(json.dumps(results))
    assert "step 6/6" in capsys.readouterr().err
    # Deterministic given the seed.
    again = finetune_instructions(
        lambda seed: backbone, tokenizer, suite, tmp_path / "again", seeds=[1, 2], protocol=QUICK
    )
    assert again["tasks"] == results["tasks"] and again["final_loss"] == results["final_loss"]


def test_a_gpt_fine_tunes_as_the_decoder_only_variant_and_bert_is_refused(tokenizer, tmp_path):
    shape = dataclasses.replace(
        PRESETS["gpt-tiny"], n_layers=1, d_model=32, n_heads=2, d_kv=16, d_ff=64, seq_len=64
    )
    gpt = build_model(dataclasses.replace(shape, vocab_size=tokenizer.vocab_size))
    quick = dataclasses.replace(QUICK, steps=2)
    results = finetune_instructions(
        lambda s: gpt, tokenizer, small_suite(), tmp_path / "gpt", protocol=quick
    )
    assert results["lengths"] == {"source": 49, "target": 16} and results["steps"] == 2
    assert all(0 <= t["mean"] <= 100 for t in results["tasks"].values())
    # The loss is on the output only: labels of the prompt are ignored.
    batch = gpt_batch([[5, 6, 7], [8]], [[9, 1], [10, 11, 1]], 1)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 9], [8, 10, 11, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 9, 1], [10, 11, 1, -100]]
    bert = build_model(
        dataclasses.replace(
            PRESETS["bert-tiny"], n_layers=1, d_model=32, d_kv=16, d_ff=64, n_heads=2
        )
    )
    with pytest.raises(TaskError, match="T5"):
        finetune_instructions(lambda s: bert, tokenizer, small_suite(), tmp_path, protocol=QUICK)
    assert not (tmp_path / "finetune" / "instructions.json").exists()


def test_the_offline_suite_fixture_fine_tunes(tokenizer, tmp_path):
    suite = load_instructions("instructions", BIGBENCH_FIXTURE, QUICK)
    assert suite.train and suite.test
    results = finetune_instructions(
        lambda s: tiny_t5(tokenizer.vocab_size),
        tokenizer,
        suite,
        tmp_path,
        protocol=dataclasses.replace(QUICK, steps=2),
    )
    assert results["test_tasks"] == [t.name for t in suite.test]
    assert results["train_tasks"] == [t.name for t in suite.train]
    assert results["source"] == str(BIGBENCH_FIXTURE) and 0 <= results["average"] <= 100


# -- protocol, command line -------------------------------------------------------------------


def test_the_protocol_defaults_are_nanot5s_and_bad_values_are_refused():
    p = InstructionProtocol()
    assert (p.optimizer, p.lr, p.batch_size, p.epochs, p.schedule) == (
        "adamw",
        5e-5,
        8,
        2,
        "constant",
    )
    assert (p.max_source_len, p.max_target_len, p.max_instances, p.num_pos_examples) == (
        1024,
        128,
        100,
        2,
    )
    assert protocol_from_spec({"suite": "sni", "steps": 10}).steps == 10
    with pytest.raises(ValueError, match="classification"):
        protocol_from_spec({"suite": "sni", "max_length": 64})
    with pytest.raises(ValueError, match="instruction suites"):
        protocol_from_spec({"suite": "glue", "steps": 10})
    with pytest.raises(ValueError, match="steps"):
        InstructionProtocol(steps=0)


def exit_code(args: list[str]) -> int:
    """The exit status of `budgetlm ARGS` (some refusals raise SystemExit, others return)."""
    try:
        return main(args)
    except SystemExit as e:
        return int(e.code)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data-dir", "/no/such/sni"], "no such SNI folder"),
        (["--data-dir", str(SNI_FIXTURE), "--tasks", "task906_stories_summarization"], "tasks"),
        (["--data-dir", str(SNI_FIXTURE), "--steps", "0"], "steps"),
        (["--data-dir", str(SNI_FIXTURE), "--max-length", "64"], "--max-length"),
    ],
)
def test_the_command_line_refuses_bad_input_with_exit_2(tmp_path, capsys, extra, message):
    run = tmp_path / "run"
    run.mkdir()
    assert exit_code(["finetune", str(run), "--suite", "sni", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (run / "finetune" / "sni.json").exists()


def test_instruction_options_are_refused_for_classification_suites(tmp_path, capsys):
    assert exit_code(["finetune", str(tmp_path), "--suite", "offline", "--steps", "5"]) == 2
    assert "instruction suites only" in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_a_t5_run_on_the_sni_fixture_and_its_control(tmp_path, capsys):
    from budgetlm.train.session import open_run

    from ..train.helpers import tiny_config

    run = tmp_path / "t5"
    trainer = open_run(tiny_config("t5", run, "budget=4steps"), progress=False)
    trainer.run()
    trainer.log.close()
    quick = ["--steps", "3", "--batch-size", "4", "--lr", "1e-3", "--quiet"]
    args = ["finetune", str(run), "--suite", "sni", "--data-dir", str(SNI_FIXTURE), *quick]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sni average" in out and "rougeL" in out
    stored = read_suite(run, "sni")
    assert stored["test_tasks"] == [
        "task905_recipes_title_generation",
        "task906_stories_summarization",
    ]
    assert len(stored["train_tasks"]) == 4 and stored["steps"] == 3
    assert stored["protocol"]["lr"] == 1e-3 and 0 <= stored["average"] <= 100
    assert stored["run_dir"] == str(run)
    control = tmp_path / "control"
    assert main([*args, "--random-init", "--out", str(control)]) == 0
    random = read_suite(control, "sni")
    assert random["init"] == "random" and random["protocol"] == stored["protocol"]
    assert random["test_tasks"] == stored["test_tasks"]
    # A compare cell fine-tunes from the experiment's `finetune:` section.
    from budgetlm.compare.run.cell import FINETUNE_SPEC, finetune_cell

    (run / "finetune" / "sni.json").unlink()
    spec = {"suite": "sni", "data_dir": str(SNI_FIXTURE), "seeds": [1], "steps": 2}
    (run / FINETUNE_SPEC).write_text(json.dumps(spec))
    assert finetune_cell(run) == 0
    cell = read_suite(run, "sni")
    assert cell["steps"] == 2 and cell["protocol"] == InstructionProtocol(steps=2).to_dict()


# -- compare ------------------------------------------------------------------------------------


def test_an_experiment_can_fine_tune_on_an_instruction_suite(tmp_path):
    from budgetlm.compare.run.experiment_file import ExperimentError, experiment_from_dict

    raw = {
        "name": "x",
        "config": {"model": {"preset": "t5-tiny"}},
        "budgets": ["20steps"],
        "arms": [{"name": "baseline"}],
    }
    exp = experiment_from_dict({**raw, "finetune": {"suite": "sni", "steps": 20}}, tmp_path)
    assert exp.finetune["suite"] == "sni" and exp.finetune["steps"] == 20
    for bad in ({"suite": "sni", "tasks": ["a"]}, {"suite": "sni", "select": "max"}):
        with pytest.raises(ExperimentError):
            experiment_from_dict({**raw, "finetune": bad}, tmp_path)


def test_the_report_shows_rouge_l_with_paired_statistics_and_the_control(tmp_path):
    from budgetlm.compare.report.build import build_report
    from budgetlm.compare.report.tables import CONTROL_ARM
    from budgetlm.compare.report.write import write_report
    from budgetlm.compare.run.control import control_dir, prepare_control
    from budgetlm.compare.run.experiment_file import experiment_from_dict
    from budgetlm.finetune.store import write_results

    from ..compare.planted import planted_grid

    out = tmp_path / "grid"
    planted_grid(out)
    spec = {"suite": "sni", "seeds": [1], "steps": 20}
    record = json.loads((out / "experiment.json").read_text())
    record["finetune"] = spec
    (out / "experiment.json").write_text(json.dumps(record))
    protocol = InstructionProtocol(steps=20).to_dict()

    def scores(values: dict[str, list[float]]) -> dict:
        tasks = {
            t: {"main_metric": "rougeL", "mean": sum(v) / len(v), "reported": [{"rougeL": x}]}
            for t, v in values.items()
            for x in v[:1]
        }
        average = sum(t["mean"] for t in tasks.values()) / len(tasks)
        return {"average": average, "protocol": protocol, "metric": "rougeL", "tasks": tasks}

    for seed in range(1, 5):
        for arm, base in (("baseline", 30.0), ("good", 40.0)):
            run_dir = out / "cells" / arm / "20steps" / f"seed{seed}"
            write_results(run_dir, "sni", scores({"t1": [base + seed], "t2": [base - seed]}))
    raw = {k: v for k, v in record.items() if k not in ("source", "command", "updated")}
    assert prepare_control(experiment_from_dict(raw, out), out) == "todo"
    write_results(control_dir(out), "sni", {"init": "random", **scores({"t1": [5.0], "t2": [7.0]})})
    report = build_report(out)
    (d,) = report.downstream["20steps"]
    assert d.suite == "sni" and d.tasks == ["t1", "t2"]
    good = d.comparisons["good"]
    assert good.diff == pytest.approx(10.0) and good.design == "paired" and good.n_pairs == 4
    assert d.control is not None and d.control.mean == pytest.approx(6.0)
    md = write_report(report)["markdown"].read_text()
    assert "sni average (ROUGE-L)" in md and CONTROL_ARM in md
    assert "scored with ROUGE-L" in md


def test_a_prompt_too_long_loses_its_definition_not_its_instance(tokenizer):
    from budgetlm.finetune.instructions.data import Instance, InstructionTask, PromptSettings
    from budgetlm.finetune.instructions.train import Encoded

    task = InstructionTask(
        "long_definition",
        "Definition words repeat " * 40,
        (),
        (Instance("x1", "complete the following example", ("Output",)),),
        "test",
    )
    query = tokenizer.encode("Now complete the following example -\nInput: x\nOutput: ")
    length = len(query) + 24  # room for the instance's words and a bit of the definition
    encoded = Encoded(
        tokenizer, PromptSettings(num_pos_examples=0), source_len=length, target_len=8
    )
    ids = encoded.source(task, task.instances[0])
    assert len(ids) == length and ids[-1] == tokenizer.eos_id
    text = tokenizer.decode(ids[:-1])
    assert "complete the following example" in text  # the instance, whole
    assert text.count("repeat") < 40  # the definition, cut
    # A prompt that fits is left as it is.
    short = InstructionTask("short", "Definition", (), task.instances, "test")
    roomy = Encoded(tokenizer, PromptSettings(num_pos_examples=0), length + 40, target_len=8)
    whole = roomy.source(short, short.instances[0])
    assert tokenizer.decode(whole[:-1]).startswith("Definition")
