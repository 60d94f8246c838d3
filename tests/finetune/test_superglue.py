"""SuperGLUE loaders against hand-written fixtures in the official JSONL layout, and hub rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from budgetlm.finetune.superglue import (
    SUPERGLUE_TASKS,
    examples_from_hub_rows,
    load_superglue_dir,
    load_superglue_hub,
)
from budgetlm.finetune.tasks import CLASSIFICATION, MULTIPLE_CHOICE, Example

FIXTURES = Path(__file__).parent / "fixtures" / "superglue"

SIZES = {"boolq": (5, 4), "cb": (5, 4), "copa": (4, 4), "rte": (4, 4), "wic": (4, 4), "wsc": (4, 4)}


def test_specs():
    assert set(SUPERGLUE_TASKS) == set(SIZES)
    for key, spec in SUPERGLUE_TASKS.items():
        assert spec.name == f"superglue/{key}"
    cb = SUPERGLUE_TASKS["cb"]
    assert cb.labels == ("entailment", "contradiction", "neutral")
    assert (cb.metrics, cb.main_metric) == (("macro_f1", "accuracy"), "macro_f1")
    assert SUPERGLUE_TASKS["boolq"].labels == ("false", "true")
    copa = SUPERGLUE_TASKS["copa"]
    assert (copa.kind, copa.num_labels, copa.main_metric) == (MULTIPLE_CHOICE, 2, "accuracy")


@pytest.mark.parametrize("task", sorted(SIZES))
def test_every_task_loads(task):
    data = load_superglue_dir(FIXTURES, task)
    assert data.spec is SUPERGLUE_TASKS[task]
    train, val = SIZES[task]
    assert data.sizes() == {"train": train, "validation": val, "test": 0}
    for ex in data.train + data.validation:
        assert type(ex.label) is int and 0 <= ex.label < data.spec.num_labels
        assert (ex.choices is not None) == (data.spec.kind == MULTIPLE_CHOICE)
        if data.spec.kind == CLASSIFICATION:
            assert ex.text_b


def test_specific_rows():
    boolq = load_superglue_dir(FIXTURES, "boolq")
    assert boolq.train[0] == Example(
        "is a tomato a fruit", "Botanically, the tomato is a berry.", 1
    )  # true -> 1
    assert [e.label for e in boolq.validation] == [0, 1, 1, 0]

    cb = load_superglue_dir(FIXTURES, "cb")
    # entailment 0, contradiction 1, neutral 2 (the hub's order)
    assert [e.label for e in cb.train] == [0, 1, 2, 0, 1]
    assert cb.validation[3] == Example("She denied that she had left.", "she had left", 1)

    rte = load_superglue_dir(FIXTURES, "superglue/rte")
    assert [e.label for e in rte.validation] == [0, 1, 0, 1]

    copa = load_superglue_dir(FIXTURES, "copa")
    assert copa.train[0] == Example(
        "The lamp went dark because", None, 0, ("The bulb burned out.", "The window was open.")
    )
    assert copa.train[1] == Example(
        "The child dropped the glass so", None, 1, ("The glass floated.", "The glass broke.")
    )

    wic = load_superglue_dir(FIXTURES, "wic")
    assert wic.train[0] == Example(
        "bank: We sat on the bank of the stream.", "She opened an account at the bank.", 0
    )
    assert wic.train[1].label == 1

    wsc = load_superglue_dir(FIXTURES, "wsc")
    assert wsc.train[0] == Example(
        "The trophy did not fit in the box because it was too big.", "it refers to The trophy", 1
    )
    assert wsc.validation[3].text_b == "he refers to Pia" and wsc.validation[3].label == 0


def test_missing_directory_and_bad_label(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_superglue_dir(tmp_path, "wic")
    assert str(tmp_path / "WiC") in str(err.value) and "val" in str(err.value)

    d = tmp_path / "BoolQ"
    d.mkdir()
    row = {"question": "q", "passage": "p", "idx": 0, "label": "true"}  # a string, not a bool
    (d / "train.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"train\.jsonl:1: label 'true' is not a bool"):
        load_superglue_dir(tmp_path, "boolq")
    with pytest.raises(ValueError, match="unknown superglue task 'record'"):
        load_superglue_dir(tmp_path, "record")


def test_examples_from_hub_rows():
    wsc = [
        {"text": "Ada met Bo when she was ten.", "span1_index": 0, "span2_index": 4,
         "span1_text": "Ada", "span2_text": "she", "idx": 0, "label": 1}
    ]  # fmt: skip
    assert examples_from_hub_rows("wsc", wsc) == [
        Example("Ada met Bo when she was ten.", "she refers to Ada", 1)
    ]
    copa = [
        {"premise": "The milk went sour.", "choice1": "It was left out.", "choice2": "It was cold.",
         "question": "cause", "idx": 0, "label": 0}
    ]  # fmt: skip
    assert examples_from_hub_rows("copa", copa) == [
        Example("The milk went sour because", None, 0, ("It was left out.", "It was cold."))
    ]
    cb = [{"premise": "I doubt it rained.", "hypothesis": "it rained", "idx": 0, "label": 2}]
    assert examples_from_hub_rows("cb", cb) == [Example("I doubt it rained.", "it rained", 2)]
    with pytest.raises(ValueError, match="'cause' or 'effect'"):
        examples_from_hub_rows("copa", [{**copa[0], "question": "why"}])


def test_load_superglue_hub(monkeypatch):
    datasets = pytest.importorskip("datasets")
    row = {"word": "key", "sentence1": "A key.", "sentence2": "The key.", "label": 1, "idx": 0}
    ds = datasets.Dataset.from_dict({k: [v] for k, v in row.items()})
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        return datasets.DatasetDict({"train": ds, "validation": ds, "test": ds})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_superglue_hub("wic")
    assert calls == [("aps/super_glue", "wic")]
    assert data.train == data.validation == [Example("key: A key.", "The key.", 1)]
    assert data.test == []
