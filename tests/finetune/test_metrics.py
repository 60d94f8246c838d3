"""Metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from budgetlm.finetune.metrics import (
    METRICS,
    accuracy,
    f1,
    macro_f1,
    mcc,
    pearson,
    score,
    spearman,
)


def test_accuracy():
    assert accuracy([1, 0, 2, 2], [1, 1, 2, 0]) == 0.5


def test_binary_f1():
    preds = [1, 1, 0, 1, 0, 0]
    labels = [1, 0, 1, 1, 0, 1]
    # tp = 2 (idx 0, 3), fp = 1 (idx 1), fn = 2 (idx 2, 5)
    # precision 2/3, recall 2/4 -> F1 = 2 * (2/3 * 1/2) / (2/3 + 1/2) = 4/7 = 2tp/(2tp+fp+fn)
    assert f1(preds, labels) == pytest.approx(4 / 7)
    # class 0 as positive: tp = 1 (idx 4), fp = 2 (idx 2, 5), fn = 1 (idx 1) -> 2/(2+2+1)
    assert f1(preds, labels, positive=0) == pytest.approx(2 / 5)
    assert f1([0, 0], [0, 0]) == 0.0  # positive class neither predicted nor present


def test_macro_f1_three_classes():
    preds = [0, 0, 1, 1, 2, 2, 2]
    labels = [0, 1, 1, 1, 2, 0, 2]
    # class 0: tp 1 (idx 0), fp 1 (idx 1), fn 1 (idx 5)      -> 2/(2+1+1) = 1/2
    # class 1: tp 2 (idx 2, 3), fp 0, fn 1 (idx 1)           -> 4/(4+0+1) = 4/5
    # class 2: tp 2 (idx 4, 6), fp 1 (idx 5), fn 0           -> 4/(4+1+0) = 4/5
    assert macro_f1(preds, labels) == pytest.approx((1 / 2 + 4 / 5 + 4 / 5) / 3)
    # a class only ever predicted (3) still counts, with F1 0
    assert macro_f1([0, 3], [0, 0]) == pytest.approx((2 / 3 + 0) / 2)


def test_mcc_by_hand():
    preds = [1, 1, 1, 0, 0, 0, 0, 1]
    labels = [1, 1, 0, 0, 0, 1, 0, 1]
    # tp 3 (idx 0, 1, 7), tn 3 (idx 3, 4, 6), fp 1 (idx 2), fn 1 (idx 5)
    # (3*3 - 1*1) / sqrt((3+1)(3+1)(3+1)(3+1)) = 8 / 16 = 0.5
    assert mcc(preds, labels) == pytest.approx(0.5)
    assert mcc(labels, labels) == pytest.approx(1.0)
    assert mcc([1 - v for v in labels], labels) == pytest.approx(-1.0)


def test_mcc_undefined_is_zero():
    assert mcc([1, 1, 1], [0, 1, 0]) == 0.0  # constant prediction: tn + fn = 0
    assert mcc([0, 1, 0], [1, 1, 1]) == 0.0  # one label class only
    with pytest.raises(ValueError, match="binary"):
        mcc([0, 2], [0, 1])


def test_pearson_by_hand():
    x, y = [1, 2, 3, 4], [2, 1, 4, 3]
    # means 2.5, 2.5; deviations x: -1.5 -0.5 0.5 1.5, y: -0.5 -1.5 1.5 0.5
    # sum dx*dy = 0.75 + 0.75 + 0.75 + 0.75 = 3; sum dx^2 = sum dy^2 = 5 -> 3/5
    assert pearson(x, y) == pytest.approx(0.6)
    assert pearson([1, 2, 3], [5, 5, 5]) == 0.0  # constant side: undefined -> 0


def test_spearman_with_ties():
    x = [10, 20, 20, 30]  # ranks 1, 2.5, 2.5, 4
    y = [1, 3, 2, 4]  # ranks 1, 3, 2, 4
    # both rank means 2.5; dx: -1.5 0 0 1.5, dy: -1.5 0.5 -0.5 1.5
    # sum dx*dy = 2.25 + 0 + 0 + 2.25 = 4.5; sum dx^2 = 4.5, sum dy^2 = 5 -> 4.5/sqrt(22.5)
    assert spearman(x, y) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 2, 3], [1, 4, 9]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman(np.array([3.0, 1.0]), np.array([0.5, 0.9])) == pytest.approx(-1.0)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_bad_input_raises(name):
    with pytest.raises(ValueError, match="2 predictions but 3 labels"):
        METRICS[name]([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        METRICS[name]([], [])


def test_score_and_names():
    assert set(METRICS) == {"accuracy", "f1", "macro_f1", "mcc", "pearson", "spearman"}
    out = score(("f1", "accuracy"), [1, 0, 1, 1], [1, 0, 0, 1])
    assert out == {"f1": pytest.approx(0.8), "accuracy": 0.75}  # f1: 2*2/(4+1+0)
    assert all(type(v) is float for v in out.values())
    with pytest.raises(ValueError, match="unknown metric"):
        score(["bleu"], [1], [1])
    with pytest.raises(ValueError, match="non-finite"):
        pearson([1.0, float("nan")], [1.0, 2.0])
