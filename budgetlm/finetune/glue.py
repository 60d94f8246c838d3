"""GLUE: task specs, and loaders from the official TSV download or from the Hugging Face hub.

Both loaders go through one row mapping (`examples_from_hub_rows`): the TSV loader first
rewrites each TSV row into the hub's schema, so the two sources cannot disagree on which field
is text_a or which integer a label word gets. Label order is the hub's integer order throughout.

GLUE test labels are not public, so `TaskData.test` is left empty; report on validation.
WNLI is left out, as in most BERT-era comparisons (its dev set is adversarial to train).
"""

from __future__ import annotations

import csv
import operator
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from budgetlm.finetune.tasks import (
    CLASSIFICATION,
    REGRESSION,
    Example,
    TaskData,
    TaskError,
    TaskSpec,
)

HUB_REPO = "nyu-mll/glue"


def _spec(name: str, labels: tuple[str, ...], metrics: tuple[str, ...], desc: str) -> TaskSpec:
    kind = REGRESSION if not labels else CLASSIFICATION
    return TaskSpec(f"glue/{name}", kind, labels, metrics, metrics[0], desc)


_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, TaskSpec] = {
    "cola": _spec("cola", ("unacceptable", "acceptable"), ("mcc",), "grammatical acceptability"),
    "sst2": _spec("sst2", ("negative", "positive"), ("accuracy",), "movie-review sentiment"),
    "mnli_m": _spec("mnli_m", _NLI3, ("accuracy",), "NLI, matched-genre dev set"),
    "mnli_mm": _spec("mnli_mm", _NLI3, ("accuracy",), "NLI, mismatched-genre dev set"),
    "qnli": _spec("qnli", _NLI2, ("accuracy",), "does the sentence answer the question"),
    "rte": _spec("rte", _NLI2, ("accuracy",), "textual entailment, small"),
    "mrpc": _spec("mrpc", ("not_equivalent", "equivalent"), ("f1", "accuracy"), "paraphrase"),
    "qqp": _spec("qqp", ("not_duplicate", "duplicate"), ("f1", "accuracy"), "duplicate questions"),
    "stsb": _spec("stsb", (), ("pearson", "spearman"), "sentence similarity score, 0 to 5"),
}


@dataclass(frozen=True)
class _Source:
    """Where one task lives: hub config and fields, and its TSV directory and columns."""

    config: str  # hub config name
    val_split: str  # hub validation split
    fields: tuple[str, str | None]  # hub fields for text_a, text_b
    directory: str  # GLUE download-script directory
    dev_file: str
    columns: tuple[str, str | None, str]  # TSV header names for text_a, text_b, label
    label_words: bool  # TSV labels are words (MNLI, QNLI, RTE), not integers


_SOURCES: dict[str, _Source] = {
    "cola": _Source(  # no header: columns by position
        "cola", "validation", ("sentence", None), "CoLA", "dev.tsv", ("3", None, "1"), False
    ),
    "sst2": _Source(
        "sst2", "validation", ("sentence", None), "SST-2", "dev.tsv", ("sentence", None, "label"),
        False,
    ),
    "mnli_m": _Source(
        "mnli", "validation_matched", ("premise", "hypothesis"), "MNLI", "dev_matched.tsv",
        ("sentence1", "sentence2", "gold_label"), True,
    ),
    "mnli_mm": _Source(
        "mnli", "validation_mismatched", ("premise", "hypothesis"), "MNLI", "dev_mismatched.tsv",
        ("sentence1", "sentence2", "gold_label"), True,
    ),
    "qnli": _Source(
        "qnli", "validation", ("question", "sentence"), "QNLI", "dev.tsv",
        ("question", "sentence", "label"), True,
    ),
    "rte": _Source(
        "rte", "validation", ("sentence1", "sentence2"), "RTE", "dev.tsv",
        ("sentence1", "sentence2", "label"), True,
    ),
    "mrpc": _Source(
        "mrpc", "validation", ("sentence1", "sentence2"), "MRPC", "dev.tsv",
        ("#1 String", "#2 String", "Quality"), False,
    ),
    "qqp": _Source(
        "qqp", "validation", ("question1", "question2"), "QQP", "dev.tsv",
        ("question1", "question2", "is_duplicate"), False,
    ),
    "stsb": _Source(
        "stsb", "validation", ("sentence1", "sentence2"), "STS-B", "dev.tsv",
        ("sentence1", "sentence2", "score"), False,
    ),
}  # fmt: skip

# CoLA's train/dev files have no header: source, label, original-label marker, sentence.
_COLA_COLUMNS = 4


def _task_key(task: str, known: dict[str, TaskSpec], prefix: str) -> str:
    """Accept "cola" or "glue/cola" (a spec's name); a clear error for anything else."""
    key = task.removeprefix(f"{prefix}/")
    if key not in known:
        raise TaskError(f"unknown {prefix} task {task!r}; known: {sorted(known)}")
    return key


# --- rows -> examples ------------------------------------------------------------------------


def _label(spec: TaskSpec, value: object, where: str) -> int | float:
    if not spec.labels:
        return float(value)  # type: ignore[arg-type]
    try:
        index = -1 if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        index = -1
    if not 0 <= index < len(spec.labels):
        raise ValueError(
            f"{where}: label {value!r} is not a class index 0..{len(spec.labels) - 1} of "
            f"{spec.labels} (hub test splits are unlabelled, -1: do not map them)"
        )
    return index


def examples_from_hub_rows(task: str, rows: Iterable[dict]) -> list[Example]:
    """Map rows in the hub's GLUE schema (e.g. {"premise", "hypothesis", "label"}) to Examples."""
    key = _task_key(task, GLUE_TASKS, "glue")
    spec, src = GLUE_TASKS[key], _SOURCES[key]
    field_a, field_b = src.fields
    out = []
    for i, row in enumerate(rows):
        where = f"{spec.name} row {i}"
        missing = [f for f in (field_a, field_b, "label") if f is not None and f not in row]
        if missing:
            raise ValueError(f"{where}: no field(s) {missing} (have {sorted(row)})")
        text_b = row[field_b] if field_b is not None else None
        out.append(Example(row[field_a], text_b, _label(spec, row["label"], where)))
    return out


# --- official TSV layout ---------------------------------------------------------------------


def _layout_hint(src: _Source) -> str:
    dev = "dev_matched.tsv, dev_mismatched.tsv" if src.directory == "MNLI" else "dev.tsv"
    return (
        f"expected the layout written by the GLUE download script: <data_dir>/{src.directory}/"
        f"{{train.tsv, {dev}}} (directories CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE)"
    )


def _read_tsv(path: Path, header: bool) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """(line number, row) pairs of a GLUE TSV; rows with the wrong column count are skipped.

    QUOTE_NONE because GLUE text holds unbalanced double quotes, which the default dialect would
    take as the start of a quoted field running on over later lines. utf-8-sig drops a BOM.
    """
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        names = next(reader, None) if header else None
        width = len(names) if names is not None else _COLA_COLUMNS
        rows, bad = [], 0
        for row in reader:
            if not row:
                continue  # blank line
            if len(row) == width:
                rows.append((reader.line_num, row))
            else:
                bad += 1
    if bad:
        warnings.warn(
            f"{path}: skipped {bad} malformed row(s) (expected {width} tab-separated columns)",
            stacklevel=4,
        )
    return names, rows


def _tsv_label(spec: TaskSpec, src: _Source, text: str, where: str) -> int | float:
    try:
        if not spec.labels:
            return float(text)
        index = spec.labels.index(text) if src.label_words else int(text)
        if not 0 <= index < len(spec.labels):
            raise ValueError
        return index
    except ValueError:
        expected = (
            "a number"
            if not spec.labels
            else (f"one of {spec.labels}" if src.label_words else "a class index")
        )
        raise ValueError(f"{where}: label {text!r} is not {expected}") from None


def _tsv_as_hub_rows(path: Path, key: str) -> list[dict]:
    """A GLUE TSV file rewritten as rows of the hub's schema."""
    spec, src = GLUE_TASKS[key], _SOURCES[key]
    if not path.is_file():
        raise FileNotFoundError(f"{spec.name}: no file {path}; {_layout_hint(src)}")
    names, rows = _read_tsv(path, header=key != "cola")
    if names is None:  # CoLA: positional columns
        index = {c: int(c) for c in src.columns if c is not None}
    else:
        missing = [c for c in src.columns if c is not None and c not in names]
        if missing:
            raise ValueError(f"{path}: header has no column(s) {missing} (header: {names})")
        index = {c: names.index(c) for c in src.columns if c is not None}

    col_a, col_b, col_label = src.columns
    field_a, field_b = src.fields
    out = []
    for line, row in rows:
        label = _tsv_label(spec, src, row[index[col_label]], f"{path}:{line}")
        hub = {field_a: row[index[col_a]], "label": label}
        if field_b is not None and col_b is not None:
            hub[field_b] = row[index[col_b]]
        out.append(hub)
    return out


def load_glue_dir(data_dir: Path | str, task: str) -> TaskData:
    """Load one GLUE task from the official TSV download (train and validation; test is empty)."""
    key = _task_key(task, GLUE_TASKS, "glue")
    src = _SOURCES[key]
    task_dir = Path(data_dir) / src.directory
    if not task_dir.is_dir():
        raise FileNotFoundError(f"glue/{key}: no directory {task_dir}; {_layout_hint(src)}")
    train = examples_from_hub_rows(key, _tsv_as_hub_rows(task_dir / "train.tsv", key))
    dev = examples_from_hub_rows(key, _tsv_as_hub_rows(task_dir / src.dev_file, key))
    return TaskData(GLUE_TASKS[key], train, dev)


# --- Hugging Face hub ------------------------------------------------------------------------


def _datasets_module(what: str) -> ModuleType:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            f"{what} needs the 'datasets' package: pip install 'budgetlm[hub]'"
        ) from e
    return datasets


def load_glue_hub(task: str, cache_dir: str | None = None) -> TaskData:
    """Load one GLUE task from the hub's `nyu-mll/glue` (train and validation; test is empty)."""
    key = _task_key(task, GLUE_TASKS, "glue")
    src = _SOURCES[key]
    datasets = _datasets_module(f"glue/{key} from the hub")
    ds = datasets.load_dataset(HUB_REPO, src.config, cache_dir=cache_dir)
    return TaskData(
        GLUE_TASKS[key],
        examples_from_hub_rows(key, ds["train"]),
        examples_from_hub_rows(key, ds[src.val_split]),
    )
