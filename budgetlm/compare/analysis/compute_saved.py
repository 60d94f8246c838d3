"""Compute saved: the budget the baseline needs to reach an arm's loss, as a multiple of the
arm's budget.

With three or more budgets, the baseline's final held-out loss is fitted against the budget
with a power law and an offset, ``L(B) = a * (B / B_max)**(-b) + c`` (``scipy.optimize.
curve_fit`` on the judged seeds' points; ``a > 0``, ``b > 0``: loss falls with budget;
``0 <= c <= `` the lowest mean loss: the floor lies below every observation). Dividing by the
largest budget ``B_max`` keeps ``a`` in loss units whatever the budget's unit (steps or 1e15
FLOPs). An arm's mean loss ``L`` at budget ``B`` then converts to the baseline budget that
reaches it, ``B_base = B_max * ((L - c) / a)**(-1/b)``, and to the multiplier ``B_base / B``:
above 1 the arm saves compute (1.25x: the baseline needs 25% more budget for the same loss),
below 1 it wastes some.

A fit that misses the baseline's own points is not used: when the fitted loss at some budget lies
more than ``MAX_MISFIT_Z`` standard errors (of that budget's seed mean) from the observed mean,
the power law does not describe this baseline (early training, where the loss still falls
faster with each doubling, is the common case) and reading other losses off it would invent
savings: a method worse than the baseline at a budget could come out "1.02x". The curve is then
the baseline's means joined linearly in log budget (:class:`Interpolated`), which passes through
every point, so an arm is worth exactly 1x where it matches the baseline; the report names the
misfit and the curve it used instead.

Only losses inside the fitted range are converted: an arm better than the baseline at the
largest budget (or worse than at the smallest) is reported as outside the range, not
extrapolated. The interval is a percentile bootstrap over seeds: the seeds of each budget are
resampled (with a fixed-seed ``numpy.random.default_rng``), the baseline refitted and the arm's
resampled mean inverted on each refit. Where the arm ran the same seeds as the baseline, the
same draw is used for both (the pairing the tests use); fits that fail are skipped and counted.

Pure functions: numbers in, numbers out (the report gathers the numbers).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

__all__ = [
    "MAX_MISFIT_Z",
    "MIN_BUDGETS",
    "Curve",
    "Interpolated",
    "Misfit",
    "RESAMPLES",
    "PowerLaw",
    "Saved",
    "SeedDraws",
    "compute_saved",
    "draw_seeds",
    "fit_power_law",
    "interpolate",
    "refit",
    "worst_misfit",
]

MIN_BUDGETS = 3  # three parameters: fewer budgets cannot pin the curve down
RESAMPLES = 1000
OK = "ok"
BETTER_THAN_RANGE = "better than range"
WORSE_THAN_RANGE = "worse than range"
_B_BOUNDS = (1e-6, 10.0)  # b > 0; 10 is far steeper than any training curve
# A fit further than this many standard errors from a budget's seed mean misses the baseline;
# 3 keeps a curve that seed noise alone pushed off a point (p ~ 0.003 per budget).
MAX_MISFIT_Z = 3.0
_MIN_SE = 1e-6  # planted noiseless data: a residual of 1e-9 is a match, not a misfit


@dataclass(frozen=True)
class PowerLaw:
    """``loss(B) = a * (B / scale)**(-b) + c``, fitted on budgets ``low`` to ``high``."""

    a: float
    b: float
    c: float
    scale: float
    low: float
    high: float
    kind = "power law"

    def loss(self, amount: float) -> float:
        return self.a * (amount / self.scale) ** (-self.b) + self.c

    def amount_for(self, loss: float) -> float:
        """The budget at which the curve reaches ``loss``: inf at or below the floor ``c``."""
        if loss <= self.c:
            return math.inf
        # In logs: a nearly flat refit (tiny b) sends far-off losses to budgets beyond floats.
        log_amount = math.log(self.scale) - math.log((loss - self.c) / self.a) / self.b
        return math.exp(log_amount) if log_amount < 700.0 else math.inf

    @property
    def loss_range(self) -> tuple[float, float]:
        """The fitted losses at the largest and the smallest budget (best, worst)."""
        return self.loss(self.high), self.loss(self.low)


def _model(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * x ** (-b) + c


def _jacobian(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    # Analytic derivatives: curve_fit runs once per bootstrap resample, and finite differences
    # would more than double its time.
    xb = x ** (-b)
    return np.stack([xb, -a * xb * np.log(x), np.ones_like(x)], axis=1)


def fit_power_law(
    amounts: Sequence[float], losses: Sequence[float], start: PowerLaw | None = None
) -> PowerLaw | None:
    """Least-squares fit of ``a * (B / B_max)**(-b) + c`` to ``(amount, loss)`` points (one per
    run; repeated amounts are seeds of one budget); None when there are fewer than
    ``MIN_BUDGETS`` distinct budgets, the mean loss at the largest budget is not below the one
    at the smallest, the fit fails, or the fitted loss does not fall.
    ``start``: initial parameters (a previous fit)."""
    x = np.asarray(amounts, dtype=float)
    y = np.asarray(losses, dtype=float)
    if x.shape != y.shape or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None
    budgets = np.unique(x)
    if len(budgets) < MIN_BUDGETS or budgets[0] <= 0:
        return None
    # Least squares on every run equals least squares on each budget's mean weighted by its
    # number of runs (the within-budget spread is a constant): fewer points, same fit.
    means = np.array([y[x == b].mean() for b in budgets])
    if means[0] <= means[-1]:
        return None  # no lower loss at the largest budget: a falling curve would be invented
    counts = np.array([np.sum(x == b) for b in budgets], dtype=float)
    scale = float(budgets[-1])
    xs = budgets / scale
    floor = max(float(means.min()), 1e-12)
    lower, upper = [1e-12, _B_BOUNDS[0], 0.0], [np.inf, _B_BOUNDS[1], floor]
    if start is not None:
        p0 = [start.a, start.b, start.c]
    else:
        c0 = 0.5 * floor  # a guess inside the bounds; at x = 1 the model is a + c
        p0 = [max(means[-1] - c0, 1e-6), 0.5, c0]
    p0 = list(np.clip(p0, np.array(lower) + 1e-12, np.array(upper) - 1e-12 * floor))
    try:
        with warnings.catch_warnings():
            # With three budgets the fit is exactly determined: no covariance, which we do not
            # use (the interval comes from the bootstrap).
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(
                _model,
                xs,
                means,
                p0=p0,
                sigma=1.0 / np.sqrt(counts),
                bounds=(lower, upper),
                jac=_jacobian,
            )
    except (RuntimeError, ValueError):
        return None
    a, b, c = (float(v) for v in params)
    fit = PowerLaw(a, b, c, scale, float(budgets[0]), scale)
    best, worst = fit.loss_range
    if not all(math.isfinite(v) for v in (a, b, c)) or not worst - best > 1e-9 * abs(worst):
        return None  # flat: the loss does not fall with budget, nothing can be inverted
    return fit


@dataclass(frozen=True)
class Interpolated:
    """The baseline's mean loss per budget joined by straight lines in log budget.

    Used when the power law misses the baseline (see the module's docstring). Inside the range
    it passes through every mean. Outside, only bootstrap refits ever ask (the point estimate
    is never extrapolated): the end segments are extended, so a resampled arm mean just past a
    resampled range still gets a finite budget."""

    amounts: tuple[float, ...]  # increasing
    losses: tuple[float, ...]  # strictly decreasing
    kind = "interpolated"

    @property
    def low(self) -> float:
        return self.amounts[0]

    @property
    def high(self) -> float:
        return self.amounts[-1]

    @property
    def scale(self) -> float:
        return self.amounts[-1]

    @property
    def loss_range(self) -> tuple[float, float]:
        return self.losses[-1], self.losses[0]

    def _segment(self, index: int) -> tuple[float, float, float, float]:
        i = min(max(index, 0), len(self.amounts) - 2)
        return (
            math.log(self.amounts[i]),
            self.losses[i],
            math.log(self.amounts[i + 1]),
            self.losses[i + 1],
        )

    def loss(self, amount: float) -> float:
        t = math.log(amount)
        index = int(np.searchsorted(np.log(self.amounts), t)) - 1
        t0, y0, t1, y1 = self._segment(index)
        return y0 + (y1 - y0) * (t - t0) / (t1 - t0)

    def amount_for(self, loss: float) -> float:
        # Losses decrease: segment i holds losses[i] >= loss >= losses[i + 1], i.e. i + 1
        # losses lie above `loss` (counted on the reversed, increasing sequence).
        above = len(self.losses) - int(np.searchsorted(self.losses[::-1], loss, side="right"))
        t0, y0, t1, y1 = self._segment(above - 1)
        log_amount = t0 + (loss - y0) * (t1 - t0) / (y1 - y0)
        return math.exp(log_amount) if log_amount < 700.0 else math.inf


Curve = PowerLaw | Interpolated


def interpolate(amounts: Sequence[float], losses: Sequence[float]) -> Interpolated | None:
    """The per-budget means of ``(amount, loss)`` points joined in log budget; None unless
    there are two or more budgets and the mean loss falls strictly from each to the next."""
    x = np.asarray(amounts, dtype=float)
    y = np.asarray(losses, dtype=float)
    if x.shape != y.shape or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None
    budgets = np.unique(x)
    if len(budgets) < 2 or budgets[0] <= 0:
        return None
    means = [float(y[x == b].mean()) for b in budgets]
    if any(later >= earlier for earlier, later in zip(means, means[1:], strict=False)):
        return None
    return Interpolated(tuple(float(b) for b in budgets), tuple(means))


@dataclass(frozen=True)
class Misfit:
    """Where a curve lies furthest from the baseline's seed mean, in nats and standard errors."""

    amount: float
    residual: float  # fitted minus observed mean
    z: float  # |residual| / the standard error of that budget's mean


def worst_misfit(curve: Curve, base: Mapping[float, Mapping[int, float]]) -> Misfit | None:
    """The budget where ``curve`` misses the baseline's mean by the most standard errors (a
    budget with one seed has no standard error and is skipped); None when none can be judged."""
    worst = None
    for amount, seeds in base.items():
        values = np.array(list(seeds.values()), dtype=float)
        if len(values) < 2:
            continue
        se = max(float(values.std(ddof=1)) / math.sqrt(len(values)), _MIN_SE)
        residual = curve.loss(amount) - float(values.mean())
        misfit = Misfit(amount, residual, abs(residual) / se)
        if worst is None or misfit.z > worst.z:
            worst = misfit
    return worst


# -- the bootstrap over seeds --------------------------------------------------------------------


@dataclass(frozen=True)
class SeedDraws:
    """Resamples of one budget's seeds: ``ids[r]`` is resample r (seeds drawn from ``seeds``)."""

    seeds: tuple[int, ...]
    ids: np.ndarray  # shape (resamples, len(seeds))


def draw_seeds(
    seeds: Mapping[float, Sequence[int]], resamples: int = RESAMPLES, seed: int = 0
) -> dict[float, SeedDraws]:
    """Per budget amount, ``resamples`` draws with replacement of that budget's seeds; budgets
    are drawn in sorted order so the result depends only on the input and ``seed``."""
    rng = np.random.default_rng(seed)
    return {amount: _draw(seeds[amount], resamples, rng) for amount in sorted(seeds)}


def _draw(seeds: Sequence[int], resamples: int, rng: np.random.Generator) -> SeedDraws:
    pool = tuple(sorted(seeds))
    ids = np.asarray(pool)[rng.integers(0, len(pool), size=(resamples, len(pool)))]
    return SeedDraws(pool, ids)


def _resampled_means(values: Mapping[int, float], draw: SeedDraws) -> np.ndarray:
    """The mean of ``values`` (seed -> value) in each resample."""
    table = np.array([values[s] for s in draw.seeds], dtype=float)
    return table[np.searchsorted(draw.seeds, draw.ids)].mean(axis=1)


def refit(
    base: Mapping[float, Mapping[int, float]],
    draws: Mapping[float, SeedDraws],
    start: Curve | None = None,
) -> list[Curve | None]:
    """The baseline refitted on each resample of ``draws`` (None where the fit failed), with
    the kind of curve ``start`` is (a power law when None)."""
    amounts = sorted(draws)
    means = {a: _resampled_means(base[a], draws[a]) for a in amounts}
    counts = {a: len(draws[a].seeds) for a in amounts}
    resamples = len(next(iter(draws.values())).ids) if draws else 0
    fits = []
    for r in range(resamples):
        # Each budget's resampled mean, repeated as often as it has runs: the same weighting as
        # the fit on every run.
        xs = [a for a in amounts for _ in range(counts[a])]
        ys = [float(means[a][r]) for a in amounts for _ in range(counts[a])]
        if isinstance(start, Interpolated):
            fits.append(interpolate(xs, ys))
        else:
            fits.append(fit_power_law(xs, ys, start))
    return fits


@dataclass(frozen=True)
class Saved:
    """An arm's mean loss at one budget as baseline budget: ``multiplier`` (baseline budget
    needed / the arm's budget) with its percentile interval, or why there is none.

    ``status``: ``ok``, ``better than range`` (below the fit at the largest budget),
    ``worse than range`` (above it at the smallest). ``failed`` of ``resamples`` refits
    failed and were skipped."""

    status: str
    multiplier: float
    ci_low: float
    ci_high: float
    needed: float  # the baseline budget that reaches the arm's loss (nan outside the range)
    resamples: int
    failed: int


def compute_saved(
    fit: Curve,
    fits: Sequence[Curve | None],
    draws: Mapping[float, SeedDraws],
    arm: Mapping[int, float],
    amount: float,
    confidence: float = 0.95,
    seed: int = 0,
) -> Saved:
    """The compute-saved multiplier of an arm whose runs at budget ``amount`` ended at
    ``arm`` (seed -> loss), on the baseline's ``fit``, with the bootstrap interval from the
    baseline's refits ``fits`` on ``draws`` (see :func:`draw_seeds`, :func:`refit`).

    The arm's seeds are resampled with the baseline's draw at ``amount`` when both ran the same
    seeds there, independently (from ``seed``) otherwise."""
    mean = float(np.mean(list(arm.values())))
    best, worst = fit.loss_range
    nan = math.nan
    if mean < best:
        return Saved(BETTER_THAN_RANGE, nan, nan, nan, nan, len(fits), 0)
    if mean > worst:
        return Saved(WORSE_THAN_RANGE, nan, nan, nan, nan, len(fits), 0)
    needed = fit.amount_for(mean)
    base_draw = draws.get(amount)
    if base_draw is not None and base_draw.seeds == tuple(sorted(arm)):
        arm_draw = base_draw  # the same seeds: the same resample for both
    else:
        arm_draw = _draw(list(arm), len(fits), np.random.default_rng(seed))
    means = _resampled_means(arm, arm_draw)
    multipliers = [
        f.amount_for(float(m)) / amount for f, m in zip(fits, means, strict=True) if f is not None
    ]
    failed = len(fits) - len(multipliers)
    low = high = nan
    if multipliers:
        tail = 100 * (1 - confidence) / 2
        # inverted_cdf picks resampled values rather than interpolating: an arm at or below a
        # refit's floor needs an infinite budget, and inf - inf would make the interval nan.
        low, high = (
            float(v) for v in np.percentile(multipliers, [tail, 100 - tail], method="inverted_cdf")
        )
    return Saved(OK, needed / amount, low, high, needed, len(fits), failed)
