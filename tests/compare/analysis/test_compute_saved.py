"""compute_saved: the baseline's power-law fit, its inversion, and the bootstrap over seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from budgetlm.compare.analysis.compute_saved import (
    BETTER_THAN_RANGE,
    MAX_MISFIT_Z,
    OK,
    WORSE_THAN_RANGE,
    Interpolated,
    PowerLaw,
    compute_saved,
    draw_seeds,
    fit_power_law,
    interpolate,
    refit,
    worst_misfit,
)

from ..planted import LAW, LAW_SCALE, SEED_EFFECT, law

AMOUNTS = (15.0, 30.0, 60.0, 120.0)
SEEDS = (1, 2, 3, 4)


def planted_base(noise: float = 0.002) -> dict[float, dict[int, float]]:
    """The baseline at four budgets: the law, each seed's shared luck, a little noise."""
    rng = np.random.default_rng(3)
    return {
        a: {s: law(a) + SEED_EFFECT[s] + noise * rng.standard_normal() for s in SEEDS}
        for a in AMOUNTS
    }


def points(base: dict[float, dict[int, float]]) -> tuple[list[float], list[float]]:
    xs = [a for a, seeds in base.items() for _ in seeds]
    ys = [v for seeds in base.values() for v in seeds.values()]
    return xs, ys


def test_the_fit_recovers_a_planted_power_law():
    xs = [a for a in AMOUNTS for _ in range(3)]
    ys = [law(a) for a in xs]
    fit = fit_power_law(xs, ys)
    assert (fit.a, fit.b, fit.c) == pytest.approx(LAW, rel=1e-5)
    assert (fit.scale, fit.low, fit.high) == (LAW_SCALE, 15.0, 120.0)
    assert fit.loss_range == pytest.approx((law(120.0), law(15.0)))
    # The inverse: the budget at which the curve reaches a loss.
    assert fit.amount_for(law(45.0)) == pytest.approx(45.0, rel=1e-6)
    assert fit.amount_for(fit.c) == math.inf


def test_the_fit_needs_three_budgets_and_a_falling_loss():
    assert fit_power_law([10, 10, 20, 20], [5.0, 5.1, 4.0, 4.1]) is None  # two budgets
    assert fit_power_law([10, 20, 40], [4.0, 4.5, 5.0]) is None  # loss rises with budget
    assert fit_power_law([10, 20, 40], [4.0, 4.0, 4.0]) is None  # flat
    assert fit_power_law([10, 20, 40], [5.0, float("nan"), 4.0]) is None


def test_inverting_by_hand():
    fit = PowerLaw(a=2.0, b=0.5, c=3.0, scale=100.0, low=25.0, high=100.0)
    # loss(B) = 2 (B / 100)^-0.5 + 3: loss(25) = 2 * 2 + 3 = 7, loss(100) = 5.
    assert fit.loss(25.0) == 7.0 and fit.loss(100.0) == 5.0
    # 6 = 2 (B / 100)^-0.5 + 3 -> (B / 100)^-0.5 = 1.5 -> B = 100 / 2.25 = 44.44...
    assert fit.amount_for(6.0) == pytest.approx(100 / 2.25)


def test_an_arm_worth_08x_its_budget_is_recovered_with_an_interval_that_covers_it():
    base = planted_base()
    fit = fit_power_law(*points(base))
    draws = draw_seeds({a: list(s) for a, s in base.items()}, resamples=400)
    fits = refit(base, draws, start=fit)
    rng = np.random.default_rng(7)
    for amount in (30.0, 60.0, 120.0):
        arm = {s: law(0.8 * amount) + SEED_EFFECT[s] + 0.002 * rng.standard_normal() for s in SEEDS}
        saved = compute_saved(fit, fits, draws, arm, amount)
        assert saved.status == OK
        assert saved.multiplier == pytest.approx(0.8, abs=0.03)
        assert saved.ci_low <= 0.8 <= saved.ci_high, saved
        assert saved.ci_high - saved.ci_low < 0.15
        assert saved.needed == pytest.approx(saved.multiplier * amount)
        assert (saved.resamples, saved.failed) == (400, 0)
    # Deterministic: the same numbers give the same interval.
    again = compute_saved(fit, refit(base, draws, start=fit), draws, arm, 120.0)
    assert again == saved


def test_losses_outside_the_fitted_range_are_not_extrapolated():
    base = planted_base()
    fit = fit_power_law(*points(base))
    draws = draw_seeds({a: list(s) for a, s in base.items()}, resamples=50)
    fits = refit(base, draws, start=fit)
    better = {s: law(240.0) for s in SEEDS}  # what the baseline reaches only beyond 120
    worse = {s: law(10.0) for s in SEEDS}  # worse than the baseline at its smallest budget
    assert compute_saved(fit, fits, draws, better, 120.0).status == BETTER_THAN_RANGE
    assert compute_saved(fit, fits, draws, worse, 15.0).status == WORSE_THAN_RANGE
    assert math.isnan(compute_saved(fit, fits, draws, better, 120.0).multiplier)


def test_failed_refits_are_skipped_and_counted():
    # Two seeds per budget that disagree about the trend: some resamples make the loss rise
    # with budget, where no falling power law fits.
    base = {10.0: {1: 5.0, 2: 4.0}, 20.0: {1: 4.6, 2: 4.4}, 40.0: {1: 4.5, 2: 4.1}}
    fit = fit_power_law(*points(base))
    assert fit is not None
    draws = draw_seeds({a: list(s) for a, s in base.items()}, resamples=200)
    fits = refit(base, draws, start=fit)
    failed = sum(f is None for f in fits)
    assert 0 < failed < 200
    saved = compute_saved(fit, fits, draws, {1: 4.45, 2: 4.35}, 20.0)
    assert saved.failed == failed and saved.resamples == 200
    assert saved.status == OK and math.isfinite(saved.ci_low)


def test_the_arm_is_resampled_with_the_baselines_seeds_when_it_has_them():
    base = planted_base(noise=0.0)
    fit = fit_power_law(*points(base))
    draws = draw_seeds({a: list(s) for a, s in base.items()}, resamples=300)
    fits = refit(base, draws, start=fit)
    # The arm shares each seed's luck exactly: paired resampling cancels it, an independent
    # draw of the arm's seeds would not, and gives a wider interval.
    arm = {s: law(48.0) + SEED_EFFECT[s] for s in SEEDS}
    shared = compute_saved(fit, fits, draws, arm, 60.0)
    other_seeds = {s + 10: v for s, v in arm.items()}
    independent = compute_saved(fit, fits, draws, other_seeds, 60.0)
    assert shared.multiplier == pytest.approx(independent.multiplier)
    assert shared.ci_high - shared.ci_low < independent.ci_high - independent.ci_low


# Early training: each doubling of the budget lowers the loss more than the last (concave in log
# budget), which no a * B^-b + c with b, c >= 0 can follow (the measured cpu-methods baseline).
EARLY = {25.0: 3.18, 50.0: 2.905, 100.0: 2.502}
EARLY_SPREAD = (-0.01, -0.005, 0.0, 0.005, 0.01)


def early_base() -> dict[float, dict[int, float]]:
    return {a: {s + 1: m + d for s, d in enumerate(EARLY_SPREAD)} for a, m in EARLY.items()}


def test_a_power_law_through_its_points_passes_the_misfit_check():
    base = planted_base()
    fit = fit_power_law(*points(base))
    assert worst_misfit(fit, base).z < MAX_MISFIT_Z


def test_a_power_law_that_misses_the_baseline_is_caught_by_hand():
    base = early_base()
    fit = fit_power_law(*points(base))
    assert fit is not None  # the fit "succeeds", bounded, and misses
    misfit = worst_misfit(fit, base)
    se = np.std(EARLY_SPREAD, ddof=1) / math.sqrt(len(EARLY_SPREAD))
    observed = EARLY[misfit.amount]
    assert misfit.residual == pytest.approx(fit.loss(misfit.amount) - observed)
    assert misfit.z == pytest.approx(abs(misfit.residual) / se)
    assert misfit.z > MAX_MISFIT_Z


def test_the_interpolated_curve_passes_through_the_means_and_inverts_by_hand():
    curve = interpolate(*points(early_base()))
    assert isinstance(curve, Interpolated)
    for amount, mean in EARLY.items():
        assert curve.loss(amount) == pytest.approx(mean)
        assert curve.amount_for(mean) == pytest.approx(amount)
    # Halfway in loss between 25 and 50 lies halfway in log budget: 25 * 2**0.5.
    assert curve.amount_for((3.18 + 2.905) / 2) == pytest.approx(25 * 2**0.5)
    assert curve.loss_range == pytest.approx((2.502, 3.18))
    assert interpolate([10, 20, 40], [4.0, 4.0, 3.0]) is None  # not strictly falling
    assert interpolate([10, 10], [4.0, 3.0]) is None  # one budget


def test_on_the_interpolated_curve_an_arm_worse_than_the_baseline_is_worth_less_than_1x():
    base = early_base()
    curve = interpolate(*points(base))
    draws = draw_seeds({a: list(s) for a, s in base.items()}, resamples=200)
    fits = refit(base, draws, start=curve)
    assert all(isinstance(f, Interpolated) for f in fits if f is not None)
    worse = {s: v + 0.015 for s, v in base[25.0].items()}  # layer_drop at 25s, measured
    saved = compute_saved(curve, fits, draws, worse, 25.0)
    assert saved.status == WORSE_THAN_RANGE  # below the smallest budget: not extrapolated
    worse = {s: v + 0.015 for s, v in base[50.0].items()}
    saved = compute_saved(curve, fits, draws, worse, 50.0)
    assert saved.status == OK and saved.multiplier < 1.0
    assert saved.ci_low <= saved.multiplier <= saved.ci_high
    equal = compute_saved(curve, fits, draws, base[50.0], 50.0)
    assert equal.multiplier == pytest.approx(1.0)
