"""Seed-level statistics for "does arm X beat the baseline?".

Each arm (a training method, a schedule, ...) is run with a handful of seeds, and each run gives
one number: its final held-out loss. The question is whether an arm's mean differs from the
baseline's by more than seed noise explains.

Choices, and why:

* **Welch's t test, not Student's.** Different methods have different seed-to-seed spread (a
  fragile method can be much noisier than the baseline), so the equal-variance assumption of the
  pooled test is unsafe. Welch's test estimates each variance separately and uses the
  Welch–Satterthwaite degrees of freedom. With 2-5 seeds there is no hope of checking normality,
  and with 3 or fewer seeds per arm a rank test (Mann–Whitney) cannot reach p < 0.05 at all, so
  the t test is the pragmatic choice. A percentile bootstrap is offered as an assumption-light
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

Only the standard library is used (the Student t distribution is computed here through the
regularized incomplete beta function), so this module has no scipy/numpy dependency.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

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
    "t_cdf",
    "t_ppf",
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


# --------------------------------------------------------------------------------------------
# Descriptive statistics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1); the std of a single value is 0.0."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std needs at least one value")
    xs = [float(v) for v in values]
    # Constant data (including a single value) must give exactly (value, 0.0): the zero-variance
    # branches of welch() rely on it, and fsum(xs) / n is not always bit-identical to the value.
    if min(xs) == max(xs):
        return xs[0], 0.0
    mean = math.fsum(xs) / n
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var)


# --------------------------------------------------------------------------------------------
# Student t distribution


def _check_df(df: float) -> None:
    if not df > 0:  # also rejects nan
        raise ValueError(f"degrees of freedom must be > 0, got {df}")


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction for I_x(a, b), evaluated with the modified Lentz method.

    Converges quickly for x < (a + 1) / (a + b + 2); the caller arranges that.
    """
    tiny = 1e-300
    eps = 1e-16
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    # Iterations grow like sqrt(max(a, b)); Welch df is tiny, but t_cdf is public, so allow
    # generous head-room before giving up.
    for m in range(1, 100_000):
        # Even step: d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m)).
        num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        # Odd step: d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)).
        num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        delta = c * d
        f *= delta
        if abs(delta - 1.0) < eps:
            return f
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b})")


def _stirling_tail(x: float) -> float:
    """ln Gamma(x) - [(x - 1/2) ln x - x + ln(2 pi) / 2], asymptotic series; good for x >= 10."""
    x2 = x * x
    return (1.0 / 12.0 - (1.0 / 360.0 - (1.0 / 1260.0 - 1.0 / (1680.0 * x2)) / x2) / x2) / x


def _log_beta(a: float, b: float) -> float:
    """ln B(a, b), keeping its precision when one argument is large.

    lgamma(a) - lgamma(a + b) cancels catastrophically for large a (df in the millions): each
    term is ~a ln a while their difference is ~b ln a. Expanding the difference analytically
    with Stirling's series avoids forming the large terms at all.
    """
    small, large = min(a, b), max(a, b)
    if large < 10.0:
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    total = small + large
    diff = (
        -(large - 0.5) * math.log1p(small / large)
        - small * math.log(total)
        + small
        + _stirling_tail(large)
        - _stirling_tail(total)
    )
    return math.lgamma(small) + diff


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """Regularized incomplete beta I_x(a, b), with ``y = 1 - x`` passed in separately.

    Passing y avoids forming 1 - x when x is close to 1, where it would lose all precision.
    """
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    # Take each log from whichever of x, y is known to full relative precision.
    log_x = math.log(x) if x < 0.5 else math.log1p(-y)
    log_y = math.log(y) if y < 0.5 else math.log1p(-x)
    log_front = a * log_x + b * log_y - _log_beta(a, b)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    # I_x(a, b) = 1 - I_y(b, a): evaluate the fraction where it converges.
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, y) / b


# Above this, t_cdf switches from the incomplete beta to an expansion around the normal.
_LARGE_DF = 1e7


def _t_sf_abs(t: float, df: float) -> float:
    """P(T > |t|), computed directly so that tiny tail probabilities keep full precision."""
    t = abs(t)
    if math.isinf(t):
        return 0.0
    normal_tail = 0.5 * math.erfc(t / math.sqrt(2.0))
    if math.isinf(df):
        return normal_tail
    if df > _LARGE_DF:
        # The incomplete beta loses accuracy once df/2 is huge (its continued fraction creeps and
        # the Lentz stopping rule fires early), while the 1/df expansion around the normal is
        # then accurate to O(df^-3).
        t2 = t * t
        phi = math.exp(-0.5 * t2) / math.sqrt(2.0 * math.pi)
        first = t * (t2 + 1.0) / (4.0 * df)
        second = t * (((5.0 * t2 + 16.0) * t2 + 3.0) * t2 - 3.0) / (96.0 * df * df)
        return normal_tail + phi * (first + second)
    # P(|T| > t) = I_x(df / 2, 1 / 2) with x = df / (df + t^2), y = 1 - x = t^2 / (df + t^2).
    # For t > 1 go through r = df / t^2, so that t^2 cannot overflow in the far tail.
    if t > 1.0:
        r = df / t / t
        x, y = r / (1.0 + r), 1.0 / (1.0 + r)
    else:
        t2 = t * t
        x, y = df / (df + t2), t2 / (df + t2)
    return 0.5 * _betainc(0.5 * df, 0.5, x, y)


def _t_pdf(t: float, df: float) -> float:
    if math.isinf(df):
        return math.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    log_norm = math.lgamma(0.5 * (df + 1.0)) - math.lgamma(0.5 * df) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - 0.5 * (df + 1.0) * math.log1p(t * t / df))


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` (> 0, possibly non-integer) degrees of freedom.

    ``df = inf`` gives the standard normal CDF.
    """
    _check_df(df)
    if math.isnan(t):
        return _NAN
    tail = _t_sf_abs(t, df)
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """Inverse of :func:`t_cdf`: the t with ``t_cdf(t, df) == q``, for ``0 < q < 1``.

    Solved on the upper tail (by symmetry) with safeguarded Newton steps inside a bracket, so
    it cannot diverge even for df near 0, where the distribution has extremely heavy tails.
    """
    _check_df(df)
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_ppf needs 0 < q < 1, got {q}")
    if q == 0.5:
        return 0.0
    sign = 1.0 if q > 0.5 else -1.0
    # Target tail mass P(T > t) for t > 0; for q < 0.5 it is q itself (exact), for q > 0.5 it is
    # 1 - q (exact in floating point for q > 0.5 by Sterbenz' lemma).
    p = 1.0 - q if q > 0.5 else q

    # Grow the bracket geometrically: df near 0 puts quantiles astronomically far out. The
    # tail underflows to 0 long before hi could overflow, so this loop terminates.
    lo, hi = 0.0, 1.0
    while _t_sf_abs(hi, df) > p:
        lo, hi = hi, hi * 2.0
    if df / hi / hi == 0.0:
        # The tail was cut off by underflow, not reached: the quantile lies beyond ~1e160,
        # which only happens for df far below 1 (never for a Welch df, which is >= 1).
        return sign * math.inf

    t = 0.5 * (lo + hi)
    for _ in range(200):
        err = _t_sf_abs(t, df) - p  # decreasing in t
        if err == 0.0:
            break
        if err > 0.0:
            lo = t
        else:
            hi = t
        # Newton on the tail, falling back to bisection whenever the step leaves the bracket.
        dens = _t_pdf(t, df)
        new = t + err / dens if dens > 0.0 else hi
        if not lo < new < hi:
            new = 0.5 * (lo + hi)
        if abs(new - t) <= 1e-15 * max(1.0, abs(t)) or hi - lo <= 1e-15 * max(1.0, hi):
            t = new
            break
        t = new
    return sign * t


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
    # so the observed difference is the exact answer.
    if diff == 0.0:
        return TestResult(diff=0.0, ci_low=0.0, ci_high=0.0, p_value=1.0, df=_NAN)
    return TestResult(diff=diff, ci_low=diff, ci_high=diff, p_value=0.0, df=_NAN)


def welch(arm: Sequence[float], base: Sequence[float], confidence: float = 0.95) -> TestResult:
    """Welch's unequal-variance t test of ``mean(arm) - mean(base)``; two-sided p and CI.

    Each group needs at least 2 values. When both groups have zero variance the t statistic is
    undefined; then identical means give p = 1 with CI [0, 0], and different means (e.g. fully
    deterministic runs that differ) give p = 0 with CI [diff, diff].
    """
    _check_confidence(confidence)
    xs = _check_values("arm", arm, 2)
    ys = _check_values("base", base, 2)
    n_a, n_b = len(xs), len(ys)
    mean_a, sd_a = mean_std(xs)
    mean_b, sd_b = mean_std(ys)
    diff = mean_a - mean_b

    v_a = sd_a * sd_a / n_a  # squared standard error of each mean
    v_b = sd_b * sd_b / n_b
    se = math.sqrt(v_a + v_b)
    if se == 0.0:
        return _no_variance(diff)

    # Welch–Satterthwaite: match the first two moments of the variance estimate to a scaled
    # chi-square. It lies between min(n_a, n_b) - 1 and n_a + n_b - 2.
    df = (v_a + v_b) ** 2 / (v_a * v_a / (n_a - 1) + v_b * v_b / (n_b - 1))
    t = diff / se
    p = min(1.0, 2.0 * _t_sf_abs(t, df))
    half = t_ppf(0.5 + 0.5 * confidence, df) * se
    return TestResult(diff=diff, ci_low=diff - half, ci_high=diff + half, p_value=p, df=df)


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of already-sorted data (the common "type 7" definition)."""
    pos = q * (len(sorted_xs) - 1)
    i = math.floor(pos)
    j = min(i + 1, len(sorted_xs) - 1)
    frac = pos - i
    return sorted_xs[i] + (sorted_xs[j] - sorted_xs[i]) * frac


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
    With very few seeds the bootstrap distribution is coarse and too narrow, so prefer
    :func:`welch` for decisions.
    """
    _check_confidence(confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    xs = _check_values("arm", arm, 2)
    ys = _check_values("base", base, 2)
    mean_a, sd_a = mean_std(xs)
    mean_b, sd_b = mean_std(ys)
    diff = mean_a - mean_b
    if sd_a == 0.0 and sd_b == 0.0:
        # Resampled means of constant groups can be off by an ulp, which would turn an exact tie
        # into a spurious p = 0; answer as welch() does instead.
        return _no_variance(diff)

    rng = random.Random(seed)
    n_a, n_b = len(xs), len(ys)
    diffs = []
    for _ in range(resamples):
        ra = rng.choices(xs, k=n_a)
        rb = rng.choices(ys, k=n_b)
        diffs.append(math.fsum(ra) / n_a - math.fsum(rb) / n_b)
    diffs.sort()

    le0 = sum(1 for d in diffs if d <= 0.0) / resamples
    ge0 = sum(1 for d in diffs if d >= 0.0) / resamples
    p = min(1.0, 2.0 * min(le0, ge0))
    tail = 0.5 * (1.0 - confidence)
    return TestResult(
        diff=diff,
        ci_low=_quantile(diffs, tail),
        ci_high=_quantile(diffs, 1.0 - tail),
        p_value=p,
        df=_NAN,
    )


# --------------------------------------------------------------------------------------------
# Multiple comparisons


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in input order.

    NaN entries (comparisons that were not run) stay NaN and do not count towards the family
    size m. Adjusted values are monotone in the raw ones and capped at 1.
    """
    ps = [float(p) for p in p_values]
    for p in ps:
        if not math.isnan(p) and not 0.0 <= p <= 1.0:
            raise ValueError(f"p-values must lie in [0, 1], got {p}")
    order = sorted((i for i, p in enumerate(ps) if not math.isnan(p)), key=lambda i: ps[i])
    m = len(order)
    out = [_NAN] * len(ps)
    running = 0.0
    for rank, i in enumerate(order):
        # The running max keeps the step-down procedure's rejections nested: a smaller raw p
        # can never get a larger adjusted p.
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


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
