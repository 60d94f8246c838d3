"""ROUGE-L of generated outputs, as Super-Natural Instructions reports it.

Matched against SNI's official metric (allenai/natural-instructions `eval/automatic`, the
`compute_metrics` that Tk-Instruct and nanoT5 use): `rouge_score.RougeScorer(['rougeL'],
use_stemmer=True)` (its default tokenizer: lower-cased, non-alphanumerics dropped, Porter
stemming), per instance the best F-measure over the instance's references (`metric_max_over_
ground_truths`), no further normalisation of the text, x100, then the mean over a task's
instances; the suite figure is the mean over tasks (SNI's per-task grouping). The cross-lingual
tokenizer SNI uses for its non-English tasks is not reproduced: the English track only.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from functools import lru_cache

METRIC = "rougeL"


@lru_cache(maxsize=1)
def _scorer():  # noqa: ANN202 - rouge_score has no type hints
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([METRIC], use_stemmer=True)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L F-measure x100 of one prediction: the best over its references (0 for none)."""
    scorer = _scorer()
    best = 0.0
    for reference in references:
        best = max(best, scorer.score(target=reference, prediction=prediction)[METRIC].fmeasure)
    return 100.0 * best


def task_rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """The mean ROUGE-L (x100) over one task's instances."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} instances")
    if not predictions:
        raise ValueError("no instances to score")
    return statistics.mean(rouge_l(p, r) for p, r in zip(predictions, references, strict=True))


def suite_rouge_l(
    predictions: Mapping[str, Sequence[str]], references: Mapping[str, Sequence[Sequence[str]]]
) -> tuple[dict[str, float], float]:
    """Per task its mean ROUGE-L, and their average over tasks (each task counts once)."""
    per_task = {t: task_rouge_l(predictions[t], references[t]) for t in references}
    if not per_task:
        raise ValueError("no tasks to score")
    return per_task, statistics.mean(per_task.values())


__all__ = ["METRIC", "rouge_l", "suite_rouge_l", "task_rouge_l"]
