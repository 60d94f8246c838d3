"""Seed-level statistics for "does arm X beat the baseline?", as thin wrappers over scipy.stats.

Each arm (a training method, a schedule, ...) is run with a handful of seeds, and each run gives
one number: its final held-out loss. The question is whether an arm's mean differs from the
baseline's by more than seed noise explains.

Choices, and why:

* **Welch's t test, not Student's.** Different methods have different seed-to-seed spread (a
  fragile method can be much noisier than the baseline), so the equal-variance assumption of the
  pooled test is unsafe. Welch's test (``scipy.stats.ttest_ind(equal_var=False)``) estimates each
  variance separately and uses the Welch–Satterthwaite degrees of freedom. With 2-5 seeds there
  is no hope of checking normality, and with 3 or fewer seeds per arm a rank test
  (Mann–Whitney) cannot reach p < 0.05 at all, so the t test is the pragmatic choice. A
  percentile bootstrap (``scipy.stats.bootstrap``) is offered as an assumption-light
  cross-check, but with 2-5 points per group its CIs are too narrow: treat it as a sanity check,
  not as the primary test.
* **Holm–Bonferroni across arms.** Several arms are each compared with one baseline; at
  alpha = 0.05 and five independent comparisons, the chance that at least one no-op arm looks
  "significant" is about 23%. Holm's step-down correction controls that family-wise error rate,
  makes no assumption about dependence between the comparisons (they share the baseline, so they
  are correlated) and is never less powerful than plain Bonferroni.
* **CIs are per comparison; verdicts use adjusted p.** The confidence interval reported for each
  arm is the ordinary, unadjusted interval of that one difference (it answers "how big is the
  effect?"), while the better/worse verdict is decided by the Holm-adjusted p-value (it answers
  "which arms differ, across the whole family?"). A CI can therefore exclude 0 while the verdict
  is still "no significant difference".
* **Few seeds mean little power.** With 2 seeds per arm a Welch test has between 1 and 2 degrees
  of freedom, and the two-sided 95% critical value is 12.7 (df = 1) or 4.3 (df = 2): only effects
  that are large relative to the seed spread are declared significant. "No significant
  difference" is not evidence of no difference; run more seeds.

What is left here is what scipy cannot know: input checks with the arm's name in the message,
the zero-variance case of fully deterministic runs, Holm (see :func:`holm`), and the verdicts.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

__all__ = [
    "BETTER",
    "CORRECTIONS",
    "NOT_TESTED",
    "NO_DIFFERENCE",
    "TESTS",
    "WORSE",
    "Comparison",
    "TestResult",
    "bootstrap",
    "compare_arms",
    "holm",
    "mean_std",
    "welch",
]

BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no significant difference"
NOT_TESTED = "not tested"

TESTS = ("welch", "bootstrap")
CORRECTIONS = ("holm", "none")

_NAN = float("nan")


@dataclass(frozen=True)
class TestResult:
    """One two-sample comparison: ``diff = mean(arm) - mean(base)``, its CI and two-sided p.

    ``df`` is the Welch–Satterthwaite degrees of freedom (nan for the bootstrap, and when both
    groups have zero variance, where it is undefined).
    """

    __test__ = False  # not a pytest test class, despite the name

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    df: float


@dataclass(frozen=True)
class Comparison:
    """One arm against the baseline, as reported by :func:`compare_arms`."""

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
        return TestResult(diff=0.0, ci_low=0.0, ci_high=0.0, p_value=1.0, df=_NAN)
    return TestResult(diff=diff, ci_low=diff, ci_high=diff, p_value=0.0, df=_NAN)


def _two_groups(
    arm: Sequence[float], base: Sequence[float]
) -> tuple[list[float], list[float], float, int]:
    """Checked values of both groups, the difference of means, and how many are constant."""
    xs = _check_values("arm", arm, 2)
    ys = _check_values("base", base, 2)
    mean_a, sd_a = mean_std(xs)
    mean_b, sd_b = mean_std(ys)
    return xs, ys, mean_a - mean_b, (sd_a == 0.0) + (sd_b == 0.0)


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
    )


def _diff_of_means(arm: np.ndarray, base: np.ndarray, axis: int) -> np.ndarray:
    return np.mean(arm, axis=axis) - np.mean(base, axis=axis)


def bootstrap(
    arm: Sequence[float],
    base: Sequence[float],
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> TestResult:
    """Percentile bootstrap of ``mean(arm) - mean(base)``, resampling each group independently.

    ``p_value`` is the two-sided bootstrap p-value ``2 * min(P*(d <= 0), P*(d >= 0))`` (capped at
    1), where P* is the fraction of resampled differences. Deterministic for a given ``seed``.
    The percentile interval is used rather than scipy's default BCa, whose jackknife
    acceleration is degenerate with 2-3 values per group. With very few seeds the bootstrap
    distribution is coarse and too narrow, so prefer :func:`welch` for decisions.
    """
    _check_confidence(confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    xs, ys, diff, constant = _two_groups(arm, base)
    if constant == 2:
        # Resampled means of constant groups can be off by an ulp, which would turn an exact tie
        # into a spurious p = 0; answer as welch() does instead.
        return _no_variance(diff)
    res = sps.bootstrap(
        (xs, ys),
        _diff_of_means,
        n_resamples=resamples,
        vectorized=True,
        method="percentile",
        confidence_level=confidence,
        rng=np.random.default_rng(seed),
    )
    diffs = res.bootstrap_distribution
    p = min(1.0, 2.0 * min(float(np.mean(diffs <= 0.0)), float(np.mean(diffs >= 0.0))))
    ci = res.confidence_interval
    return TestResult(diff=diff, ci_low=float(ci.low), ci_high=float(ci.high), p_value=p, df=_NAN)


# --------------------------------------------------------------------------------------------
# Multiple comparisons


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


# --------------------------------------------------------------------------------------------
# Arms against a baseline


def _describe(xs: Sequence[float]) -> tuple[float, float]:
    return mean_std(xs) if xs else (_NAN, _NAN)


def compare_arms(
    results: Mapping[str, Sequence[float]],
    baseline: str,
    *,
    test: str = "welch",
    confidence: float = 0.95,
    alpha: float = 0.05,
    correction: str = "holm",
    lower_is_better: bool = True,
    resamples: int = 10_000,
    seed: int = 0,
) -> list[Comparison]:
    """Compare every arm in ``results`` (name -> per-seed final metric) with ``baseline``.

    Returns one :class:`Comparison` per non-baseline arm, in input order. The verdict is
    "better"/"worse" when the adjusted p-value is below ``alpha`` (direction from the sign of the
    difference and ``lower_is_better``), "no significant difference" otherwise, and "not tested"
    when either side has fewer than 2 values (its CI and p-values are then nan). ``resamples``
    and ``seed`` are used only by the bootstrap.
    """
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; expected one of {', '.join(TESTS)}")
    if correction not in CORRECTIONS:
        raise ValueError(
            f"unknown correction {correction!r}; expected one of {', '.join(CORRECTIONS)}"
        )
    _check_confidence(confidence)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if baseline not in results:
        raise ValueError(
            f"baseline {baseline!r} not in results (arms: {', '.join(map(repr, results))})"
        )
    # Validate everything up front so that one bad arm does not surface only after others ran.
    data = {name: _check_values(name, vals, 0) for name, vals in results.items()}

    base = data[baseline]
    mean_base, std_base = _describe(base)
    arms = [name for name in data if name != baseline]

    tested: list[TestResult | None] = []
    for name in arms:
        xs = data[name]
        if len(xs) < 2 or len(base) < 2:
            tested.append(None)
        elif test == "welch":
            tested.append(welch(xs, base, confidence))
        else:
            tested.append(bootstrap(xs, base, confidence, resamples=resamples, seed=seed))

    raw = [r.p_value if r is not None else _NAN for r in tested]
    adjusted = holm(raw) if correction == "holm" else raw

    out = []
    for name, r, p_adj in zip(arms, tested, adjusted, strict=True):
        xs = data[name]
        mean_arm, std_arm = _describe(xs)
        if r is None:
            verdict = NOT_TESTED
            diff = mean_arm - mean_base
            ci_low = ci_high = p_value = p_adj = _NAN
        else:
            diff, ci_low, ci_high, p_value = r.diff, r.ci_low, r.ci_high, r.p_value
            if p_adj < alpha and diff != 0.0:
                favours_arm = (diff < 0.0) == lower_is_better
                verdict = BETTER if favours_arm else WORSE
            else:
                verdict = NO_DIFFERENCE
        out.append(
            Comparison(
                arm=name,
                baseline=baseline,
                n_arm=len(xs),
                n_base=len(base),
                mean_arm=mean_arm,
                std_arm=std_arm,
                mean_base=mean_base,
                std_base=std_base,
                diff=diff,
                ci_low=ci_low,
                ci_high=ci_high,
                p_value=p_value,
                p_adjusted=p_adj,
                verdict=verdict,
                test=test,
            )
        )
    return out
