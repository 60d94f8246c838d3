"""GLUE loaders against hand-written fixtures in the official layout, and the hub row mapping."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

from budgetlm.finetune.glue import (
    GLUE_TASKS,
    examples_from_hub_rows,
    load_glue_dir,
    load_glue_hub,
)
from budgetlm.finetune.tasks import CLASSIFICATION, REGRESSION, Example

FIXTURES = Path(__file__).parent / "fixtures" / "glue"

# task -> (train, validation) sizes in the fixtures; QQP train has 6 rows, one malformed.
SIZES = {
    "cola": (5, 4),
    "sst2": (5, 4),
    "mnli_m": (5, 4),
    "mnli_mm": (5, 3),
    "qnli": (5, 4),
    "rte": (5, 4),
    "mrpc": (5, 4),
    "qqp": (5, 4),
    "stsb": (5, 4),
}


def _load(task: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the QQP malformed row; checked on its own below
        return load_glue_dir(FIXTURES, task)


def test_specs():
    assert set(GLUE_TASKS) == set(SIZES)
    for key, spec in GLUE_TASKS.items():
        assert spec.name == f"glue/{key}"
    assert GLUE_TASKS["cola"].main_metric == "mcc"
    assert GLUE_TASKS["mrpc"].metrics == ("f1", "accuracy")
    assert GLUE_TASKS["qqp"].main_metric == "f1"
    assert GLUE_TASKS["mnli_m"].labels == ("entailment", "neutral", "contradiction")
    assert GLUE_TASKS["qnli"].labels == GLUE_TASKS["rte"].labels == ("entailment", "not_entailment")
    stsb = GLUE_TASKS["stsb"]
    assert (stsb.kind, stsb.labels, stsb.main_metric) == (REGRESSION, (), "pearson")
    assert stsb.num_labels == 1
    assert all(s.kind == CLASSIFICATION for k, s in GLUE_TASKS.items() if k != "stsb")


@pytest.mark.parametrize("task", sorted(SIZES))
def test_every_task_loads(task):
    data = _load(task)
    assert data.spec is GLUE_TASKS[task]
    train, val = SIZES[task]
    assert data.sizes() == {"train": train, "validation": val, "test": 0}
    for ex in data.train + data.validation:
        assert isinstance(ex.text_a, str) and ex.text_a
        if data.spec.kind == CLASSIFICATION:
            assert type(ex.label) is int and 0 <= ex.label < len(data.spec.labels)
        else:
            assert type(ex.label) is float


def test_specific_rows():
    cola = _load("cola")
    assert cola.train[0] == Example("The kettle whistled loudly.", None, 1)  # acceptable
    assert cola.train[1].label == 0 and cola.validation[3].text_a == "Harbour the to walked we."

    mrpc = _load("mrpc")
    assert mrpc.train[1] == Example(
        "Shares rose three percent in early trading.", "The company hired a new finance chief.", 0
    )

    stsb = _load("stsb")
    assert stsb.train[3].label == 1.5 and stsb.validation[0].label == 5.0
    assert stsb.validation[0].text_b == "A kid is kicking a ball."

    qnli = _load("qnli")
    assert [e.label for e in qnli.validation] == [0, 1, 0, 1]  # entailment=0, not_entailment=1
    assert qnli.train[0].text_a == "When does the bakery open?"

    rte = _load("rte")
    assert rte.train[1].label == 1 and rte.train[1].text_b == "The pass stayed open all winter."

    qqp = _load("qqp")
    assert [e.label for e in qqp.train] == [1, 0, 1, 0, 1]
    assert qqp.train[3].text_a == "Where do penguins live?"  # row after the malformed one


def test_mnli_matched_and_mismatched_share_train():
    m, mm = _load("mnli_m"), _load("mnli_mm")
    assert m.train == mm.train
    assert m.validation != mm.validation
    # gold_label decides, not label1 (an annotator who said contradiction)
    assert [e.label for e in m.validation] == [0, 2, 1, 0]
    assert [e.label for e in mm.validation] == [0, 2, 1]
    assert mm.validation[0].text_b == "The library got a gift."
    assert m.train[2] == Example(
        "Critics praised the new opera.", "The opera sold out every night.", 1
    )


def test_stray_quote_is_read_intact():
    sst2 = _load("sst2")
    assert sst2.train[0] == Example('" the plot wanders , but the cast is charming ', None, 1)
    assert sst2.train[1].text_a == "a dull and airless little film "


def test_malformed_row_is_skipped_with_warning():
    with pytest.warns(UserWarning, match=r"QQP.train\.tsv: skipped 1 malformed row"):
        data = load_glue_dir(FIXTURES, "qqp")
    assert len(data.train) == 5


def test_missing_directory_and_file(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_glue_dir(tmp_path, "cola")
    assert str(tmp_path / "CoLA") in str(err.value) and "GLUE download script" in str(err.value)

    (tmp_path / "MNLI").mkdir()
    (tmp_path / "MNLI" / "train.tsv").write_text((FIXTURES / "MNLI" / "train.tsv").read_text())
    with pytest.raises(FileNotFoundError, match="dev_mismatched.tsv"):
        load_glue_dir(tmp_path, "mnli_mm")


def test_bom_unknown_label_and_unknown_task(tmp_path):
    d = tmp_path / "SST-2"
    d.mkdir()
    (d / "train.tsv").write_text("\ufeffsentence\tlabel\ngood fun \t1\n", encoding="utf-8")
    (d / "dev.tsv").write_text("sentence\tlabel\nmeh \t7\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dev\.tsv:2: label '7'"):
        load_glue_dir(tmp_path, "sst2")
    (d / "dev.tsv").write_text("sentence\tlabel\nmeh \t0\n", encoding="utf-8")
    assert load_glue_dir(tmp_path, "glue/sst2").train == [Example("good fun ", None, 1)]
    with pytest.raises(ValueError, match="unknown glue task 'wnli'"):
        load_glue_dir(tmp_path, "wnli")


def test_examples_from_hub_rows():
    mnli = [{"premise": "A cat sleeps.", "hypothesis": "An animal rests.", "label": 0, "idx": 0}]
    assert examples_from_hub_rows("mnli_mm", mnli) == [
        Example("A cat sleeps.", "An animal rests.", 0)
    ]
    qqp = [{"question1": "Why?", "question2": "How come?", "label": 1, "idx": 3}]
    assert examples_from_hub_rows("glue/qqp", qqp) == [Example("Why?", "How come?", 1)]
    cola = [{"sentence": "Birds sing.", "label": 1, "idx": 0}]
    assert examples_from_hub_rows("cola", cola) == [Example("Birds sing.", None, 1)]
    stsb = [{"sentence1": "a", "sentence2": "b", "label": 3.2, "idx": 0}]
    assert examples_from_hub_rows("stsb", stsb)[0].label == pytest.approx(3.2)
    with pytest.raises(ValueError, match="unlabelled"):
        examples_from_hub_rows("rte", [{"sentence1": "a", "sentence2": "b", "label": -1}])
    with pytest.raises(ValueError, match="no field"):
        examples_from_hub_rows("qnli", [{"sentence1": "a", "sentence2": "b", "label": 0}])


def test_hub_without_datasets_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'budgetlm\[hub\]'"):
        load_glue_hub("cola")


def test_load_glue_hub_end_to_end(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def split(rows):
        return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]})

    rows = {
        "train": [
            {"sentence1": "The pond froze.", "sentence2": "There was ice.", "label": 0, "idx": 0},
            {"sentence1": "The pond froze.", "sentence2": "It was hot.", "label": 1, "idx": 1},
        ],
        "validation": [
            {"sentence1": "Bells rang.", "sentence2": "It was silent.", "label": 1, "idx": 0}
        ],
        "test": [{"sentence1": "Doors shut.", "sentence2": "Doors closed.", "label": -1, "idx": 0}],
    }
    dd = datasets.DatasetDict({name: split(r) for name, r in rows.items()})
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs.get("cache_dir")))
        return dd

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_glue_hub("rte", cache_dir="/nowhere")
    assert calls == [("nyu-mll/glue", "rte", "/nowhere")]
    assert data.spec is GLUE_TASKS["rte"]
    assert data.sizes() == {"train": 2, "validation": 1, "test": 0}
    assert data.train[1] == Example("The pond froze.", "It was hot.", 1)
    assert data.validation == [Example("Bells rang.", "It was silent.", 1)]
