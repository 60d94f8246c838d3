"""GLUE: task specs, and loaders from the official TSV download or from the Hugging Face hub.

Both loaders go through one row mapping (`examples_from_hub_rows`): the TSV loader first
rewrites each TSV row into the hub's schema, so the two sources cannot disagree on which field
is text_a or which integer a label word gets. Label order is the hub's integer order throughout.

GLUE test labels are not public, so `TaskData.test` is left empty; report on validation.
WNLI is left out, as in most BERT-era comparisons (its dev set is adversarial to train).
"""

from __future__ import annotations

import csv
import math
import operator
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from budgetlm.finetune.tasks import (
    CLASSIFICATION,
    REGRESSION,
    DroppedRowsWarning,
    Example,
    MissingPackageError,
    TaskData,
    TaskError,
    TaskFileError,
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
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not math.isfinite(number):
            raise TaskError(f"{where}: label {value!r} is not a finite number")
        return number
    try:
        index = -1 if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        index = -1
    if not 0 <= index < len(spec.labels):
        raise TaskError(
            f"{where}: label {value!r} is not a class index 0..{len(spec.labels) - 1} of "
            f"{spec.labels} (hub test splits are unlabelled, -1: do not map them)"
        )
    return index


def _text(row: dict, name: str, where: str) -> str:
    value = row[name]
    if not isinstance(value, str):
        raise TaskError(f"{where}: field {name!r} is {value!r}, not text")
    return value


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
            raise TaskError(f"{where}: no field(s) {missing} (have {sorted(row)})")
        text_b = _text(row, field_b, where) if field_b is not None else None
        out.append(Example(_text(row, field_a, where), text_b, _label(spec, row["label"], where)))
    return out


# --- official TSV layout ---------------------------------------------------------------------


def _layout_hint(src: _Source) -> str:
    dev = "dev_matched.tsv, dev_mismatched.tsv" if src.directory == "MNLI" else "dev.tsv"
    return (
        f"expected the layout written by the GLUE download script: <data_dir>/{src.directory}/"
        f"{{train.tsv, {dev}}} (directories CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE)"
    )


@dataclass
class _Tsv:
    """One GLUE TSV file as read: its header (None for CoLA), well-formed rows with their line
    numbers, and the line numbers of the rows skipped for a wrong column count."""

    path: Path
    names: list[str] | None
    width: int
    rows: list[tuple[int, list[str]]]
    bad: list[int]

    def dropped_reason(self) -> str:
        lines = ", ".join(map(str, self.bad[:5])) + (", ..." if len(self.bad) > 5 else "")
        what = "the header's" if self.names is not None else "CoLA's"
        return (
            f"{len(self.bad)} of {len(self.bad) + len(self.rows)} rows of {self.path} do not have "
            f"{what} {self.width} tab-separated columns (line {lines})"
        )


def _read_tsv(path: Path, header: bool) -> _Tsv:
    """A GLUE TSV file; rows with the wrong column count are skipped, counted and warned about.

    QUOTE_NONE because GLUE text holds unbalanced double quotes, which the default dialect would
    take as the start of a quoted field running on over later lines. utf-8-sig drops a BOM.
    Unreadable files (not UTF-8, a NUL byte, no permission) raise a TaskError naming the file.
    """
    line = 0
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            names = None
            if header:
                names = next((row for row in reader if any(c.strip() for c in row)), None)
                if names is None:
                    raise TaskError(
                        f"{path}: the file is empty (expected a header line naming the columns, "
                        "then one example per line)"
                    )
            width = len(names) if names is not None else _COLA_COLUMNS
            rows, bad = [], []
            for row in reader:
                line = reader.line_num
                if not any(c.strip() for c in row):
                    continue  # blank line
                if len(row) == width:
                    rows.append((line, row))
                else:
                    bad.append(line)
    except UnicodeDecodeError as e:
        raise TaskError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise TaskError(f"{path}:{line + 1}: cannot read the row ({e})") from None
    except OSError as e:
        raise TaskError(f"{path}: cannot read the file ({e.strerror or e})") from None
    tsv = _Tsv(path, names, width, rows, bad)
    if bad:
        warnings.warn(
            f"{path}: skipped {len(bad)} malformed row(s) (expected {width} tab-separated "
            f"columns; line {', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''})",
            DroppedRowsWarning,
            stacklevel=4,
        )
    return tsv


def _tsv_label(spec: TaskSpec, src: _Source, text: str, where: str) -> int | float:
    text = text.strip()
    try:
        if not spec.labels:
            number = float(text)
            if not math.isfinite(number):
                raise ValueError
            return number
        index = spec.labels.index(text) if src.label_words else int(text)
        if not 0 <= index < len(spec.labels):
            raise ValueError
        return index
    except ValueError:
        expected = (
            "a finite number"
            if not spec.labels
            else (
                f"one of {spec.labels}"
                if src.label_words
                else f"a class index 0..{len(spec.labels) - 1} ({', '.join(spec.labels)})"
            )
        )
        raise TaskError(f"{where}: label {text!r} is not {expected} ({spec.name})") from None


def _tsv_as_hub_rows(path: Path, key: str) -> tuple[list[dict], _Tsv]:
    """A GLUE TSV file rewritten as rows of the hub's schema, and the file as read."""
    spec, src = GLUE_TASKS[key], _SOURCES[key]
    if not path.is_file():
        raise TaskFileError(f"{spec.name}: no file {path}; {_layout_hint(src)}")
    tsv = _read_tsv(path, header=key != "cola")
    names = tsv.names
    if names is None:  # CoLA: positional columns
        index = {c: int(c) for c in src.columns if c is not None}
    else:
        needed = [c for c in src.columns if c is not None]
        missing = [c for c in needed if c not in names]
        if missing:
            raise TaskError(
                f"{path}:1: the header has no column(s) {missing}; {spec.name} needs {needed} "
                f"(header: {names})"
            )
        index = {c: names.index(c) for c in needed}
    if not tsv.rows:
        why = f"; {tsv.dropped_reason()}" if tsv.bad else ""
        raise TaskError(f"{path}: no examples{why}")

    col_a, col_b, col_label = src.columns
    field_a, field_b = src.fields
    out = []
    for line, row in tsv.rows:
        label = _tsv_label(spec, src, row[index[col_label]], f"{path}:{line}")
        hub = {field_a: row[index[col_a]], "label": label}
        if field_b is not None and col_b is not None:
            hub[field_b] = row[index[col_b]]
        out.append(hub)
    return out, tsv


def load_glue_dir(data_dir: Path | str, task: str) -> TaskData:
    """Load one GLUE task from the official TSV download (train and validation; test is empty).

    Every problem raises a TaskError (a TaskFileError for a missing folder or file) naming the
    file and line; rows with the wrong column count are skipped, counted in `TaskData.dropped`
    and warned about (`DroppedRowsWarning`)."""
    key = _task_key(task, GLUE_TASKS, "glue")
    src = _SOURCES[key]
    if not Path(data_dir).is_dir():
        raise TaskFileError(f"glue/{key}: the data folder {data_dir} does not exist")
    task_dir = Path(data_dir) / src.directory
    if not task_dir.is_dir():
        raise TaskFileError(f"glue/{key}: no directory {task_dir}; {_layout_hint(src)}")
    data = TaskData(GLUE_TASKS[key], [], [], source=str(task_dir))
    for split, name in (("train", "train.tsv"), ("validation", src.dev_file)):
        rows, tsv = _tsv_as_hub_rows(task_dir / name, key)
        setattr(data, split, examples_from_hub_rows(key, rows))
        if tsv.bad:
            data.dropped[split] = len(tsv.bad)
            data.dropped_reasons[split] = tsv.dropped_reason()
    return data


# --- Hugging Face hub ------------------------------------------------------------------------


def _datasets_module(what: str) -> ModuleType:
    try:
        import datasets
    except ImportError as e:
        raise MissingPackageError(
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
        source=f"hub:{HUB_REPO}/{src.config}",
    )
