"""Held-out loss curves of an arm's seeds, on the axis its budget is measured in."""

from __future__ import annotations

import math

from budgetlm.budget.clock import Budget
from budgetlm.compare.analysis.results import CellResult

# The eval-record key that measures each budget unit's spending, and its axis label.
CURVE_KEY = {
    "rst": "rst_s",
    "seconds": "wall_s",
    "steps": "step",
    "tokens": "tokens",
    "flops": "flops",
}
_LABEL = {
    "rst": "reference-system seconds spent",
    "seconds": "wall seconds spent",
    "steps": "optimizer steps",
    "tokens": "tokens",
    "flops": "FLOPs",
}


def curve_unit(budget: str) -> tuple[str, str]:
    """The eval-record key that measures a budget's spending, and its axis label."""
    unit = Budget.parse(budget).unit
    return CURVE_KEY[unit], _LABEL[unit]


def seed_band(
    cells: list[CellResult], key: str
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Held-out loss curves of the seeds on the x of the first seed: mean, min and max.

    Evaluations happen at the same budget fractions in every seed, but spending per step
    differs slightly, so the other seeds are interpolated onto the first seed's x."""
    curves = []
    for c in cells:
        pts = [(r.get(key), r.get("val_loss")) for r in c.curve]
        pts = [(float(x), float(y)) for x, y in pts if x is not None and y is not None]
        if pts:
            curves.append(sorted(pts))
    if not curves:
        return [], [], [], []
    xs = [x for x, _ in curves[0]]
    rows = [[_interp(curve, x) for curve in curves] for x in xs]
    mean = [_nanmean(r) for r in rows]
    lo = [min((v for v in r if not math.isnan(v)), default=math.nan) for r in rows]
    hi = [max((v for v in r if not math.isnan(v)), default=math.nan) for r in rows]
    return xs, mean, lo, hi


def _interp(curve: list[tuple[float, float]], x: float) -> float:
    if x < curve[0][0] or x > curve[-1][0]:
        return math.nan
    for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return curve[-1][1]


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan
