"""Fine-tuning tiny pre-trained runs of every family, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from budgetlm.cli import main
from budgetlm.finetune.encode import Encoder, truncate_pair
from budgetlm.finetune.glue import GLUE_TASKS, load_glue_dir
from budgetlm.finetune.loop import Protocol, lr_at
from budgetlm.finetune.run import finetune_run, load_backbone, read_results
from budgetlm.finetune.superglue import SUPERGLUE_TASKS
from budgetlm.finetune.tasks import Example
from budgetlm.train.session import open_run

from ..train.helpers import tiny_config

FIXTURES = Path(__file__).parent / "fixtures"
QUICK = Protocol(epochs=2, batch_size=4, max_length=32, lr=1e-3, max_train=16, max_eval=8)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """family -> a finished 6-step run directory with a checkpoint."""
    runs = {}
    for family in ("gpt", "bert", "t5"):
        run_dir = tmp_path_factory.mktemp(family) / "run"
        trainer = open_run(tiny_config(family, run_dir, "budget=6steps"), progress=False)
        trainer.run()
        trainer.log.close()
        runs[family] = run_dir
    return runs


def test_truncation_cuts_the_longer_text_first():
    assert truncate_pair([1, 2, 3, 4, 5], [6, 7], 5) == ([1, 2, 3], [6, 7])
    assert truncate_pair([1], [2, 3, 4, 5], 3) == ([1], [2, 3])


def test_each_family_reads_pairs_as_it_was_pretrained(pretrained):
    ex = Example("a first sentence that is long", "second", 1)
    for family in ("gpt", "bert", "t5"):
        _, tok = load_backbone(pretrained[family])
        enc = Encoder(family, tok, GLUE_TASKS["rte"], max_length=8)
        seq = enc.sequence(ex.text_a, ex.text_b)
        assert len(seq) <= 8
        if family == "bert":
            assert seq[0] == tok.cls_id and seq[-1] == tok.sep_id and seq.count(tok.sep_id) == 2
        elif family == "gpt":
            assert seq[-1] == tok.eos_id and seq.count(tok.eos_id) == 2
        else:
            assert seq[-1] == tok.eos_id
            batch = enc.batch([ex])
            assert batch["labels"][0].tolist() == enc.targets[1]
            assert batch["decoder_input_ids"][0, 0] == tok.pad_id


def test_multiple_choice_scores_every_choice(pretrained):
    _, tok = load_backbone(pretrained["bert"])
    enc = Encoder("bert", tok, SUPERGLUE_TASKS["copa"], max_length=16)
    batch = enc.batch([Example("p", None, 1, ("c one", "c two"))] * 3)
    assert batch["input_ids"].shape[0] == 6 and batch["labels"].tolist() == [1, 1, 1]


def test_schedule_warms_up_then_decays_to_zero():
    lrs = [lr_at(s, 100, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert max(lrs) == pytest.approx(1.0) and lrs[-1] < 0.01


@pytest.mark.parametrize(
    "family, suite, tasks",
    [
        ("bert", "glue", ["rte", "stsb"]),  # pair classification, regression
        ("gpt", "superglue", ["copa", "cb"]),  # multiple choice, 3-way with macro F1
        ("t5", "glue", ["sst2"]),  # text to text, exact match
    ],
)
def test_finetune_writes_scores_into_the_run(pretrained, family, suite, tasks):
    run_dir = pretrained[family]
    data_dir = FIXTURES / suite
    results = finetune_run(
        run_dir,
        suite,
        tasks=tasks,
        seeds=(1, 2),
        protocol=QUICK,
        data_dir=data_dir,
        progress=False,
    )
    stored = read_results(run_dir)[suite]
    assert stored["average"] == pytest.approx(results["average"])
    for task in tasks:
        r = stored["tasks"][task]
        assert len(r["reported"]) == 2 and len(r["epochs"][0]) == QUICK.epochs
        main_metric = r["main_metric"]
        assert all(-1.0 <= rep[main_metric] <= 1.0 for rep in r["reported"])
        if suite == "glue":
            assert r["sizes"]["train"] == len(load_glue_dir(data_dir, task).train)
    assert stored["protocol"]["select"] == "final"


def test_finetuning_leaves_the_run_untouched_and_is_reproducible(pretrained):
    run_dir = pretrained["bert"]
    before = load_backbone(run_dir)[0].state_dict()
    kw = dict(tasks=["rte"], seeds=(3,), protocol=QUICK, data_dir=FIXTURES / "glue", progress=False)
    first = finetune_run(run_dir, "glue", **kw)
    second = finetune_run(run_dir, "glue", **kw)
    assert first["tasks"]["rte"]["reported"] == second["tasks"]["rte"]["reported"]
    after = load_backbone(run_dir)[0].state_dict()
    assert all((before[k] == after[k]).all() for k in before)


def test_cli_finetunes_on_the_offline_suite(pretrained, capsys):
    run_dir = pretrained["gpt"]
    code = main(
        [
            "finetune",
            str(run_dir),
            "--suite",
            "offline",
            "--tasks",
            "rotten_tomatoes",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--max-length",
            "32",
            "--max-train",
            "32",
            "--max-eval",
            "16",
            "--quiet",
        ]
    )
    assert code == 0
    stored = json.loads((run_dir / "finetune" / "offline.json").read_text())
    rt = stored["tasks"]["rotten_tomatoes"]
    assert rt["train_examples"] == 32 and rt["eval_examples"] == 16
    assert 0.0 <= rt["mean"] <= 1.0 and rt["majority"] is not None
    assert "rotten_tomatoes" in capsys.readouterr().out


def test_cli_refuses_unknown_tasks_and_bad_protocols(pretrained, capsys):
    assert main(["finetune", str(pretrained["gpt"]), "--tasks", "imdb_sentiment"]) == 2
    assert "has no task" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="epochs"):
        main(["finetune", str(pretrained["gpt"]), "--epochs", "0"])
