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
    "MIN_BUDGETS",
    "RESAMPLES",
    "PowerLaw",
    "Saved",
    "SeedDraws",
    "compute_saved",
    "draw_seeds",
    "fit_power_law",
    "refit",
]

MIN_BUDGETS = 3  # three parameters: fewer budgets cannot pin the curve down
RESAMPLES = 1000
OK = "ok"
BETTER_THAN_RANGE = "better than range"
WORSE_THAN_RANGE = "worse than range"
_B_BOUNDS = (1e-6, 10.0)  # b > 0; 10 is far steeper than any training curve


@dataclass(frozen=True)
class PowerLaw:
    """``loss(B) = a * (B / scale)**(-b) + c``, fitted on budgets ``low`` to ``high``."""

    a: float
    b: float
    c: float
    scale: float
    low: float
    high: float

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
    start: PowerLaw | None = None,
) -> list[PowerLaw | None]:
    """The baseline refitted on each resample of ``draws`` (None where the fit failed)."""
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
    fit: PowerLaw,
    fits: Sequence[PowerLaw | None],
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
