"""Does a verdict survive a ±5% error in the price of the arm's extra work?

An RST budget is only as fair as the cost table that prices each pass. Work that the arm and
the baseline both do at the same price per step (full training passes, AdamW steps) moves both
alike if its price is off; what can tilt a verdict is the arm's *extra work*: the part of its
charge the table priced differently from anything the baseline paid for. Defined from the runs'
own spending by purpose (``summary.json``'s ``spent_by_purpose``):

* every purpose the baseline spends nothing on (selection forwards of selective backprop and
  RHO-loss, Sophia's Hessian passes), and
* a purpose both spend on (``training``, ``optimizer``) when the arm's spend on it *per step*
  differs from the baseline's by more than 1%: its passes have other shapes (layer dropping
  and stacking train through fewer layers, selective backprop back-propagates a smaller batch,
  staged growth trains a smaller model) or its optimizer step is another (Lion, Sophia, Muon),
  so the table priced them at points the baseline never used. The whole spend on that purpose
  counts, not its difference to the baseline's: it is that price that could be wrong.

If that work cost a fraction ``e`` more, the same budget would have bought ``1 / (1 + e * s)``
of the work (``s``: the extra work's share of the arm's charge): the arm would have trained as
if its budget were ``B * 1 / (1 + e * s)``. The loss that costs is read off the baseline's
fitted power law at the arm's budget (``L(f B) - L(B)``, see ``compute_saved``) when there is
one, otherwise off the arm's own held-out curve near its end (the secant over the last 10% or
more of the budget spent: a schedule that has not decayed there yet, so a rougher guide). Then
the arm's losses are shifted by that much and the verdict is decided again, with the same test
and the same Holm family (the other tests unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from budgetlm.compare.analysis import stats
from budgetlm.compare.analysis.compute_saved import Curve

__all__ = [
    "ERROR",
    "ExtraWork",
    "Sensitivity",
    "curve_slope",
    "extra_work",
    "rejudge",
    "sensitivity",
    "shift_on_curve",
    "shift_on_fit",
    "work_factor",
]

ERROR = 0.05  # the price error a verdict is checked against
PER_STEP_TOLERANCE = 0.01  # spend per step within 1% of the baseline's: priced alike
CURVE_TAIL = 0.1  # the secant of a held-out curve spans at least its last 10%


@dataclass(frozen=True)
class ExtraWork:
    """The arm's spend that the cost table priced differently from the baseline's: its
    ``share`` of the arm's charge, and the ``purposes`` it was spent on."""

    share: float
    purposes: tuple[str, ...]


def extra_work(
    arm: Mapping[str, float],
    base: Mapping[str, float],
    arm_steps: float,
    base_steps: float,
    tolerance: float = PER_STEP_TOLERANCE,
) -> ExtraWork:
    """``arm`` and ``base``: mean charged spend per purpose (one budget unit); ``*_steps``: mean
    optimizer steps. See the module's docstring for the definition."""
    total = sum(v for v in arm.values() if v > 0)
    if total <= 0 or arm_steps <= 0 or base_steps <= 0:
        return ExtraWork(0.0, ())
    extra = []
    for purpose in sorted(arm):
        spend = arm[purpose]
        if spend <= 0:
            continue
        base_per_step = base.get(purpose, 0.0) / base_steps
        # The baseline does none of it, or does it at another price per step.
        if base_per_step <= 0 or abs(spend / arm_steps - base_per_step) > tolerance * base_per_step:
            extra.append(purpose)
    return ExtraWork(sum(arm[p] for p in extra) / total, tuple(extra))


def work_factor(share: float, error: float) -> float:
    """The fraction of its work the arm's budget buys if its extra work (``share`` of the
    charge) costs ``1 + error`` times as much: the budget is fixed, so everything shrinks."""
    return 1.0 / (1.0 + error * share)


def shift_on_fit(fit: Curve, amount: float, factor: float) -> float:
    """The loss change of training with ``factor`` times the budget ``amount``, on the
    baseline's fitted power law: positive when ``factor < 1`` (less work, higher loss)."""
    return fit.loss(amount * factor) - fit.loss(amount)


def curve_slope(curves: Sequence[Sequence[tuple[float, float]]]) -> float | None:
    """d(loss)/d(spent) near the end of held-out curves (one per seed, (spent, loss) points):
    per seed, the secant from the last point at or before ``(1 - CURVE_TAIL)`` of its spend to
    its last point; the mean over the seeds that have one (None when none does)."""
    slopes = []
    for curve in curves:
        points = sorted((float(x), float(y)) for x, y in curve)
        if len(points) < 2 or points[-1][0] <= 0:
            continue
        x1, y1 = points[-1]
        earlier = [p for p in points if p[0] <= (1 - CURVE_TAIL) * x1]
        if not earlier:
            continue
        x0, y0 = earlier[-1]
        if x1 > x0:
            slopes.append((y1 - y0) / (x1 - x0))
    return sum(slopes) / len(slopes) if slopes else None


def shift_on_curve(slope: float, amount: float, factor: float) -> float:
    """The loss change of ``factor`` times the budget, linear along the arm's own curve."""
    return slope * (factor - 1.0) * amount


@dataclass(frozen=True)
class Sensitivity:
    """A verdict re-decided with the arm's extra work priced ``1 ± error`` times.

    ``shift_up``/``shift_down``: the loss change when the extra work costs more/less;
    ``verdict_up``/``verdict_down``: the verdicts then; ``source``: where the loss change came
    from (``fit``: the baseline's power law, ``curve``: the arm's held-out curve, ``none``:
    no extra work, so nothing moves)."""

    verdict: str
    error: float
    work: ExtraWork
    source: str
    shift_up: float
    shift_down: float
    verdict_up: str
    verdict_down: str

    @property
    def flips_up(self) -> bool:
        return self.verdict_up != self.verdict

    @property
    def flips_down(self) -> bool:
        return self.verdict_down != self.verdict

    @property
    def label(self) -> str:
        """ "survives ±5%", "flips at +5%", "flips at −5%" or "flips at ±5%"."""
        pct = f"{100 * self.error:g}%"
        if self.flips_up and self.flips_down:
            return f"flips at ±{pct}"
        if self.flips_up:
            return f"flips at +{pct}"
        if self.flips_down:
            return f"flips at \u2212{pct}"
        return f"survives ±{pct}"


def sensitivity(
    verdict: str,
    work: ExtraWork,
    amount: float,
    rejudge: Callable[[float], str],
    *,
    fit: Curve | None = None,
    slope: float | None = None,
    error: float = ERROR,
) -> Sensitivity | None:
    """Re-decide ``verdict`` with the arm's extra ``work`` priced ``1 ± error`` times, at budget
    ``amount``; ``rejudge(shift)`` gives the verdict with the arm's losses ``shift`` higher.

    The loss change comes from ``fit`` when given, else from ``slope`` (see
    :func:`curve_slope`); None when the work moves the arm but neither is known."""
    if work.share == 0.0:
        return Sensitivity(verdict, error, work, "none", 0.0, 0.0, verdict, verdict)
    shifts = []
    for sign in (1.0, -1.0):
        factor = work_factor(work.share, sign * error)
        if fit is not None:
            shifts.append(shift_on_fit(fit, amount, factor))
        elif slope is not None and math.isfinite(slope):
            shifts.append(shift_on_curve(slope, amount, factor))
        else:
            return None
    up, down = shifts
    source = "fit" if fit is not None else "curve"
    return Sensitivity(verdict, error, work, source, up, down, rejudge(up), rejudge(down))


def rejudge(
    family: Sequence[stats.Comparison],
    index: int,
    arm: Mapping[int, float],
    base: Mapping[int, float],
    shift: float,
    *,
    test: str,
    confidence: float,
    alpha: float,
    correction: str,
    power: float = stats.POWER,
    seed: int = 0,
) -> str:
    """The verdict of ``family[index]`` (``arm`` against ``base``, seed -> loss) had the arm's
    losses all been ``shift`` higher: the same test, Holm over the same family with only this
    test's p changed."""
    c = family[index]
    shifted = {seed_: value + shift for seed_, value in arm.items()}
    (moved,) = stats.run_tests(
        {c.arm: shifted, c.baseline: base},
        c.baseline,
        test=test,
        confidence=confidence,
        lower_is_better=c.lower_is_better,
        seed=seed,
    )
    changed = [*family[:index], moved, *family[index + 1 :]]
    judged = stats.judge(changed, alpha=alpha, correction=correction, power=power)
    return judged[index].verdict
