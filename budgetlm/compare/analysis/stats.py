"""Seed-level statistics for "does arm X beat the baseline?", as thin wrappers over scipy.stats.

Each arm (a training method, a schedule, ...) is run with a handful of seeds, and each run gives
one number: its final held-out loss. The question is whether an arm's mean differs from the
baseline's by more than seed noise explains.

Choices, and why:

* **Paired by seed when the arms share seeds.** A seed fixes the initialisation and the data
  order, so two arms run with the same seed share much of their luck: their per-seed residuals
  correlate strongly, and the per-seed *differences* vary far less than either arm's losses.
  The paired t test (``scipy.stats.ttest_rel``) on the seeds both arms finished uses that; its
  CI is the t interval of the mean difference. A failed seed leaves its partner unmatched: only
  seeds present in both arms are paired, and the comparison says how many pairs it used. With
  fewer than 2 pairs (seeds not shared) it falls back to Welch, with a note. Values given as
  plain sequences (no seed attached) are unpaired.
* **A sign-flip permutation test as the small-n option** (``test="permutation"``,
  ``scipy.stats.permutation_test(..., permutation_type="samples")`` on the differences: under
  "no effect" each difference is as likely to have either sign). It is exact (all 2^n sign
  patterns) up to n = 13 pairs, assumes no normality, but cannot go below p = 2 / 2^n: with 4
  pairs no effect is ever significant at 0.05. Its CI is the paired t interval.
* **Welch's t test for unpaired designs, not Student's.** Different methods have different
  seed-to-seed spread, so the equal-variance assumption of the pooled test is unsafe. Welch's
  test (``scipy.stats.ttest_ind(equal_var=False)``) estimates each variance separately and uses
  the Welch–Satterthwaite degrees of freedom. With 3 or fewer seeds per arm a rank test
  (Mann–Whitney) cannot reach p < 0.05 at all, so the t test is the pragmatic choice. A
  percentile bootstrap (``scipy.stats.bootstrap``, of the paired differences when seeds pair,
  of each group otherwise) is offered as an assumption-light cross-check, but with 2-5 seeds its
  CIs are too narrow: a sanity check, not the primary test.
* **Holm–Bonferroni over a family.** Several arms are each compared with one baseline, at
  several budgets; at alpha = 0.05 and five independent comparisons, the chance that at least one
  no-op arm looks "significant" is about 23%. Holm's step-down correction controls that
  family-wise error rate, makes no assumption about dependence between the comparisons (they
  share the baseline, so they are correlated) and is never less powerful than Bonferroni.
  :func:`judge` adjusts whatever family it is given; the report gives it every test it shows.
* **CIs are per comparison; verdicts use adjusted p.** The confidence interval reported for each
  arm is the ordinary, unadjusted interval of that one difference (it answers "how big is the
  effect?"), while the better/worse verdict is decided by the Holm-adjusted p-value (it answers
  "which arms differ, across the whole family?"). A CI can therefore exclude 0 while the verdict
  is still "no significant difference".
* **Power made visible: the minimum detectable difference.** "No significant difference" is not
  "no difference": with few seeds only large effects can be detected. :func:`mdd` gives the
  smallest true difference the test would detect with the given power (0.8) at the per-test
  level Holm's first step uses, ``alpha / m`` (the level a lone real effect among m tests must
  pass): ``MDD = (t_{1 - a/2, df} + t_{power, df}) * se``, with ``se`` and ``df`` the t test's
  own (paired: ``sd_diff / sqrt(n)``, ``n - 1``; Welch: Welch's). This is the usual normal-style
  approximation of the noncentral t power.

What is left here is what scipy cannot know: input checks with the arm's name in the message,
the zero-variance case of fully deterministic runs, pairing by seed, Holm (see :func:`holm`),
the MDD and the verdicts.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import stats as sps

__all__ = [
    "BETTER",
    "CORRECTIONS",
    "DEFAULT_TEST",
    "NOT_TESTED",
    "NO_DIFFERENCE",
    "TESTS",
    "WORSE",
    "ArmTest",
    "Comparison",
    "TestResult",
    "bootstrap",
    "compare_arms",
    "excluded_beyond",
    "holm",
    "judge",
    "mdd",
    "mean_std",
    "pair",
    "paired_t",
    "run_test",
    "run_tests",
    "sign_flip",
    "smallest_p",
    "verdict_of",
    "welch",
]

BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no significant difference"
NOT_TESTED = "not tested"

TESTS = ("paired", "welch", "bootstrap", "permutation")
DEFAULT_TEST = "paired"
CORRECTIONS = ("holm", "none")
POWER = 0.8  # of the minimum detectable difference

_NAN = float("nan")

Values = Sequence[float] | Mapping[int, float]  # per-seed values; a mapping says which seed


@dataclass(frozen=True)
class TestResult:
    """One comparison: ``diff = mean(arm) - mean(base)``, its CI and two-sided p.

    ``df`` is the t test's degrees of freedom (Welch–Satterthwaite, or n - 1 for pairs; nan for
    the bootstrap and the permutation test, and when there is no variance, where it is
    undefined). ``se`` is the t test's standard error of ``diff`` (nan where it has none).
    """

    __test__ = False  # not a pytest test class, despite the name

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    df: float
    se: float = _NAN


@dataclass(frozen=True)
class Comparison:
    """One arm against the baseline, as reported by :func:`compare_arms`.

    ``test`` is the test that gave ``p_value`` (``welch`` when a paired test fell back, with
    ``note`` saying why); ``design`` is ``paired`` (``n_pairs`` seeds in both arms) or
    ``unpaired``. ``se`` and ``df`` are the t test's of that design, whatever test gave p: they
    size ``mdd``, the minimum detectable difference at level ``mdd_alpha`` and power 0.8 (see
    :func:`mdd`). ``family_size`` is the number of tests ``p_adjusted`` was adjusted over.
    """

    arm: str
    baseline: str
    n_arm: int
    n_base: int
    mean_arm: float
    std_arm: float
    mean_base: float
    std_base: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    p_adjusted: float
    verdict: str
    test: str
    design: str = "unpaired"
    n_pairs: int = 0
    note: str = ""
    se: float = _NAN
    df: float = _NAN
    mdd: float = _NAN
    mdd_alpha: float = _NAN
    family_size: int = 0
    lower_is_better: bool = True

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p_value)

    def to_dict(self) -> dict[str, object]:
        """Plain dict, JSON-safe: non-finite floats (nan = "not computed") become ``None``."""
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in asdict(self).items()
        }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1); the std of a single value is 0.0."""
    if len(values) == 0:
        raise ValueError("mean_std needs at least one value")
    xs = np.asarray(values, dtype=float)
    # Constant data (including a single value) must give exactly (value, 0.0): the zero-variance
    # branch of welch() and bootstrap() relies on it, and a float mean can be off by an ulp.
    if xs.min() == xs.max():
        return float(xs[0]), 0.0
    return float(xs.mean()), float(xs.std(ddof=1))


# --------------------------------------------------------------------------------------------
# Two-sample tests


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _check_values(name: str, values: Sequence[float], min_n: int) -> list[float]:
    xs = [float(v) for v in values]
    bad = [v for v in xs if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{name!r} has non-finite values {bad}; drop or fix those runs first")
    if len(xs) < min_n:
        raise ValueError(f"{name!r} needs at least {min_n} values, got {len(xs)}")
    return xs


def _no_variance(diff: float) -> TestResult:
    # Both groups constant (e.g. fully deterministic runs): there is no noise to test against,
    # so the observed difference is the exact answer. scipy would return nan here.
    if diff == 0.0:
        return TestResult(diff=0.0, ci_low=0.0, ci_high=0.0, p_value=1.0, df=_NAN, se=0.0)
    return TestResult(diff=diff, ci_low=diff, ci_high=diff, p_value=0.0, df=_NAN, se=0.0)


def _two_groups(
    arm: Sequence[float], base: Sequence[float]
) -> tuple[list[float], list[float], float, int]:
    """Checked values of both groups, the difference of means, and how many are constant."""
    xs = _check_values("arm", arm, 2)
    ys = _check_values("base", base, 2)
    mean_a, sd_a = mean_std(xs)
    mean_b, sd_b = mean_std(ys)
    return xs, ys, mean_a - mean_b, (sd_a == 0.0) + (sd_b == 0.0)


def _welch_se(xs: Sequence[float], ys: Sequence[float]) -> float:
    return math.sqrt(np.var(xs, ddof=1) / len(xs) + np.var(ys, ddof=1) / len(ys))


def welch(arm: Sequence[float], base: Sequence[float], confidence: float = 0.95) -> TestResult:
    """Welch's unequal-variance t test of ``mean(arm) - mean(base)``; two-sided p and CI.

    Each group needs at least 2 values. When both groups have zero variance the t statistic is
    undefined; then identical means give p = 1 with CI [0, 0], and different means (e.g. fully
    deterministic runs that differ) give p = 0 with CI [diff, diff].
    """
    _check_confidence(confidence)
    xs, ys, diff, constant = _two_groups(arm, base)
    if constant == 2:
        return _no_variance(diff)
    with warnings.catch_warnings():
        if constant:
            # scipy warns of "catastrophic cancellation" for a constant group; its variance is
            # exactly 0, which is fine: the other group's spread carries the test.
            warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        res = sps.ttest_ind(xs, ys, equal_var=False)
    ci = res.confidence_interval(confidence_level=confidence)
    return TestResult(
        diff=diff,
        ci_low=float(ci.low),
        ci_high=float(ci.high),
        p_value=float(res.pvalue),
        df=float(res.df),
        se=_welch_se(xs, ys),
    )


def _differences(arm: Sequence[float], base: Sequence[float]) -> list[float]:
    xs = _check_values("arm", arm, 2)
    ys = _check_values("base", base, 2)
    if len(xs) != len(ys):
        raise ValueError(f"paired values need equal lengths, got {len(xs)} and {len(ys)}")
    return [a - b for a, b in zip(xs, ys, strict=True)]


def paired_t(arm: Sequence[float], base: Sequence[float], confidence: float = 0.95) -> TestResult:
    """Paired t test of the per-seed differences ``arm[i] - base[i]`` (``scipy.stats.ttest_rel``).

    ``arm`` and ``base`` are aligned: entry i of both comes from the same seed (see :func:`pair`).
    The CI is the t interval of the mean difference, with n - 1 degrees of freedom. Constant
    differences (no noise left once paired) are answered exactly, as in :func:`welch`.
    """
    _check_confidence(confidence)
    d = _differences(arm, base)
    mean_d, sd_d = mean_std(d)
    if sd_d == 0.0:
        return _no_variance(mean_d)
    res = sps.ttest_rel(arm, base)
    ci = res.confidence_interval(confidence_level=confidence)
    return TestResult(
        diff=mean_d,
        ci_low=float(ci.low),
        ci_high=float(ci.high),
        p_value=float(res.pvalue),
        df=float(res.df),
        se=sd_d / math.sqrt(len(d)),
    )


def _mean(x: np.ndarray, axis: int) -> np.ndarray:
    return np.mean(x, axis=axis)


def sign_flip(
    arm: Sequence[float],
    base: Sequence[float],
    confidence: float = 0.95,
    resamples: int = 9999,
    seed: int = 0,
) -> TestResult:
    """Sign-flip permutation test of the mean per-seed difference (aligned as for
    :func:`paired_t`): under "no effect" each difference is as likely positive as negative.

    ``scipy.stats.permutation_test`` with ``permutation_type="samples"`` on the one sample of
    differences flips their signs; it enumerates all 2^n sign patterns when that is at most
    ``resamples`` (exact; n <= 13 by default) and samples them, seeded, otherwise. The smallest
    p it can give is 2 / 2^n (see :func:`smallest_p`). The CI is the paired t interval: the
    permutation test gives no interval of its own.
    """
    ref = paired_t(arm, base, confidence)
    d = np.asarray(_differences(arm, base))
    if np.all(d == d[0]):
        return ref  # constant differences: answered exactly by paired_t
    res = sps.permutation_test(
        (d,),
        _mean,
        permutation_type="samples",
        vectorized=True,
        n_resamples=resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return replace(ref, p_value=float(min(1.0, res.pvalue)), df=_NAN)


def smallest_p(test: str, n_pairs: int) -> float:
    """The smallest two-sided p-value a test can reach: 2 / 2^n for the exact sign-flip test
    on n pairs (only the all-same-sign patterns are as extreme), 0 for the t tests."""
    return min(1.0, 2.0 / 2.0**n_pairs) if test == "permutation" else 0.0


def _diff_of_means(arm: np.ndarray, base: np.ndarray, axis: int) -> np.ndarray:
    return np.mean(arm, axis=axis) - np.mean(base, axis=axis)


def _boot_p(diffs: np.ndarray) -> float:
    return min(1.0, 2.0 * min(float(np.mean(diffs <= 0.0)), float(np.mean(diffs >= 0.0))))


def bootstrap(
    arm: Sequence[float],
    base: Sequence[float],
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
    paired: bool = False,
) -> TestResult:
    """Percentile bootstrap of ``mean(arm) - mean(base)``: resampling each group independently,
    or, with ``paired`` (aligned values, see :func:`pair`), resampling the seeds' differences.

    ``p_value`` is the two-sided bootstrap p-value ``2 * min(P*(d <= 0), P*(d >= 0))`` (capped at
    1), where P* is the fraction of resampled differences. Deterministic for a given ``seed``.
    The percentile interval is used rather than scipy's default BCa, whose jackknife
    acceleration is degenerate with 2-3 values per group. With very few seeds the bootstrap
    distribution is coarse and too narrow, so prefer the t tests for decisions.
    """
    _check_confidence(confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if paired:
        d = _differences(arm, base)
        mean_d, sd_d = mean_std(d)
        if sd_d == 0.0:
            return _no_variance(mean_d)
        data: tuple[list[float], ...] = (d,)
        statistic = _mean
        diff, se = mean_d, sd_d / math.sqrt(len(d))
    else:
        xs, ys, diff, constant = _two_groups(arm, base)
        if constant == 2:
            # Resampled means of constant groups can be off by an ulp, which would turn an
            # exact tie into a spurious p = 0; answer as welch() does instead.
            return _no_variance(diff)
        data, statistic, se = (xs, ys), _diff_of_means, _welch_se(xs, ys)
    res = sps.bootstrap(
        data,
        statistic,
        n_resamples=resamples,
        vectorized=True,
        method="percentile",
        confidence_level=confidence,
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    p = _boot_p(res.bootstrap_distribution)
    return TestResult(diff, float(ci.low), float(ci.high), p, _NAN, se)


# --------------------------------------------------------------------------------------------
# Pairing by seed, and one arm against the baseline


def pair(arm: Mapping[int, float], base: Mapping[int, float]) -> tuple[list[float], list[float]]:
    """The values of the seeds both arms have, aligned, in seed order (a failed seed in either
    arm leaves its partner out)."""
    seeds = sorted(set(arm) & set(base))
    return [float(arm[s]) for s in seeds], [float(base[s]) for s in seeds]


def _values(values: Values) -> list[float]:
    return list(values.values()) if isinstance(values, Mapping) else list(values)


def _t_design(xs: Sequence[float], ys: Sequence[float], paired: bool) -> tuple[float, float]:
    """The t test's standard error and df of a design, for the MDD whatever test gives p."""
    if paired:
        _, sd = mean_std([a - b for a, b in zip(xs, ys, strict=True)])
        return sd / math.sqrt(len(xs)), float(len(xs) - 1)
    va, vb = np.var(xs, ddof=1) / len(xs), np.var(ys, ddof=1) / len(ys)
    if va + vb == 0.0:
        return 0.0, _NAN
    # Welch–Satterthwaite; a constant group contributes nothing (as in scipy's ttest_ind).
    terms = [v**2 / (n - 1) for v, n in ((va, len(xs)), (vb, len(ys))) if v > 0]
    return math.sqrt(va + vb), float((va + vb) ** 2 / sum(terms))


@dataclass(frozen=True)
class ArmTest:
    """What :func:`run_test` ran: the result, the test that gave it (``welch`` after a
    fallback), the design, the pairs used, why it fell back, and the t design's se and df."""

    result: TestResult
    test: str
    design: str
    n_pairs: int
    note: str
    se: float
    df: float


def run_test(
    arm: Values,
    base: Values,
    test: str = DEFAULT_TEST,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> ArmTest | None:
    """Run ``test`` on one arm against the baseline; None when it cannot run (fewer than 2
    values on a side). Mappings (seed -> value) are paired on their common seeds for the
    ``paired``, ``permutation`` and ``bootstrap`` tests; with fewer than 2 common seeds (or
    plain sequences, which carry no seed) those fall back to Welch, or to the unpaired
    bootstrap, and say so in the note."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; expected one of {', '.join(TESTS)}")
    xs, ys = _values(arm), _values(base)
    pairs = pair(arm, base) if isinstance(arm, Mapping) and isinstance(base, Mapping) else None
    n_pairs = len(pairs[0]) if pairs else 0
    if test != "welch" and n_pairs >= 2:
        px, py = pairs
        if test == "paired":
            r = paired_t(px, py, confidence)
        elif test == "permutation":
            r = sign_flip(px, py, confidence, seed=seed)
        else:
            r = bootstrap(px, py, confidence, resamples=resamples, seed=seed, paired=True)
        se, df = _t_design(px, py, paired=True)
        return ArmTest(r, test, "paired", n_pairs, "", se, df)
    if len(xs) < 2 or len(ys) < 2:
        return None
    note = ""
    if test != "welch":
        why = "values without seeds" if pairs is None else f"{n_pairs} seed(s) in both arms"
        fallback = "bootstrap of each group" if test == "bootstrap" else "Welch"
        note = f"{fallback}, unpaired: {why}, fewer than 2 pairs"
    if test == "bootstrap":
        r, used = bootstrap(xs, ys, confidence, resamples=resamples, seed=seed), "bootstrap"
    else:
        r, used = welch(xs, ys, confidence), "welch"
    se, df = _t_design(xs, ys, paired=False)
    return ArmTest(r, used, "unpaired", n_pairs, note, se, df)


def _describe(xs: Sequence[float]) -> tuple[float, float]:
    return mean_std(xs) if xs else (_NAN, _NAN)


def run_tests(
    results: Mapping[str, Values],
    baseline: str,
    *,
    test: str = DEFAULT_TEST,
    confidence: float = 0.95,
    lower_is_better: bool = True,
    resamples: int = 10_000,
    seed: int = 0,
) -> list[Comparison]:
    """Every non-baseline arm of ``results`` tested against ``baseline``, in input order,
    *unadjusted*: ``p_adjusted`` is nan and ``verdict`` empty until :func:`judge` decides them
    over the whole family of tests."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; expected one of {', '.join(TESTS)}")
    _check_confidence(confidence)
    if baseline not in results:
        raise ValueError(
            f"baseline {baseline!r} not in results (arms: {', '.join(map(repr, results))})"
        )
    # Validate everything up front so that one bad arm does not surface only after others ran.
    for name, vals in results.items():
        _check_values(name, _values(vals), 0)
    base = results[baseline]
    mean_base, std_base = _describe(_values(base))
    out = []
    for name, vals in results.items():
        if name == baseline:
            continue
        xs = _values(vals)
        mean_arm, std_arm = _describe(xs)
        t = run_test(vals, base, test, confidence, resamples=resamples, seed=seed)
        common = dict(
            arm=name,
            baseline=baseline,
            n_arm=len(xs),
            n_base=len(_values(base)),
            mean_arm=mean_arm,
            std_arm=std_arm,
            mean_base=mean_base,
            std_base=std_base,
            p_adjusted=_NAN,
            verdict="",
            lower_is_better=lower_is_better,
        )
        if t is None:
            out.append(
                Comparison(
                    **common,
                    diff=mean_arm - mean_base,
                    ci_low=_NAN,
                    ci_high=_NAN,
                    p_value=_NAN,
                    test=test,
                    note="fewer than 2 values on a side",
                )
            )
            continue
        r = t.result
        out.append(
            Comparison(
                **common,
                diff=r.diff,
                ci_low=r.ci_low,
                ci_high=r.ci_high,
                p_value=r.p_value,
                test=t.test,
                design=t.design,
                n_pairs=t.n_pairs,
                note=t.note,
                se=t.se,
                df=t.df,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Multiple comparisons, power, verdicts


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in input order.

    NaN entries (comparisons that were not run) stay NaN and do not count towards the family
    size m. Adjusted values are monotone in the raw ones and capped at 1.
    """
    # Written out because scipy has no Holm: scipy.stats.false_discovery_control is
    # Benjamini-Hochberg/Yekutieli, which bounds the false discovery rate, not the family-wise
    # error that a "this arm beats the baseline" verdict needs.
    ps = np.asarray(p_values, dtype=float).reshape(-1)
    if np.any((ps < 0.0) | (ps > 1.0)):  # nan compares False, so it passes
        raise ValueError(f"p-values must lie in [0, 1], got {ps.tolist()}")
    tested = np.flatnonzero(~np.isnan(ps))
    order = tested[np.argsort(ps[tested], kind="stable")]
    # The k-th smallest p is multiplied by (m - k); the running max keeps the step-down
    # procedure's rejections nested, so a smaller raw p never gets a larger adjusted p.
    scaled = (len(order) - np.arange(len(order))) * ps[order]
    out = np.full(len(ps), _NAN)
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out.tolist()


def mdd(se: float, df: float, alpha: float, power: float = POWER) -> float:
    """Minimum detectable difference of a two-sided t test at level ``alpha`` with ``power``:
    ``(t_{1 - alpha/2, df} + t_{power, df}) * se``.

    The usual approximation of the noncentral-t power (it ignores the far rejection tail);
    nan without a standard error, 0 when there is no noise (``se == 0``: any difference shows).
    Hand-written because scipy has no power analysis; the quantiles are scipy's.
    """
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha}, {power}")
    if se == 0.0:
        return 0.0
    if math.isnan(se) or math.isnan(df) or df <= 0:
        return _NAN
    return float((sps.t.ppf(1.0 - alpha / 2.0, df) + sps.t.ppf(power, df)) * se)


def excluded_beyond(c: Comparison) -> float:
    """The size beyond which the CI rules effects out, both ways: ``max(|low|, |high|)`` (every
    difference outside ``±`` that lies outside the interval); nan without an interval."""
    return max(abs(c.ci_low), abs(c.ci_high))


def verdict_of(diff: float, p_adjusted: float, alpha: float, lower_is_better: bool) -> str:
    """better/worse when the adjusted p is below ``alpha``, by the sign of the difference."""
    if math.isnan(p_adjusted):
        return NOT_TESTED
    if p_adjusted < alpha and diff != 0.0:
        return BETTER if (diff < 0.0) == lower_is_better else WORSE
    return NO_DIFFERENCE


def judge(
    family: Sequence[Comparison],
    *,
    alpha: float = 0.05,
    correction: str = "holm",
    power: float = POWER,
) -> list[Comparison]:
    """Adjust the p-values of a whole family of comparisons together and decide each verdict;
    also size each comparison's minimum detectable difference.

    The MDD's level is the per-test level of Holm's *first* step, ``alpha / m`` (m: tests in
    the family): a real effect among arms that do nothing must pass it to be declared at all
    (with ``correction="none"``: ``alpha``). A sign-flip test whose smallest reachable p
    (2 / 2^n) is not below that level can detect nothing: its MDD is infinite.
    """
    if correction not in CORRECTIONS:
        raise ValueError(
            f"unknown correction {correction!r}; expected one of {', '.join(CORRECTIONS)}"
        )
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    raw = [c.p_value for c in family]
    adjusted = holm(raw) if correction == "holm" else raw
    m = sum(not math.isnan(p) for p in raw)
    level = alpha / m if correction == "holm" and m else alpha
    out = []
    for c, p_adj in zip(family, adjusted, strict=True):
        if not c.tested:
            out.append(replace(c, verdict=NOT_TESTED, family_size=m))
            continue
        detectable = smallest_p(c.test, c.n_pairs) < level
        out.append(
            replace(
                c,
                p_adjusted=p_adj,
                verdict=verdict_of(c.diff, p_adj, alpha, c.lower_is_better),
                mdd=mdd(c.se, c.df, level, power) if detectable else math.inf,
                mdd_alpha=level,
                family_size=m,
            )
        )
    return out


def compare_arms(
    results: Mapping[str, Values],
    baseline: str,
    *,
    test: str = DEFAULT_TEST,
    confidence: float = 0.95,
    alpha: float = 0.05,
    correction: str = "holm",
    lower_is_better: bool = True,
    resamples: int = 10_000,
    seed: int = 0,
    power: float = POWER,
) -> list[Comparison]:
    """Compare every arm in ``results`` (name -> per-seed final metric) with ``baseline``; the
    family Holm adjusts over is these comparisons (see :func:`judge` for a larger one).

    Values are a mapping seed -> value (paired on common seeds) or a plain sequence (unpaired).
    Returns one :class:`Comparison` per non-baseline arm, in input order. The verdict is
    "better"/"worse" when the adjusted p-value is below ``alpha`` (direction from the sign of the
    difference and ``lower_is_better``), "no significant difference" otherwise, and "not tested"
    when either side has fewer than 2 values (its CI and p-values are then nan). ``resamples``
    and ``seed`` are used only by the bootstrap and the permutation test.
    """
    if correction not in CORRECTIONS:
        raise ValueError(
            f"unknown correction {correction!r}; expected one of {', '.join(CORRECTIONS)}"
        )
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    family = run_tests(
        results,
        baseline,
        test=test,
        confidence=confidence,
        lower_is_better=lower_is_better,
        resamples=resamples,
        seed=seed,
    )
    return judge(family, alpha=alpha, correction=correction, power=power)
