"""Scores for downstream tasks, in plain numpy so evaluation needs no scikit-learn or scipy.

Which task reports what (the GLUE / SuperGLUE conventions):

- accuracy: SST-2, MNLI, QNLI, RTE, BoolQ, COPA, WiC, WSC; also reported for MRPC, QQP, CB
- f1 (binary, positive class 1): MRPC, QQP
- macro_f1: CB (three classes, very unbalanced, so accuracy alone flatters a majority guess)
- mcc: CoLA (unbalanced; Matthews correlation is 0 for any constant guess)
- pearson, spearman: STS-B (regression on a 0-5 similarity score)

Every function takes predictions first and gold labels second, returns a Python float and raises
ValueError on empty input or when the two lengths differ. Undefined correlations (a constant
prediction, say) score 0.0 rather than NaN so that a degenerate model does not poison an average.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

Values = Sequence[float] | np.ndarray


def _pair(preds: Values, labels: Values) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(preds), np.asarray(labels)
    if p.ndim != 1 or y.ndim != 1:
        raise ValueError(f"expected 1-D predictions and labels, got shapes {p.shape}, {y.shape}")
    if len(p) != len(y):
        raise ValueError(f"{len(p)} predictions but {len(y)} labels")
    if len(p) == 0:
        raise ValueError("cannot score an empty set of predictions")
    return p, y


def _finite(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, y = p.astype(np.float64), y.astype(np.float64)
    if not (np.isfinite(p).all() and np.isfinite(y).all()):
        raise ValueError("correlation of non-finite values (NaN or inf) is undefined")
    return p, y


def accuracy(preds: Values, labels: Values) -> float:
    """Fraction of predictions equal to the label."""
    p, y = _pair(preds, labels)
    return float(np.mean(p == y))


def _f1_of(p: np.ndarray, y: np.ndarray, positive) -> float:
    tp = int(np.sum((p == positive) & (y == positive)))
    fp = int(np.sum((p == positive) & (y != positive)))
    fn = int(np.sum((p != positive) & (y == positive)))
    # 2PR/(P+R) simplifies to 2tp/(2tp+fp+fn); 0 when the class is neither predicted nor present.
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def f1(preds: Values, labels: Values, positive: int = 1) -> float:
    """Binary F1 of the `positive` class (MRPC: equivalent, QQP: duplicate)."""
    p, y = _pair(preds, labels)
    return float(_f1_of(p, y, positive))


def macro_f1(preds: Values, labels: Values) -> float:
    """Unweighted mean of per-class F1 over every class seen in labels or predictions (CB)."""
    p, y = _pair(preds, labels)
    classes = np.union1d(np.unique(p), np.unique(y))
    return float(np.mean([_f1_of(p, y, c) for c in classes]))


def mcc(preds: Values, labels: Values) -> float:
    """Matthews correlation for 0/1 labels (CoLA); 0.0 when a confusion-matrix margin is empty."""
    p, y = _pair(preds, labels)
    for name, v in (("predictions", p), ("labels", y)):
        if not np.isin(v, (0, 1)).all():
            raise ValueError(f"mcc is binary: {name} must be 0 or 1, got {sorted(set(v.tolist()))}")
    tp = float(np.sum((p == 1) & (y == 1)))
    tn = float(np.sum((p == 0) & (y == 0)))
    fp = float(np.sum((p == 1) & (y == 0)))
    fn = float(np.sum((p == 0) & (y == 1)))
    denom = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return float((tp * tn - fp * fn) / np.sqrt(denom)) if denom else 0.0


def pearson(x: Values, y: Values) -> float:
    """Pearson correlation (STS-B); 0.0 when either side is constant."""
    a, b = _finite(*_pair(x, y))
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / denom) if denom > 0 else 0.0


def _average_ranks(v: np.ndarray) -> np.ndarray:
    # 1-based ranks; tied values share the mean of the ranks they occupy.
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    first = last - counts + 1
    return ((first + last) / 2.0)[inverse.reshape(-1)]


def spearman(x: Values, y: Values) -> float:
    """Spearman rank correlation with average ranks for ties (STS-B)."""
    a, b = _finite(*_pair(x, y))
    return pearson(_average_ranks(a), _average_ranks(b))


METRICS: dict[str, Callable[[Values, Values], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
}


def score(metric_names: Iterable[str], preds: Values, labels: Values) -> dict[str, float]:
    """Every named metric on one set of predictions, e.g. a TaskSpec's `metrics`."""
    names = list(metric_names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    return {n: METRICS[n](preds, labels) for n in names}
