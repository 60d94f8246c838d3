"""When to grow: the slope rule of staged training, and Kaplan-form scaling-law fits.

Slope rule (Shen et al. 2022, ARCHITECTURE.md §4.3). Along a loss curve (compute C, loss L), the
local slope d log L / d log C is steep early and flattens as the model saturates. With the slope
smoothed by a trailing running mean over `window` points (5), growth is due at the first point
where the smoothed slope rises above a threshold *after* having reached its minimum (so the flat
start of a curve, before the loss moves, never triggers it). Thresholds: width -0.0475, depth
-0.0575; -0.052 marks the point to stop training the final stage.

Relative thresholds (`relative=True`, the default of method=staged). The paper's thresholds are
slopes on its scale (GPT-2 models, billions of tokens). Under the Kaplan form along one run,
L = L_inf + B·S^-alpha_S, the slope is d log L / d log C = -alpha_S · (L - L_inf) / L: it starts
near -alpha_S while the loss is far from its floor and tends to 0 as the model saturates. So a
threshold is a fraction of the curve's steepest slope: -0.0475 / -0.76 = 6.25% (width),
-0.0575 / -0.76 = 7.57% (depth), i.e. "grow when the loss is within about 6-8% of what this
model can reach". A small run's curve is steeper or shallower than the paper's (other data,
vocabulary, schedule, far fewer tokens), so the same absolute number means something else there;
the fraction does not. Relative mode reads each threshold as that fraction of the curve's own
steepest smoothed slope so far (the running minimum the rule already tracks): it fires when the
smoothed slope rises above (threshold / -alpha_S) × minimum. On a curve whose steepest slope is
Kaplan's -alpha_S the two modes agree; scaling every slope of a curve by k (log L -> k·log L)
leaves the relative decision unchanged (tested).

Per-step training losses are far too noisy for finite differences in log-log space (consecutive
steps differ by a tiny dlog C), so curves are first averaged into bins (`bin_curve`, log-spaced in
compute) or, in a running run, into points log-spaced in progress (method=staged: a point each
time the budget spent grows by 2^(1/slope_points)).

Scaling law (Kaplan et al. 2020):   L(N, S) = (N_c / N)^alpha_N + (S_c / S)^alpha_S
with N the non-embedding parameters and S the amount of training (steps in Kaplan; here the
tokens seen, which is steps x batch). Fitted without scipy: for fixed exponents the law is linear
in A = N_c^alpha_N and B = S_c^alpha_S, so the exponents are found by a grid search refined by
zooming, each candidate solved by non-negative least squares on relative errors (variable
projection). Under a compute budget C a shape that costs F FLOPs per token sees S = C / F
tokens, which gives each candidate shape its predicted loss.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

THRESHOLDS = {"width": -0.0475, "depth": -0.0575, "stop": -0.052}
WINDOW = 5
# Kaplan et al. (2020), eq. 1.6: the published constants, for reference and as a sanity check.
KAPLAN_2020 = {"n_c": 8.8e13, "alpha_n": 0.076, "s_c": 2.1e3, "alpha_s": 0.76}


def relative_fraction(threshold: float) -> float:
    """The fraction of a curve's steepest slope that a paper threshold stands for:
    threshold / -alpha_S (width 0.0625, depth 0.0757, stop 0.0684); see the module doc."""
    return threshold / -KAPLAN_2020["alpha_s"]


# -- loss curves --------------------------------------------------------------------------------


def read_loss_curve(run_dir: str | Path, x: str = "flops") -> list[tuple[float, float]]:
    """(x, loss) of every `train` record of a run's metrics.jsonl; x is flops, tokens or step."""
    points = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("event") != "train":
            continue
        value, loss = record.get(x), record.get("loss")
        if value and loss is not None and math.isfinite(loss) and value > 0 and loss > 0:
            points.append((float(value), float(loss)))
    return points


def bin_curve(
    compute: Sequence[float], loss: Sequence[float], bins: int = 40
) -> tuple[np.ndarray, np.ndarray]:
    """Average a curve into `bins` log-spaced compute bins (empty bins are left out).

    Each bin's point is the geometric mean of its compute and the mean of its losses.
    """
    c, y = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    if c.size == 0:
        return c, y
    edges = np.geomspace(c.min(), c.max() * (1 + 1e-12), bins + 1)
    which = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, bins - 1)
    xs, ys = [], []
    for b in range(bins):
        sel = which == b
        if sel.any():
            xs.append(float(np.exp(np.log(c[sel]).mean())))
            ys.append(float(y[sel].mean()))
    return np.array(xs), np.array(ys)


def log_slopes(compute: Sequence[float], loss: Sequence[float]) -> np.ndarray:
    """d log L / d log C between consecutive points (n points -> n - 1 slopes)."""
    c, y = np.log(np.asarray(compute, dtype=float)), np.log(np.asarray(loss, dtype=float))
    dc = np.diff(c)
    if np.any(dc <= 0):
        raise ValueError("compute must increase strictly along a loss curve")
    return np.diff(y) / dc


def smoothed_slopes(
    compute: Sequence[float], loss: Sequence[float], window: int = WINDOW
) -> np.ndarray:
    """Trailing running mean of `log_slopes` over `window` slopes; entry i ends at point i + 1 +
    (window - 1): the first value needs `window` slopes, so n points give n - window values."""
    slopes = log_slopes(compute, loss)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if slopes.size < window:
        return np.empty(0)
    return np.convolve(slopes, np.ones(window) / window, mode="valid")


def rule_bar(lowest: float, threshold: float, relative: bool = False) -> float:
    """The slope the rule must rise above, given the running minimum `lowest` of the smoothed
    slope: `threshold` itself, or (relative) its fraction of `lowest`."""
    return relative_fraction(threshold) * lowest if relative else threshold


def rule_index(smoothed: Sequence[float], threshold: float, relative: bool = False) -> int | None:
    """First index at which the smoothed slope is above the bar (`rule_bar`: `threshold`, or
    with `relative` its fraction of the running minimum) after its running minimum, the minimum
    itself being below the bar; None if that has not happened yet. A relative bar needs a
    falling curve (minimum < 0): a flat or rising one never fires."""
    lowest = math.inf
    for i, value in enumerate(smoothed):
        if value < lowest:
            lowest = value
            continue
        if lowest < rule_bar(lowest, threshold, relative) < value:
            return i
    return None


def grow_index(
    compute: Sequence[float],
    loss: Sequence[float],
    threshold: float,
    window: int = WINDOW,
    relative: bool = False,
) -> int | None:
    """Index of the curve point at which growth is due (see `rule_index`), or None."""
    smooth = smoothed_slopes(compute, loss, window) if len(compute) > window else np.empty(0)
    i = rule_index(smooth, threshold, relative)
    return None if i is None else i + window  # smooth[i] ends at point i + window


# -- the scaling law ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KaplanFit:
    """L(N, S) = (n_c / N)^alpha_n + (s_c / S)^alpha_s, with its relative RMS error."""

    n_c: float
    alpha_n: float
    s_c: float
    alpha_s: float
    rel_rmse: float
    points: int

    def predict(self, n: float | np.ndarray, s: float | np.ndarray) -> np.ndarray:
        n, s = np.asarray(n, dtype=float), np.asarray(s, dtype=float)
        return (self.n_c / n) ** self.alpha_n + (self.s_c / s) ** self.alpha_s


def _nnls2(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """min ||x @ w - y||^2 over w >= 0 for two columns: the unconstrained solution if it is
    feasible, else the best single-column one."""
    best: tuple[np.ndarray, float] | None = None
    w, *_ = np.linalg.lstsq(x, y, rcond=None)
    if np.all(w >= 0):
        return w, float(np.sum((x @ w - y) ** 2))
    for j in range(2):
        col = x[:, j]
        wj = max(0.0, float(col @ y) / float(col @ col))
        w = np.zeros(2)
        w[j] = wj
        err = float(np.sum((x @ w - y) ** 2))
        if best is None or err < best[1]:
            best = (w, err)
    assert best is not None
    return best


def fit_kaplan(
    n: Sequence[float], s: Sequence[float], loss: Sequence[float], zooms: int = 4
) -> KaplanFit:
    """Least-squares fit of the Kaplan form on relative errors (numpy only)."""
    n_, s_, y = (np.asarray(v, dtype=float) for v in (n, s, loss))
    if not (n_.size == s_.size == y.size) or y.size < 4:
        raise ValueError("fit_kaplan needs at least 4 (N, S, loss) points of equal length")
    if np.unique(n_).size < 2:
        raise ValueError("the N term needs runs of at least two model sizes")
    if np.any(n_ <= 0) or np.any(s_ <= 0) or np.any(y <= 0):
        raise ValueError("N, S and loss must be positive")
    # Relative errors: rows divided by the loss. Inputs are scaled to O(1) for conditioning.
    n_ref, s_ref = float(np.exp(np.log(n_).mean())), float(np.exp(np.log(s_).mean()))
    ln_n, ln_s = np.log(n_ / n_ref), np.log(s_ / s_ref)

    def solve(a_n: float, a_s: float) -> tuple[float, np.ndarray]:
        x = np.stack([np.exp(-a_n * ln_n), np.exp(-a_s * ln_s)], axis=1) / y[:, None]
        w, err = _nnls2(x, np.ones_like(y))
        return err, w

    lo_n, hi_n, lo_s, hi_s = 1e-3, 3.0, 1e-3, 3.0
    best = (math.inf, 0.0, 0.0, np.zeros(2))
    for zoom in range(zooms + 1):
        grid_n, grid_s = np.geomspace(lo_n, hi_n, 25), np.geomspace(lo_s, hi_s, 25)
        for a_n, a_s in itertools.product(grid_n, grid_s):
            err, w = solve(float(a_n), float(a_s))
            if err < best[0]:
                best = (err, float(a_n), float(a_s), w)
        # Zoom in around the best exponents: the next grid spans a shrinking factor either way.
        span = 1.6 ** (1.0 / (1 + zoom))
        a_n, a_s = best[1], best[2]
        lo_n, hi_n, lo_s, hi_s = a_n / span, a_n * span, a_s / span, a_s * span
    err, a_n, a_s, (w_a, w_b) = best
    # L = A' (N/n_ref)^-a_n + B' (S/s_ref)^-a_s  =>  n_c = n_ref A'^(1/a_n), s_c likewise.
    n_c = n_ref * w_a ** (1.0 / a_n) if w_a > 0 else 0.0
    s_c = s_ref * w_b ** (1.0 / a_s) if w_b > 0 else 0.0
    return KaplanFit(n_c, float(a_n), s_c, float(a_s), math.sqrt(err / y.size), int(y.size))


@dataclass(frozen=True)
class Candidate:
    label: str
    params: float  # non-embedding
    flops_per_token: float
    tokens: float  # what the budget buys
    loss: float


def rank_shapes(
    fit: KaplanFit, budget_flops: float, shapes: Iterable[tuple[str, float, float]]
) -> list[Candidate]:
    """Predicted loss of each (label, non-embedding params, train FLOPs per token) at the
    budget, best first."""
    out = []
    for label, params, fpt in shapes:
        tokens = budget_flops / fpt
        out.append(Candidate(label, params, fpt, tokens, float(fit.predict(params, tokens))))
    return sorted(out, key=lambda c: c.loss)
