"""Fine-tuning on a user's GLUE/SuperGLUE files: bad files are refused before anything trains
(exit 2, nothing written), skipped rows are recorded, results of earlier calls are merged, not
replaced, and `--out` is created or refused at once (issue 15)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from budgetlm.cli import main
from budgetlm.errors import StorageError
from budgetlm.finetune import run as finetune_module
from budgetlm.finetune import store
from budgetlm.finetune.glue import load_glue_dir
from budgetlm.finetune.loop import FinetuneDiverged
from budgetlm.finetune.run import load_suite
from budgetlm.finetune.superglue import load_superglue_dir
from budgetlm.finetune.tasks import TaskError
from budgetlm.train.session import open_run

from ..train.helpers import tiny_config

FIXTURES = Path(__file__).parent / "fixtures"
RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"
QUICK = ["--epochs", "1", "--batch-size", "8", "--max-length", "32", "--quiet"]
QUICK += ["--max-train", "16", "--max-eval", "8"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished 6-step tiny GPT run with a checkpoint."""
    path = tmp_path_factory.mktemp("gpt") / "run"
    trainer = open_run(tiny_config("gpt", path, "budget=6steps"), progress=False)
    trainer.run()
    trainer.log.close()
    return path


@pytest.fixture
def glue(tmp_path) -> Path:
    """A writable copy of the GLUE fixtures (official layout)."""
    return Path(shutil.copytree(FIXTURES / "glue", tmp_path / "glue"))


@pytest.fixture
def no_training(monkeypatch) -> None:
    """Training anything fails the test: the input must be refused before."""

    def refuse(*args, **kwargs):
        raise AssertionError("fine-tuning started although the input is bad")

    monkeypatch.setattr(finetune_module, "finetune_task", refuse)


def _rte_rows(n: int, start: int = 0) -> str:
    return "".join(
        f"{i}\tThe team won game {i}.\tThe team played.\t"
        f"{'entailment' if i % 2 else 'not_entailment'}\n"
        for i in range(start, start + n)
    )


def _finetune(run_dir: Path, out: Path, data_dir: Path, *tasks: str, extra=(), suite="glue"):
    args = ["finetune", str(run_dir), "--suite", suite, "--data-dir", str(data_dir)]
    return main([*args, "--out", str(out), "--tasks", *tasks, *QUICK, *extra])


# --- bad files: exit 2, nothing trained, nothing written ------------------------------------


def _missing_label_column(glue: Path) -> None:
    (glue / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\n0\tA b.\tC d.\n")


def _foreign_label(glue: Path) -> None:
    rows = _rte_rows(2) + "2\tThe sky is blue.\tThe sky has a colour.\tmaybe\n"
    (glue / "RTE" / "train.tsv").write_text(RTE_HEADER + rows)


def _empty_dev(glue: Path) -> None:
    (glue / "SST-2" / "dev.tsv").write_text("")


def _header_only_dev(glue: Path) -> None:
    (glue / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n")


def _missing_cola(glue: Path) -> None:
    shutil.rmtree(glue / "CoLA")


def _a_third_of_rte_broken(glue: Path) -> None:  # the reviewer's file: 33 of 100 rows short
    rows = [line for line in _rte_rows(100).splitlines(keepends=True)]
    for i in range(0, 99, 3):
        rows[i] = rows[i].rsplit("\t", 1)[0] + "\n"  # no label column
    (glue / "RTE" / "train.tsv").write_text(RTE_HEADER + "".join(rows))


BAD = {
    "no label column": (_missing_label_column, ["rte"], r"RTE/dev\.tsv:1: .*no column.*'label'"),
    "foreign label": (_foreign_label, ["rte"], r"RTE/train\.tsv:4: label 'maybe' is not one of"),
    "empty dev file": (_empty_dev, ["sst2"], r"SST-2/dev\.tsv: the file is empty"),
    "header-only dev file": (_header_only_dev, ["sst2"], r"SST-2/dev\.tsv: no examples"),
    "missing task folder listed second": (_missing_cola, ["rte", "cola"], r"no directory .*CoLA"),
    "33 of 100 rows short": (
        _a_third_of_rte_broken,
        ["rte"],
        r"33 of 100 rows of .*RTE/train\.tsv .* more than 10% .* --max-dropped 0\.33",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_task_file_is_refused_before_training(
    case, run_dir, glue, tmp_path, capsys, no_training
):
    break_files, tasks, message = BAD[case]
    break_files(glue)
    out = tmp_path / "out"
    assert _finetune(run_dir, out, glue, *tasks) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no traceback
    assert "nothing was fine-tuned" in err
    assert re.search(message, err), err
    assert not (out / "finetune" / "glue.json").exists()


def test_every_bad_task_is_named_at_once(glue, no_training):
    _missing_label_column(glue)
    _empty_dev(glue)
    with pytest.raises(TaskError) as err:
        load_suite("glue", ["sst2", "qnli", "rte"], glue)
    message = str(err.value)
    assert message.startswith("2 tasks cannot be fine-tuned, so none was")
    assert "SST-2/dev.tsv" in message and "RTE/dev.tsv" in message


def test_bad_superglue_files_are_refused(tmp_path):
    data = Path(shutil.copytree(FIXTURES / "superglue", tmp_path / "superglue"))
    cb = data / "CB" / "train.jsonl"
    good = cb.read_text()
    cb.write_text(good + '{"premise": "a", "hypothesis": "b", "label": "maybe", "idx": 9}\n')
    with pytest.raises(TaskError, match=r"CB/train\.jsonl:6: label 'maybe' is not a str in"):
        load_superglue_dir(data, "cb")
    cb.write_text(good + '["not", "an", "object"]\n')
    with pytest.raises(TaskError, match=r"train\.jsonl:6: not a JSON object \(a list\)"):
        load_superglue_dir(data, "cb")
    cb.write_text(good + '{"premise": null, "hypothesis": "b", "label": "neutral"}\n')
    with pytest.raises(TaskError, match=r"row 5: field\(s\) \['premise'\] are not text"):
        load_superglue_dir(data, "cb")
    (data / "CB" / "val.jsonl").write_text("\n")
    cb.write_text(good)
    with pytest.raises(TaskError, match=r"CB/val\.jsonl: no examples"):
        load_superglue_dir(data, "cb")


def test_unreadable_or_odd_glue_files(glue):
    (glue / "STS-B" / "dev.tsv").write_text("index\tsentence1\tsentence2\tscore\n0\ta\tb\tnan\n")
    with pytest.raises(TaskError, match=r"STS-B/dev\.tsv:2: label 'nan' is not a finite number"):
        load_glue_dir(glue, "stsb")
    (glue / "SST-2" / "dev.tsv").write_bytes(b"sentence\tlabel\ncaf\xe9 \t1\n")
    with pytest.raises(TaskError, match=r"SST-2/dev\.tsv: not UTF-8"):
        load_glue_dir(glue, "sst2")
    (glue / "CoLA" / "dev.tsv").write_text("")  # header-less CoLA: empty is no examples
    with pytest.raises(TaskError, match=r"CoLA/dev\.tsv: no examples"):
        load_glue_dir(glue, "cola")
    with pytest.raises(FileNotFoundError, match="does not exist"):  # a TaskError too
        load_glue_dir(glue / "nowhere", "rte")


# --- skipped rows are recorded -------------------------------------------------------------


def test_skipped_rows_are_recorded_and_printed(run_dir, glue, tmp_path, capsys):
    rows = _rte_rows(20) + "20\tonly one sentence\n"  # 1 of 21 rows short: under 10%
    (glue / "RTE" / "train.tsv").write_text(RTE_HEADER + rows)
    out = tmp_path / "out"
    assert _finetune(run_dir, out, glue, "rte") == 0
    stored = json.loads((out / "finetune" / "glue.json").read_text())
    rte = stored["tasks"]["rte"]
    assert rte["dropped"] == {"train": 1, "validation": 0}
    assert "1 of 21 rows" in rte["dropped_reasons"]["train"]
    assert "line 22" in rte["dropped_reasons"]["train"]
    assert rte["sizes"]["train"] == 20 and rte["source"] == str(glue / "RTE")
    printed = capsys.readouterr()
    assert "skipped malformed rows: 1 train" in printed.out
    assert "glue/rte train: skipped 1 of 21 rows" in printed.err


def test_max_dropped_lets_a_damaged_file_through(run_dir, glue, tmp_path):
    _a_third_of_rte_broken(glue)
    out = tmp_path / "out"
    assert _finetune(run_dir, out, glue, "rte", extra=["--max-dropped", "0.4"]) == 0
    stored = json.loads((out / "finetune" / "glue.json").read_text())
    assert stored["tasks"]["rte"]["dropped"] == {"train": 33, "validation": 0}


# --- results are merged, not replaced ------------------------------------------------------


def test_a_later_call_merges_its_tasks_into_the_results(run_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    data = FIXTURES / "glue"
    assert _finetune(run_dir, out, data, "rte") == 0
    path = out / "finetune" / "glue.json"
    first = json.loads(path.read_text())
    assert _finetune(run_dir, out, data, "sst2") == 0
    merged = json.loads(path.read_text())
    assert list(merged["tasks"]) == ["sst2", "rte"]  # the suite's order
    assert merged["tasks"]["rte"] == first["tasks"]["rte"]  # survived the later call
    means = [merged["tasks"][t]["mean"] for t in ("sst2", "rte")]
    assert merged["average"] == pytest.approx(sum(means) / 2)
    assert merged["average_over"] == ["sst2", "rte"]
    assert "(stored earlier)" in capsys.readouterr().out
    # Other settings would mix protocols in one average: refused before training, file kept.
    before = path.read_bytes()
    monkeypatch.setattr(finetune_module, "finetune_task", _refuse)
    assert _finetune(run_dir, out, data, "sst2", extra=["--lr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert "rte were fine-tuned with other settings (lr 4e-05 -> 0.001)" in err
    assert path.read_bytes() == before
    monkeypatch.undo()
    # ... unless the call fine-tunes every stored task again: then the file is replaced.
    assert _finetune(run_dir, out, data, "sst2", "rte", extra=["--lr", "1e-3"]) == 0
    replaced = json.loads(path.read_text())
    assert replaced["protocol"]["lr"] == 1e-3 and set(replaced["tasks"]) == {"sst2", "rte"}


def _refuse(*args, **kwargs):
    raise AssertionError("fine-tuning started although it must be refused")


def test_a_corrupt_results_file_is_refused_not_replaced(run_dir, tmp_path, capsys, no_training):
    out = tmp_path / "out"
    (out / "finetune").mkdir(parents=True)
    (out / "finetune" / "glue.json").write_text('{"suite": "glue", "tasks": {')
    assert _finetune(run_dir, out, FIXTURES / "glue", "rte") == 2
    assert "cannot be read" in capsys.readouterr().err
    assert (out / "finetune" / "glue.json").read_text() == '{"suite": "glue", "tasks": {'


def test_finished_tasks_are_saved_when_a_later_one_fails(run_dir, tmp_path, capsys, monkeypatch):
    real = finetune_module.finetune_task

    def fail_on_sst2(backbone, tokenizer, data, *args, **kwargs):
        if data.spec.name == "glue/sst2":
            raise FinetuneDiverged("glue/sst2 seed 1: the fine-tuning loss is nan")
        return real(backbone, tokenizer, data, *args, **kwargs)

    monkeypatch.setattr(finetune_module, "finetune_task", fail_on_sst2)
    out = tmp_path / "out"
    assert _finetune(run_dir, out, FIXTURES / "glue", "rte", "sst2") == 1
    err = capsys.readouterr().err
    assert "saved the finished task(s) rte" in err and "not finished: sst2" in err
    stored = json.loads((out / "finetune" / "glue.json").read_text())
    assert list(stored["tasks"]) == ["rte"]

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_module, "finetune_task", interrupt)
    assert _finetune(run_dir, out, FIXTURES / "glue", "sst2") == 130
    assert json.loads((out / "finetune" / "glue.json").read_text()) == stored


# --- --out ---------------------------------------------------------------------------------


def test_a_nested_out_is_created_before_training(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "a" / "b" / "c"
    real, seen = finetune_module.finetune_task, []

    def spy(*args, **kwargs):
        seen.append((out / "finetune").is_dir())
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "finetune_task", spy)
    assert _finetune(run_dir, out, FIXTURES / "glue", "rte") == 0
    assert seen == [True]  # created (and test-written) before the first task trained
    assert set(json.loads((out / "finetune" / "glue.json").read_text())["tasks"]) == {"rte"}
    assert [p.name for p in (out / "finetune").iterdir()] == ["glue.json"]  # no probe left


def test_an_unwritable_out_fails_before_training(run_dir, tmp_path, capsys, no_training):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert _finetune(run_dir, blocker / "out", FIXTURES / "glue", "rte") == 2
    assert "cannot write fine-tuning results to" in capsys.readouterr().err
    args = ["finetune", str(run_dir), str(run_dir), "--out", str(tmp_path / "x"), "--quiet"]
    assert main(args) == 2  # one --out for two models would merge their results
    assert "--out takes one RUN_DIR" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # A missing second RUN_DIR is found before the first one is fine-tuned.
    assert main(["finetune", str(run_dir), str(tmp_path / "typo"), "--quiet"]) == 2
    assert f"no such run directory: {tmp_path / 'typo'}" in capsys.readouterr().err


# --- atomic writes -------------------------------------------------------------------------


def test_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch):
    path = store.write_results(tmp_path, "glue", {"tasks": {}, "average": None})
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(StorageError, match="No space left on device"):
        store.write_results(tmp_path, "glue", {"tasks": {"rte": {}}, "average": 0.5})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["glue.json"]  # no temporary left


def test_merge_rules():
    head = {"protocol": {"lr": 1.0}, "seeds": [1]}
    old = {**head, "tasks": {"rte": {"mean": 0.5}}}
    new = {**head, "tasks": {"sst2": {"mean": 1.0}}}
    assert store.merge_conflict(old, new, ["sst2"]) is None
    merged = store.merge_results(old, new, ["sst2", "rte"])
    assert merged["average"] == 0.75 and list(merged["tasks"]) == ["sst2", "rte"]
    other = {**new, "protocol": {"lr": 2.0}}
    assert "lr 1.0 -> 2.0" in store.merge_conflict(old, other, ["sst2"])
    assert store.merge_conflict(old, other, ["sst2", "rte"]) is None  # re-runs every task
    assert store.merge_results(old, other)["tasks"] == other["tasks"]  # then replaces the file
    # Seeds may differ between tasks: marked, not refused.
    old = {**head, "tasks": {"rte": {"mean": 0.5, "seeds": [1]}}}
    more = {**head, "seeds": [2, 3], "tasks": {"sst2": {"mean": 1.0, "seeds": [2, 3]}}}
    assert store.merge_conflict(old, more, ["sst2"]) is None
    merged = store.merge_results(old, more)
    assert merged["seeds"] == [1, 2, 3] and merged["seeds_differ"] is True
    control = {**new, "init": "random"}
    assert "init pre-trained -> random" in store.merge_conflict(old, control, ["sst2"])


def test_a_suite_counts_as_done_only_with_every_requested_task():
    # A grid cell whose results file holds the suite but not all its tasks (a later
    # `finetune --tasks rte` by hand merged in one task) is fine-tuned again, not skipped.
    from budgetlm.finetune.store import has_results

    results = {"glue": {"average": 0.6, "tasks": {"rte": {"mean": 0.6}}}}
    assert has_results(results, "glue", ["rte"])
    assert has_results(results, "glue", None)
    assert not has_results(results, "glue", ["rte", "cola"])
    assert not has_results(results, "superglue", None)
