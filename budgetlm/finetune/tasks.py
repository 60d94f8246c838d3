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
    """An unknown suite or task, or a task with unusable data."""


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

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
        }
