"""Tests for compare.analysis.stats: paired t, sign-flip, Welch, bootstrap, Holm, the minimum
detectable difference and arm verdicts.

The statistics are scipy's; these tests pin down what the wrappers add (argument order, the
zero-variance answers, the bootstrap p-value, Holm) against hand-computed and planted results.
The old hand-written t distribution and its tests are gone with it.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats as sps

from budgetlm.compare.analysis.stats import (
    Comparison,
    TestResult,
    bootstrap,
    compare_arms,
    excluded_beyond,
    holm,
    judge,
    mdd,
    mean_std,
    pair,
    paired_t,
    run_tests,
    sign_flip,
    smallest_p,
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


def test_welch_matches_welch_satterthwaite_by_hand():
    # Used to skip without scipy. Now an independent check of the wrapper: df, p and CI from the
    # textbook formulas with scipy's t distribution, not from ttest_ind.
    rng = random.Random(7)
    for _ in range(20):
        a = [rng.gauss(0.0, rng.uniform(0.1, 2.0)) for _ in range(rng.randint(2, 6))]
        b = [rng.gauss(0.5, rng.uniform(0.1, 2.0)) for _ in range(rng.randint(2, 6))]
        va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
        se, diff = math.sqrt(va + vb), float(np.mean(a) - np.mean(b))
        half = sps.t.ppf(0.975, df) * se
        ours = welch(a, b)
        assert ours.df == pytest.approx(df, rel=1e-12)
        assert ours.p_value == pytest.approx(2 * sps.t.sf(abs(diff) / se, df), rel=1e-8)
        assert ours.ci_low == pytest.approx(diff - half, rel=1e-9, abs=1e-12)
        assert ours.ci_high == pytest.approx(diff + half, rel=1e-9, abs=1e-12)


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


def test_bootstrap_interval_agrees_with_welch_given_many_values():
    # With enough values per group the bootstrap distribution of the difference is close to
    # normal: its percentile interval should be the Welch interval to within ~15%, and its
    # p-value on the same side of 0.05 as the interval is of 0.
    rng = random.Random(11)
    a = [rng.gauss(2.9, 0.1) for _ in range(30)]
    b = [rng.gauss(3.0, 0.1) for _ in range(30)]
    boot, ref = bootstrap(a, b, resamples=4000, seed=1), welch(a, b)
    width = ref.ci_high - ref.ci_low
    assert boot.ci_low == pytest.approx(ref.ci_low, abs=0.15 * width)
    assert boot.ci_high == pytest.approx(ref.ci_high, abs=0.15 * width)
    assert (boot.p_value < 0.05) == (boot.ci_high < 0 or boot.ci_low > 0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap(a, b, resamples=0)


# ---------------------------------------------------------------------------------------------
# Holm


def test_holm_known_example():
    # By hand, m = 4, raw p sorted: 0.005 * 4 = 0.02; 0.01 * 3 = 0.03; 0.03 * 2 = 0.06;
    # 0.04 * 1 = 0.04, raised to 0.06 by the running max (the step-down stops at 0.03).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_hand_computed_with_ties_and_cap():
    # m = 5, sorted: 0.001 * 5 = 0.005; 0.01 * 4 = 0.04; 0.01 * 3 = 0.03 -> 0.04 (running max);
    # 0.2 * 2 = 0.4; 0.7 * 1 = 0.7. Input order is kept.
    assert holm([0.2, 0.01, 0.7, 0.001, 0.01]) == pytest.approx([0.4, 0.04, 0.7, 0.005, 0.04])
    # 0.3 * 3 = 0.9, 0.4 * 2 = 0.8 -> 0.9, 0.6 * 1 -> 0.9; and 0.5 * 3 > 1 is capped at 1.
    assert holm([0.4, 0.3, 0.6]) == pytest.approx([0.9, 0.9, 0.9])
    assert holm([0.5, 0.9, 0.6]) == [1.0, 1.0, 1.0]


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


# ---------------------------------------------------------------------------------------------
# Paired by seed


# A seed's luck (initialisation, data order) is shared by every arm run with it: planted as an
# offset per seed that is large next to the arm's true effect (-0.01) and its own noise.
SEED_LUCK = {1: 0.05, 2: -0.04, 3: 0.02, 4: -0.03, 5: 0.0}
PAIRED_BASE = {s: 3.0 + luck for s, luck in SEED_LUCK.items()}
PAIRED_ARM = {s: v - 0.01 + 0.001 * (-1) ** s for s, v in PAIRED_BASE.items()}


def test_paired_t_hand_computed_example():
    arm, base = [2.0, 3.0, 5.0], [1.0, 1.5, 3.0]
    # d = 1.0, 1.5, 2.0: mean 1.5, sd 0.5, se = 0.5 / sqrt(3), t = 1.5 / se = 3 sqrt(3) ~ 5.196
    # p = 2 * sf(5.196; df 2); CI = 1.5 -+ t_{0.975, 2} * se, t_{0.975, 2} = 4.302652729749464
    se = 0.5 / math.sqrt(3)
    r = paired_t(arm, base)
    assert r.diff == pytest.approx(1.5)
    assert r.df == 2 and r.se == pytest.approx(se)
    assert r.p_value == pytest.approx(2 * sps.t.sf(1.5 / se, 2), rel=1e-12)
    assert r.p_value == pytest.approx(2 * (1 - t_cdf_by_simpson(1.5 / se, 2)), abs=1e-9)
    assert r.ci_low == pytest.approx(1.5 - 4.302652729749464 * se, rel=1e-12)
    assert r.ci_high == pytest.approx(1.5 + 4.302652729749464 * se, rel=1e-12)


def test_paired_t_matches_scipy_ttest_rel():
    rng = random.Random(5)
    for _ in range(20):
        n = rng.randint(2, 8)
        base = [rng.gauss(3.0, 0.2) for _ in range(n)]
        arm = [b + rng.gauss(-0.05, 0.03) for b in base]
        ref = sps.ttest_rel(arm, base)
        ci = ref.confidence_interval(confidence_level=0.9)
        ours = paired_t(arm, base, confidence=0.9)
        assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-12)
        assert (ours.ci_low, ours.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-12)
        assert ours.diff == pytest.approx(float(np.mean(arm) - np.mean(base)), abs=1e-14)


def test_pairing_removes_the_shared_seed_luck_that_welch_cannot():
    paired = compare_arms({"base": PAIRED_BASE, "arm": PAIRED_ARM}, "base")[0]
    unpaired = compare_arms({"base": PAIRED_BASE, "arm": PAIRED_ARM}, "base", test="welch")[0]
    assert (paired.test, paired.design, paired.n_pairs) == ("paired", "paired", 5)
    assert paired.diff == pytest.approx(unpaired.diff)
    assert paired.verdict == "better" and paired.p_value < 1e-3
    assert unpaired.verdict == "no significant difference" and unpaired.p_value > 0.5
    assert paired.ci_high - paired.ci_low < 0.1 * (unpaired.ci_high - unpaired.ci_low)


def test_only_seeds_in_both_arms_are_paired():
    arm = {1: 2.9, 2: 2.95, 4: 2.8}  # seed 3 failed
    base = {1: 3.0, 2: 3.02, 3: 2.99, 4: 2.9}
    assert pair(arm, base) == ([2.9, 2.95, 2.8], [3.0, 3.02, 2.9])
    (c,) = compare_arms({"base": base, "arm": arm}, "base")
    assert (c.design, c.n_pairs, c.n_arm, c.n_base) == ("paired", 3, 3, 4)
    ref = paired_t([2.9, 2.95, 2.8], [3.0, 3.02, 2.9])
    assert (c.diff, c.ci_low, c.ci_high, c.p_value) == (
        ref.diff,
        ref.ci_low,
        ref.ci_high,
        ref.p_value,
    )
    # The arm's mean in the table is over its own seeds; the paired diff over the pairs.
    assert c.mean_arm == pytest.approx(np.mean([2.9, 2.95, 2.8]))


def test_fewer_than_two_pairs_fall_back_to_welch_with_a_note():
    arm, base = {1: 2.5, 7: 2.6, 8: 2.55}, {1: 3.0, 2: 3.1, 3: 2.9}
    (c,) = compare_arms({"base": base, "arm": arm}, "base")
    assert (c.test, c.design, c.n_pairs) == ("welch", "unpaired", 1)
    assert "Welch" in c.note and "1 seed(s) in both arms" in c.note
    assert c.p_value == welch(list(arm.values()), list(base.values())).p_value
    # Plain lists carry no seed: unpaired, said so.
    (lists,) = compare_arms({"base": [3.0, 3.1, 2.9], "arm": [2.5, 2.6, 2.55]}, "base")
    assert lists.test == "welch" and "without seeds" in lists.note
    # Asked for Welch, Welch is what runs, with no note.
    (w,) = compare_arms({"base": base, "arm": arm}, "base", test="welch")
    assert w.note == "" and w.design == "unpaired"


def test_sign_flip_is_exact_on_a_hand_enumerated_example():
    # d = arm - base = -0.3, -0.1, +0.2, -0.4: mean -0.15. The 16 sign patterns give means
    # (sum of +-0.3, +-0.1, +-0.2, +-0.4) / 4; |sum| >= 0.6 for: {-.3,-.1,-.2,-.4} = -1.0,
    # {+,+,+,+} = +1.0, {-.3,+.1,-.2,-.4} = -0.8, {+.3,-.1,+.2,+.4} = +0.8,
    # {-.3,-.1,+.2,-.4} = -0.6 (observed), {+.3,+.1,-.2,+.4} = +0.6; all others |sum| <= 0.4
    # (e.g. {+.3,-.1,-.2,-.4} = -0.4). So p = 6 / 16 exactly.
    base = [3.0, 3.0, 3.0, 3.0]
    arm = [2.7, 2.9, 3.2, 2.6]
    r = sign_flip(arm, base)
    assert r.p_value == pytest.approx(6 / 16, abs=1e-12)
    assert r.diff == pytest.approx(-0.15)
    # Its interval is the paired t interval.
    ref = paired_t(arm, base)
    assert (r.ci_low, r.ci_high) == (ref.ci_low, ref.ci_high)
    # All of one sign: the most extreme pattern, p = 2 / 2^n, the smallest it can give.
    assert sign_flip([2.9, 2.8, 2.7], [3.0, 3.0, 3.0]).p_value == pytest.approx(2 / 8)
    assert smallest_p("permutation", 3) == 2 / 8 and smallest_p("paired", 3) == 0.0


def test_a_sign_flip_on_too_few_pairs_can_detect_nothing():
    # 4 pairs: the smallest p is 2/16 = 0.125 > 0.05. The MDD says so (infinite).
    data = {"base": {1: 3.0, 2: 3.1, 3: 2.9, 4: 3.05}, "arm": {1: 2.0, 2: 2.1, 3: 1.9, 4: 2.0}}
    (c,) = compare_arms(data, "base", test="permutation")
    assert c.test == "permutation" and c.p_value == pytest.approx(0.125)
    assert c.verdict == "no significant difference" and math.isinf(c.mdd)
    (t,) = compare_arms(data, "base", test="paired")
    assert t.verdict == "better" and math.isfinite(t.mdd)


def test_paired_bootstrap_resamples_the_seeds_differences():
    data = {"base": PAIRED_BASE, "arm": PAIRED_ARM}
    (c,) = compare_arms(data, "base", test="bootstrap")
    assert (c.test, c.design, c.n_pairs) == ("bootstrap", "paired", 5)
    assert c.ci_high < 0 and c.verdict == "better"  # the independent bootstrap would not see it
    base, arm = pair(PAIRED_ARM, PAIRED_BASE)[::-1]
    assert bootstrap(arm, base, paired=True) == bootstrap(arm, base, paired=True)
    assert bootstrap(arm, base).ci_low < bootstrap(arm, base, paired=True).ci_low


# ---------------------------------------------------------------------------------------------
# Minimum detectable difference, what a non-result excludes


def test_mdd_against_a_hand_computation():
    # Paired, n = 4, sd of the differences 0.02: se = 0.01, df = 3. From a t table:
    # t_{0.975, 3} = 3.182446305, t_{0.8, 3} = 0.978472312.
    # MDD = (3.182446305 + 0.978472312) * 0.01 = 0.04160918617
    assert mdd(0.01, 3, alpha=0.05, power=0.8) == pytest.approx(0.04160918617, rel=1e-8)
    # Two-sided at alpha / m = 0.05 / 4: t_{1 - 0.00625, 3} = 5.1761 (scipy), same power term.
    assert mdd(0.01, 3, alpha=0.0125) == pytest.approx(
        (sps.t.ppf(1 - 0.00625, 3) + 0.978472312) * 0.01, rel=1e-8
    )
    assert mdd(0.0, 3, 0.05) == 0.0 and math.isnan(mdd(float("nan"), 3, 0.05))


def test_judge_sizes_the_mdd_at_holms_first_step():
    # Three arms with the same paired differences: each MDD at alpha / 3, with se = sd(d) / 2.
    base = {1: 3.0, 2: 3.0, 3: 3.0, 4: 3.0}
    arm = {1: 2.9, 2: 2.93, 3: 2.88, 4: 2.91}
    d = [-0.1, -0.07, -0.12, -0.09]
    se, m = float(np.std(d, ddof=1)) / 2, 3
    family = run_tests({"base": base, "a": arm, "b": arm, "c": arm}, "base")
    judged = judge(family, alpha=0.05)
    for c in judged:
        assert c.family_size == m and c.mdd_alpha == pytest.approx(0.05 / m)
        assert c.mdd == pytest.approx(mdd(se, 3, 0.05 / m), rel=1e-12)
    alone = judge(family, alpha=0.05, correction="none")[0]
    assert alone.mdd_alpha == 0.05 and alone.mdd < judged[0].mdd


def test_excluded_beyond_is_the_far_end_of_the_interval():
    c = Comparison(
        *("a", "b", 3, 3, 3.0, 0.1, 3.0, 0.1),
        diff=0.035,
        ci_low=-0.05,
        ci_high=0.12,
        p_value=0.4,
        p_adjusted=0.8,
        verdict="no significant difference",
        test="paired",
    )
    assert excluded_beyond(c) == 0.12
    flipped = Comparison(**{**c.__dict__, "ci_low": -0.2, "ci_high": 0.01})
    assert excluded_beyond(flipped) == 0.2


# ---------------------------------------------------------------------------------------------
# Holm over a family larger than one call


def test_judge_adjusts_over_the_whole_family_given():
    # One budget: a single arm with raw p ~ 0.02 -> better on its own. With three null arms of
    # a second budget in the family, Holm multiplies it by 4 and withdraws the verdict.
    budget_a = run_tests(
        {"base": {1: 3.0, 2: 3.1, 3: 3.2}, "x": {1: 2.9, 2: 3.02, 3: 3.08}}, "base"
    )
    null = {1: 3.0, 2: 3.1, 3: 3.2}
    budget_b = run_tests(
        {
            "base": null,
            "p": {1: 3.05, 2: 3.05, 3: 3.25},
            "q": {1: 2.95, 2: 3.15, 3: 3.2},
            "r": {1: 3.0, 2: 3.08, 3: 3.25},
        },
        "base",
    )
    raw = budget_a[0].p_value
    assert 0.0125 < raw < 0.05, raw
    alone = judge(budget_a)[0]
    assert alone.verdict == "better" and alone.p_adjusted == raw
    together = judge(budget_a + budget_b)
    assert together[0].family_size == 4
    assert together[0].p_adjusted == pytest.approx(
        holm([c.p_value for c in budget_a + budget_b])[0]
    )
    assert together[0].verdict == "no significant difference"
