"""SuperGLUE: task specs, and loaders from the official JSONL download or the Hugging Face hub.

As for GLUE, the JSONL loader rewrites each record into the hub's schema (labels as the hub's
integers, WSC's `target` spans flattened) and both loaders share `examples_from_hub_rows`.
Test labels are not public: `TaskData.test` stays empty. MultiRC and ReCoRD are left out (their
answer-set scoring does not fit one Example per label).

How a record becomes text, where the choice is ours:
- BoolQ: text_a = question, text_b = passage (the question survives truncation of long passages).
- COPA: text_a = premise without its final period + " because" (cause) or " so" (effect); the
  two choices, verbatim, are scored as its continuations.
- WiC: text_a = "word: sentence1", text_b = sentence2.
- WSC: text_a = text, text_b = "<pronoun> refers to <noun phrase>".
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from budgetlm.finetune.glue import _datasets_module, _label, _task_key
from budgetlm.finetune.tasks import (
    CLASSIFICATION,
    MULTIPLE_CHOICE,
    Example,
    TaskData,
    TaskError,
    TaskFileError,
    TaskSpec,
)

HUB_REPO = "aps/super_glue"

_BOOL = ("false", "true")

SUPERGLUE_TASKS: dict[str, TaskSpec] = {
    "boolq": TaskSpec(
        "superglue/boolq", CLASSIFICATION, _BOOL, ("accuracy",), "accuracy",
        "yes/no question about a passage",
    ),
    "cb": TaskSpec(
        "superglue/cb", CLASSIFICATION, ("entailment", "contradiction", "neutral"),
        ("macro_f1", "accuracy"), "macro_f1", "three-way entailment, tiny and unbalanced",
    ),
    "copa": TaskSpec(
        "superglue/copa", MULTIPLE_CHOICE, ("choice1", "choice2"), ("accuracy",), "accuracy",
        "which of two alternatives is the cause / effect of the premise",
    ),
    "rte": TaskSpec(
        "superglue/rte", CLASSIFICATION, ("entailment", "not_entailment"), ("accuracy",),
        "accuracy", "textual entailment",
    ),
    "wic": TaskSpec(
        "superglue/wic", CLASSIFICATION, _BOOL, ("accuracy",), "accuracy",
        "is the word used in the same sense in both sentences",
    ),
    "wsc": TaskSpec(
        "superglue/wsc", CLASSIFICATION, _BOOL, ("accuracy",), "accuracy",
        "does the pronoun refer to the noun phrase (Winograd schema)",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class _Source:
    config: str  # hub config
    directory: str  # official download directory
    fields: tuple[str, ...]  # hub fields the mapping reads (besides label)
    jsonl_label: type  # the label's JSON type in the official files
    render: Callable[[dict], tuple[str, str | None, tuple[str, ...] | None]]


_CONNECTIVE = {"cause": "because", "effect": "so"}


def _copa(row: dict) -> tuple[str, str | None, tuple[str, ...] | None]:
    question = row["question"]
    if question not in _CONNECTIVE:
        raise TaskError(f"COPA question {question!r} is not 'cause' or 'effect'")
    premise = str(row["premise"]).rstrip().removesuffix(".")
    return f"{premise} {_CONNECTIVE[question]}", None, (row["choice1"], row["choice2"])


def _premise_hypothesis(row: dict) -> tuple[str, str | None, tuple[str, ...] | None]:
    return row["premise"], row["hypothesis"], None


_SOURCES: dict[str, _Source] = {
    "boolq": _Source(
        "boolq", "BoolQ", ("question", "passage"), bool,
        lambda r: (r["question"], r["passage"], None),
    ),
    "cb": _Source("cb", "CB", ("premise", "hypothesis"), str, _premise_hypothesis),
    "copa": _Source("copa", "COPA", ("premise", "question", "choice1", "choice2"), int, _copa),
    "rte": _Source("rte", "RTE", ("premise", "hypothesis"), str, _premise_hypothesis),
    "wic": _Source(
        "wic", "WiC", ("word", "sentence1", "sentence2"), bool,
        lambda r: (f"{r['word']}: {r['sentence1']}", r["sentence2"], None),
    ),
    # wsc.fixed: the hub's corrected copy, in which every span matches the text.
    "wsc": _Source(
        "wsc.fixed", "WSC", ("text", "span1_text", "span2_text"), bool,
        lambda r: (r["text"], f"{r['span2_text']} refers to {r['span1_text']}", None),
    ),
}  # fmt: skip


def examples_from_hub_rows(task: str, rows: Iterable[dict]) -> list[Example]:
    """Map rows in the hub's SuperGLUE schema (e.g. {"premise", "choice1", ...}) to Examples."""
    key = _task_key(task, SUPERGLUE_TASKS, "superglue")
    spec, src = SUPERGLUE_TASKS[key], _SOURCES[key]
    out = []
    for i, row in enumerate(rows):
        where = f"{spec.name} row {i}"
        missing = [f for f in (*src.fields, "label") if f not in row]
        if missing:
            raise TaskError(f"{where}: no field(s) {missing} (have {sorted(row)})")
        not_text = [f for f in src.fields if not isinstance(row[f], str)]
        if not_text:
            raise TaskError(f"{where}: field(s) {not_text} are not text ({row[not_text[0]]!r})")
        try:
            text_a, text_b, choices = src.render(row)
        except TaskError as e:
            raise TaskError(f"{where}: {e}") from None
        out.append(Example(text_a, text_b, _label(spec, row["label"], where), choices))
    return out


# --- official JSONL layout -------------------------------------------------------------------


def _layout_hint(src: _Source) -> str:
    return (
        f"expected the official SuperGLUE layout: <data_dir>/{src.directory}/"
        "{train,val,test}.jsonl (directories BoolQ, CB, COPA, RTE, WiC, WSC)"
    )


def _jsonl_as_hub_rows(path: Path, key: str) -> list[dict]:
    """An official JSONL file as hub-schema rows: label as the hub's integer, WSC spans flat.

    Every problem (not JSON, not an object, no label, a foreign label, not UTF-8, no rows)
    raises a TaskError naming the file and line; no row is skipped."""
    spec, src = SUPERGLUE_TASKS[key], _SOURCES[key]
    if not path.is_file():
        raise TaskFileError(f"{spec.name}: no file {path}; {_layout_hint(src)}")
    out = []
    line_no = 0
    try:
        with path.open(encoding="utf-8-sig") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                out.append(_jsonl_row(spec, src, line, f"{path}:{line_no}"))
    except UnicodeDecodeError as e:
        raise TaskError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise TaskError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if not out:
        raise TaskError(f"{path}: no examples (the file is empty)")
    return out


def _jsonl_row(spec: TaskSpec, src: _Source, line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise TaskError(f"{where}: not a JSON object ({e})") from None
    if not isinstance(record, dict):
        raise TaskError(f"{where}: not a JSON object (a {type(record).__name__})")
    target = record.get("target") or {}
    if not isinstance(target, dict):
        raise TaskError(f"{where}: 'target' is not an object")
    row = {k: v for k, v in record.items() if k != "target"}
    row.update(target)
    if "label" not in row:
        raise TaskError(f"{where}: no 'label' (test files are unlabelled)")
    row["label"] = _jsonl_label(spec, src, row["label"], where)
    return row


def _jsonl_label(spec: TaskSpec, src: _Source, value: object, where: str) -> int:
    ok = type(value) is src.jsonl_label  # exact: bool is an int subclass
    if ok and src.jsonl_label is bool:
        return int(value)  # false -> 0, true -> 1, the hub's order
    if ok and src.jsonl_label is str and value in spec.labels:
        return spec.labels.index(value)  # type: ignore[arg-type]
    if ok and src.jsonl_label is int:
        return operator.index(value)  # type: ignore[arg-type]
    raise TaskError(
        f"{where}: label {value!r} is not a {src.jsonl_label.__name__}"
        + (f" in {spec.labels}" if src.jsonl_label is str else "")
    )


def load_superglue_dir(data_dir: Path | str, task: str) -> TaskData:
    """Load one SuperGLUE task from the official JSONL download (train and val; test empty)."""
    key = _task_key(task, SUPERGLUE_TASKS, "superglue")
    src = _SOURCES[key]
    if not Path(data_dir).is_dir():
        raise TaskFileError(f"superglue/{key}: the data folder {data_dir} does not exist")
    task_dir = Path(data_dir) / src.directory
    if not task_dir.is_dir():
        raise TaskFileError(f"superglue/{key}: no directory {task_dir}; {_layout_hint(src)}")
    train = examples_from_hub_rows(key, _jsonl_as_hub_rows(task_dir / "train.jsonl", key))
    val = examples_from_hub_rows(key, _jsonl_as_hub_rows(task_dir / "val.jsonl", key))
    return TaskData(SUPERGLUE_TASKS[key], train, val, source=str(task_dir))


# --- Hugging Face hub ------------------------------------------------------------------------


def load_superglue_hub(task: str, cache_dir: str | None = None) -> TaskData:
    """Load one SuperGLUE task from the hub's `aps/super_glue` (train and validation)."""
    key = _task_key(task, SUPERGLUE_TASKS, "superglue")
    src = _SOURCES[key]
    datasets = _datasets_module(f"superglue/{key} from the hub")
    ds = datasets.load_dataset(HUB_REPO, src.config, cache_dir=cache_dir)
    return TaskData(
        SUPERGLUE_TASKS[key],
        examples_from_hub_rows(key, ds["train"]),
        examples_from_hub_rows(key, ds["validation"]),
        source=f"hub:{HUB_REPO}/{src.config}",
    )
