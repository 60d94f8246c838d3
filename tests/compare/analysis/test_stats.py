"""Tests for compare.analysis.stats: t distribution, Welch, bootstrap, Holm, arm verdicts."""

from __future__ import annotations

import math
import random

import pytest

from budgetlm.compare.analysis.stats import (
    Comparison,
    TestResult,
    bootstrap,
    compare_arms,
    holm,
    mean_std,
    t_cdf,
    t_ppf,
    welch,
)

# Planted per-seed final losses (lower is better).
BASE = [3.0, 3.01, 2.99, 3.02]
BETTER_ARM = [2.5, 2.51, 2.49, 2.52]
WORSE_ARM = [3.5, 3.51, 3.49, 3.52]
OVERLAP_ARM = [3.0, 3.02, 2.98, 3.01]


def t_density(x: float, df: float) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf_by_simpson(t: float, df: float, intervals: int = 2000) -> float:
    """Independent reference: 1/2 + integral of the density over [0, t] by Simpson's rule."""
    h = t / intervals
    total = t_density(0.0, df) + t_density(t, df)
    for i in range(1, intervals):
        total += (4 if i % 2 else 2) * t_density(i * h, df)
    return 0.5 + total * h / 3


# ---------------------------------------------------------------------------------------------
# mean_std


def test_mean_std_uses_sample_std():
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    # Squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, over n - 1 = 3.
    assert std == pytest.approx(math.sqrt(5 / 3), rel=1e-15)


def test_mean_std_single_value_and_empty():
    assert mean_std([2.7]) == (2.7, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


# ---------------------------------------------------------------------------------------------
# Student t distribution


@pytest.mark.parametrize(
    ("df", "expected", "tol"),
    [(1, 12.7062047, 1e-7), (2, 4.30265273, 1e-8), (10, 2.22813885, 1e-8), (30, 2.04227246, 1e-8)],
)
def test_t_ppf_matches_table(df, expected, tol):
    assert t_ppf(0.975, df) == pytest.approx(expected, abs=tol)
    assert t_ppf(0.025, df) == pytest.approx(-expected, abs=tol)


@pytest.mark.parametrize("q", [0.001, 0.1, 0.3, 0.6, 0.9, 0.995])
def test_t_ppf_and_cdf_closed_forms_df1_df2(q):
    # df = 1 is the Cauchy distribution; df = 2 also has an elementary CDF and quantile.
    assert t_ppf(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-10, abs=1e-12)
    assert t_ppf(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-10)
    t = 3.0 * q - 1.2
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)


@pytest.mark.parametrize("df", [0.5, 1, 2.7, 4.959, 30, 1e4])
def test_t_cdf_centre_symmetry_and_round_trip(df):
    assert t_cdf(0.0, df) == 0.5
    for t in [0.1, 1.3, 4.0, 25.0]:
        assert t_cdf(-t, df) + t_cdf(t, df) == pytest.approx(1.0, abs=1e-14)
        assert t_cdf(-t, df) < t_cdf(-t / 2, df)  # the lower tail keeps full precision
    for q in [0.02, 0.4, 0.75, 0.999]:
        assert t_cdf(t_ppf(q, df), df) == pytest.approx(q, abs=1e-12)


@pytest.mark.parametrize("df", [0.7, 2.5, 4.959183673469388, 17.3])
@pytest.mark.parametrize("t", [0.3, 1.7, 4.0])
def test_t_cdf_non_integer_df_matches_simpson(df, t):
    assert t_cdf(t, df) == pytest.approx(t_cdf_by_simpson(t, df), abs=1e-10)


def test_t_cdf_large_df_tends_to_normal():
    normal = 0.5 * math.erfc(-1.5 / math.sqrt(2))
    assert t_cdf(1.5, 1e9) == pytest.approx(normal, abs=1e-9)
    assert t_cdf(1.5, math.inf) == pytest.approx(normal, abs=1e-15)
    # ...but not at moderate df, where the tails are visibly heavier.
    assert t_cdf(1.5, 5) < normal - 0.01


def test_t_distribution_rejects_bad_arguments():
    with pytest.raises(ValueError):
        t_cdf(1.0, 0)
    with pytest.raises(ValueError):
        t_ppf(0.5, -1)
    for q in [0.0, 1.0, 1.5]:
        with pytest.raises(ValueError):
            t_ppf(q, 3)


# ---------------------------------------------------------------------------------------------
# Welch


def test_welch_hand_computed_example():
    arm = [2.0, 4.0, 6.0]
    base = [5.0, 7.0, 9.0, 11.0]
    # mean(arm) = 4, deviations -2, 0, 2 -> s_a^2 = 8 / 2 = 4
    # mean(base) = 8, deviations -3, -1, 1, 3 -> s_b^2 = 20 / 3
    # se^2 = s_a^2 / 3 + s_b^2 / 4 = 4/3 + 5/3 = 3 -> se = sqrt(3); diff = 4 - 8 = -4
    # df = se^4 / ((4/3)^2 / 2 + (5/3)^2 / 3) = 9 / (24/27 + 25/27) = 243 / 49 ~ 4.959
    # t = -4 / sqrt(3) ~ -2.3094; p = 2 * (1 - F(4 / sqrt(3); 243/49))
    # t_crit = F^-1(0.975; 243/49) ~ 2.5769584490; CI = -4 -+ t_crit * sqrt(3)
    # (p and t_crit also agree with scipy.stats: 0.0693883372848, 2.576958449009055.)
    df = 243 / 49
    p = 2 * (1 - t_cdf_by_simpson(4 / math.sqrt(3), df))
    half = 2.576958449009055 * math.sqrt(3)

    r = welch(arm, base)
    assert isinstance(r, TestResult)
    assert r.diff == -4.0
    assert r.df == pytest.approx(df, rel=1e-14)
    assert r.p_value == pytest.approx(p, abs=1e-10)
    assert r.p_value == pytest.approx(0.0693883372848, abs=1e-12)
    assert r.ci_low == pytest.approx(-4 - half, abs=1e-9)
    assert r.ci_high == pytest.approx(-4 + half, abs=1e-9)
    # The CI and p agree: p > 0.05 exactly when the 95% CI contains 0.
    assert r.ci_low < 0 < r.ci_high

    wide = welch(arm, base, confidence=0.99)
    assert wide.ci_low < r.ci_low and wide.ci_high > r.ci_high
    assert wide.p_value == r.p_value


def test_welch_is_antisymmetric():
    a, b = [1.0, 1.3, 0.8], [1.5, 1.2, 1.9, 1.6, 1.4]
    ab, ba = welch(a, b), welch(b, a)
    assert ab.diff == pytest.approx(-ba.diff, abs=1e-15)
    assert ab.p_value == pytest.approx(ba.p_value, rel=1e-12)
    assert ab.ci_low == pytest.approx(-ba.ci_high, abs=1e-12)


def test_welch_matches_scipy_when_available():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(7)
    for _ in range(20):
        a = [rng.gauss(0.0, rng.uniform(0.1, 2.0)) for _ in range(rng.randint(2, 6))]
        b = [rng.gauss(0.5, rng.uniform(0.1, 2.0)) for _ in range(rng.randint(2, 6))]
        ours = welch(a, b)
        ref = stats.ttest_ind(a, b, equal_var=False)
        assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-12)
        assert ours.df == pytest.approx(ref.df, rel=1e-12)


def test_welch_zero_variance_groups():
    tie = welch([2.0, 2.0, 2.0], [2.0, 2.0])
    assert (tie.diff, tie.ci_low, tie.ci_high, tie.p_value) == (0.0, 0.0, 0.0, 1.0)
    apart = welch([2.0, 2.0], [2.5, 2.5, 2.5])
    assert (apart.diff, apart.ci_low, apart.ci_high, apart.p_value) == (-0.5, -0.5, -0.5, 0.0)
    # One constant group is fine: df falls back to that of the other group (n - 1).
    one = welch([2.0, 2.0, 2.0], [2.4, 2.5, 2.6])
    assert one.df == pytest.approx(2.0)
    assert 0 < one.p_value < 0.05


def test_welch_rejects_bad_input():
    with pytest.raises(ValueError, match="arm"):
        welch([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="base"):
        welch([1.0, 2.0], [1.0, math.inf])
    with pytest.raises(ValueError):
        welch([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        welch([1.0, 2.0], [1.0, 2.0], confidence=1.0)


def test_welch_ci_covers_zero_about_95_percent_under_null():
    rng = random.Random(2024)
    covered = 0
    for _ in range(200):
        a = [rng.gauss(3.0, 0.05) for _ in range(5)]
        b = [rng.gauss(3.0, 0.05) for _ in range(5)]
        r = welch(a, b)
        covered += r.ci_low <= 0.0 <= r.ci_high
    assert 0.90 <= covered / 200 <= 0.99


# ---------------------------------------------------------------------------------------------
# Bootstrap


def test_bootstrap_is_reproducible_and_seed_dependent():
    a = bootstrap(OVERLAP_ARM, BASE, resamples=2000, seed=3)
    assert a == bootstrap(OVERLAP_ARM, BASE, resamples=2000, seed=3)
    assert a != bootstrap(OVERLAP_ARM, BASE, resamples=2000, seed=4)
    assert math.isnan(a.df)
    assert a.diff == pytest.approx(welch(OVERLAP_ARM, BASE).diff, abs=1e-15)
    assert a.ci_low <= a.diff <= a.ci_high


def test_bootstrap_clear_and_tied_cases():
    clear = bootstrap(BETTER_ARM, BASE)
    assert clear.p_value == 0.0
    assert clear.ci_low < clear.ci_high < 0
    tie = bootstrap([1.0, 1.0], [1.0, 1.0, 1.0])
    assert (tie.p_value, tie.ci_low, tie.ci_high) == (1.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------------------
# Holm


def test_holm_known_example():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_keeps_nan_and_ignores_it_in_m():
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    out = holm([0.01, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.04)
    assert math.isnan(out[1])
    assert holm([]) == []
    with pytest.raises(ValueError):
        holm([1.5])


# ---------------------------------------------------------------------------------------------
# compare_arms


def planted() -> dict[str, list[float]]:
    return {
        "worse": WORSE_ARM,
        "baseline": BASE,
        "better": BETTER_ARM,
        "overlap": OVERLAP_ARM,
        "one_seed": [2.0],
    }


@pytest.mark.parametrize("test", ["welch", "bootstrap"])
def test_compare_arms_planted_verdicts(test):
    out = compare_arms(planted(), "baseline", test=test)
    assert all(isinstance(c, Comparison) for c in out)
    by_arm = {c.arm: c for c in out}
    assert [c.arm for c in out] == ["worse", "better", "overlap", "one_seed"]
    assert by_arm["better"].verdict == "better"
    assert by_arm["worse"].verdict == "worse"
    assert by_arm["overlap"].verdict == "no significant difference"
    assert by_arm["one_seed"].verdict == "not tested"
    assert all(c.test == test and c.baseline == "baseline" for c in out)

    better = by_arm["better"]
    assert (better.n_arm, better.n_base) == (4, 4)
    assert better.mean_arm == pytest.approx(2.505)
    assert better.mean_base == pytest.approx(3.005)
    assert better.diff == pytest.approx(-0.5)
    assert better.ci_low < better.diff < better.ci_high < 0
    assert better.p_value <= better.p_adjusted < 0.05


def test_compare_arms_higher_is_better_flips_verdicts():
    out = compare_arms(planted(), "baseline", lower_is_better=False)
    verdicts = {c.arm: c.verdict for c in out}
    assert verdicts["better"] == "worse"
    assert verdicts["worse"] == "better"
    assert verdicts["overlap"] == "no significant difference"


def test_compare_arms_not_tested_has_nan_statistics():
    (one,) = compare_arms({"base": BASE, "one": [2.0]}, "base")
    assert one.verdict == "not tested"
    assert one.n_arm == 1 and one.std_arm == 0.0
    assert all(math.isnan(v) for v in (one.ci_low, one.ci_high, one.p_value, one.p_adjusted))
    d = one.to_dict()
    assert d["arm"] == "one" and d["verdict"] == "not tested"
    assert d["p_value"] is None and d["mean_arm"] == 2.0
    # A one-seed baseline leaves every arm untested.
    out = compare_arms({"base": [3.0], "a": BETTER_ARM}, "base")
    assert out[0].verdict == "not tested"


def test_compare_arms_holm_correction_can_withdraw_a_verdict():
    results = {
        "base": [3.0, 3.1, 3.2],
        "small_gain": [2.7, 2.8, 2.9],  # raw p ~ 0.02
        "same_1": [3.0, 3.1, 3.2],
        "same_2": [3.05, 3.1, 3.15],
    }
    raw = compare_arms(results, "base", correction="none")
    adj = compare_arms(results, "base", correction="holm")
    assert raw[0].p_value == adj[0].p_value < 0.05 < adj[0].p_adjusted
    assert raw[0].p_adjusted == raw[0].p_value
    assert [c.p_adjusted for c in adj] == holm([c.p_value for c in raw])
    assert raw[0].verdict == "better"
    assert adj[0].verdict == "no significant difference"
    # The CI is per comparison: the correction does not change it.
    assert (raw[0].ci_low, raw[0].ci_high) == (adj[0].ci_low, adj[0].ci_high)


def test_compare_arms_rejects_bad_arguments():
    results = planted()
    with pytest.raises(ValueError, match="baseline"):
        compare_arms(results, "nope")
    with pytest.raises(ValueError, match="test"):
        compare_arms(results, "baseline", test="mann-whitney")
    with pytest.raises(ValueError, match="correction"):
        compare_arms(results, "baseline", correction="bonferroni")
    for confidence in [0.0, 1.0, 95.0]:
        with pytest.raises(ValueError, match="confidence"):
            compare_arms(results, "baseline", confidence=confidence)
    with pytest.raises(ValueError, match="diverged"):
        compare_arms({"baseline": BASE, "diverged": [2.5, float("nan")]}, "baseline")
    with pytest.raises(ValueError, match="baseline"):
        compare_arms({"baseline": [3.0, math.inf], "a": BETTER_ARM}, "baseline")
