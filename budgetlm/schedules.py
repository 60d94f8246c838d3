"""Learning-rate schedules as pure functions of budget progress p = spent / budget in [0, 1].

Because they read only p, changing the budget (or its unit) rescales every schedule, and each one
reaches its final value exactly at p = 1 — the step that spends the budget. The loop evaluates the
schedule at the progress the step will have reached once it is charged, so the last step of a run
always trains at the final learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

Schedule = Callable[[float], float]


def _clip(p: float) -> float:
    return min(1.0, max(0.0, p))


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def one_cycle(p: float, peak: float, *, peak_at: float = 0.5, final: float = 0.0) -> float:
    """Cramming / No Train No Gain BERT: 0 -> peak at p = peak_at -> final at p = 1 (linear)."""
    p = _clip(p)
    if p >= 1.0:
        return final
    if p <= peak_at:
        return peak * p / peak_at if peak_at > 0 else peak
    return _lerp(peak, final, (p - peak_at) / (1.0 - peak_at))


def warmup_cosine(
    p: float, peak: float, *, warmup: float = 0.15, start_factor: float = 0.5, final: float = 1e-5
) -> float:
    """nanoT5: linear warm-up from start_factor * peak to peak over [0, warmup], cosine to final."""
    p = _clip(p)
    if p >= 1.0:
        return final
    if p < warmup:
        return peak * _lerp(start_factor, 1.0, p / warmup)
    t = (p - warmup) / (1.0 - warmup) if warmup < 1 else 1.0
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_linear(p: float, peak: float, *, warmup: float = 0.01, final: float = 0.0) -> float:
    """GPT / staged training: linear warm-up from 0 to peak, then linear decay to final."""
    p = _clip(p)
    if p >= 1.0:
        return final
    if p < warmup:
        return peak * p / warmup
    t = (p - warmup) / (1.0 - warmup) if warmup < 1 else 1.0
    return _lerp(peak, final, t)


def wsd(
    p: float, peak: float, *, warmup: float = 0.01, decay: float = 0.2, final: float = 0.0
) -> float:
    """Warm-up, stable, decay: constant peak, then a linear decay over the last `decay` of p."""
    p = _clip(p)
    if p >= 1.0:
        return final
    if p < warmup:
        return peak * p / warmup
    if p < 1.0 - decay:
        return peak
    return _lerp(peak, final, (p - (1.0 - decay)) / decay)


def constant(p: float, peak: float, *, warmup: float = 0.0, final: float | None = None) -> float:
    """Constant after an optional linear warm-up; final defaults to peak (no decay)."""
    p = _clip(p)
    if p < warmup:
        return peak * p / warmup
    if final is not None and p >= 1.0:
        return final
    return peak


SCHEDULES: dict[str, Callable[..., float]] = {
    "one_cycle": one_cycle,
    "warmup_cosine": warmup_cosine,
    "warmup_linear": warmup_linear,
    "wsd": wsd,
    "constant": constant,
}


@dataclass(frozen=True)
class ScheduleSpec:
    """A named schedule with its peak and options, callable as lr(p)."""

    name: str
    peak: float
    options: tuple[tuple[str, float], ...] = ()

    def __call__(self, p: float) -> float:
        return SCHEDULES[self.name](p, self.peak, **dict(self.options))

    @property
    def final(self) -> float:
        return self(1.0)


def make_schedule(name: str, peak: float, **options: float) -> ScheduleSpec:
    """Build lr(p); unknown names or options fail here, before any training starts."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    import inspect

    accepted = set(inspect.signature(SCHEDULES[name]).parameters) - {"p", "peak"}
    unknown = set(options) - accepted
    if unknown:
        raise ValueError(
            f"schedule {name!r} takes options {sorted(accepted)}, not {sorted(unknown)}"
        )
    spec = ScheduleSpec(name, float(peak), tuple(sorted(options.items())))
    spec(0.0)  # fail early on bad values (e.g. division by a zero warm-up of a kind that needs one)
    return spec
