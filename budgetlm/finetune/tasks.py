"""What a downstream task is: its examples, its kind, its labels and how it is scored.

Every loader (GLUE, SuperGLUE, the offline suite) turns its source into `TaskData`; the
fine-tuning code only ever sees this. Texts stay strings here: each model family encodes them
its own way (BERT: [CLS] a [SEP] b [SEP]; GPT: a, separator, b, scored at the last token; T5:
"task: a b" -> label word).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from budgetlm.errors import UserError

CLASSIFICATION, REGRESSION, MULTIPLE_CHOICE = "classification", "regression", "multiple_choice"


class TaskError(UserError, ValueError):
    """An unknown suite or task, or a task with unusable data (exit 2: nothing was trained)."""


class TaskFileError(TaskError, FileNotFoundError):
    """A task's folder or file is missing (still a FileNotFoundError for older callers)."""


class MissingPackageError(TaskError, ImportError):
    """A task source needs an optional package that is not installed."""


class DroppedRowsWarning(UserWarning):
    """A loader skipped malformed rows; `TaskData.dropped` counts them per split."""


# A split of which more than this share of rows is malformed is refused, not trained on: a file
# that loses that much is more likely the wrong file or a broken export than a few stray rows.
MAX_DROPPED = 0.10


@dataclass(frozen=True)
class Example:
    """One labelled example. `label` is a class index, or a float for regression; for multiple
    choice it indexes `choices` (each choice is scored as a continuation of text_a)."""

    text_a: str
    text_b: str | None
    label: int | float
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str  # "glue/cola", "offline/rotten_tomatoes"
    kind: str  # classification | regression | multiple_choice
    labels: tuple[str, ...]  # class names as words (T5 generates them); () for regression
    metrics: tuple[str, ...]  # every metric reported, e.g. ("f1", "accuracy")
    main_metric: str  # the one that enters the suite average
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in (CLASSIFICATION, REGRESSION, MULTIPLE_CHOICE):
            raise ValueError(f"{self.name}: unknown task kind {self.kind!r}")
        if self.main_metric not in self.metrics:
            raise ValueError(f"{self.name}: main metric {self.main_metric!r} not in {self.metrics}")
        if self.kind == CLASSIFICATION and len(self.labels) < 2:
            raise ValueError(f"{self.name}: a classification task needs at least two labels")

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == REGRESSION else len(self.labels) or 2


@dataclass
class TaskData:
    spec: TaskSpec
    train: list[Example]
    validation: list[Example]
    test: list[Example] = field(default_factory=list)  # with labels only where public
    # split -> rows a loader skipped as malformed, and why (only splits that lost rows)
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_reasons: dict[str, str] = field(default_factory=dict)
    source: str = ""  # where the data came from: a folder, "hub:<repo>", a package

    def dropped_counts(self) -> dict[str, int]:
        """Skipped rows of the train and validation splits (0 where none)."""
        return {split: self.dropped.get(split, 0) for split in ("train", "validation")}

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
        }
