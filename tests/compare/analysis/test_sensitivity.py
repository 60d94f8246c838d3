"""sensitivity: which work is extra, what a price error costs in loss, and re-decided verdicts."""

from __future__ import annotations

import math

import pytest

from budgetlm.compare.analysis import stats
from budgetlm.compare.analysis.compute_saved import PowerLaw
from budgetlm.compare.analysis.sensitivity import (
    ExtraWork,
    curve_slope,
    extra_work,
    rejudge,
    sensitivity,
    shift_on_curve,
    shift_on_fit,
    work_factor,
)

# The baseline: 20 steps, 0.9 of its charge on training passes and 0.1 on AdamW steps.
BASE = {"training": 54.0, "optimizer": 6.0}


def test_extra_work_is_what_the_baseline_does_not_pay_for_at_the_same_price_per_step():
    # Selective backprop with the same training price per step (2.7): only selection is extra.
    sb = extra_work({"training": 27.0, "selection": 30.0, "optimizer": 3.0}, BASE, 10, 20)
    assert sb == ExtraWork(0.5, ("selection",))
    # Layer dropping: cheaper training passes (1.9 per step against 2.7): the whole training
    # spend is priced at shapes the baseline never used.
    drop = extra_work({"training": 57.0, "optimizer": 9.0}, BASE, 30, 20)
    assert drop.purposes == ("training",) and drop.share == pytest.approx(57 / 66)
    # Sophia: Hessian passes, and an optimizer step priced unlike AdamW's.
    sophia = extra_work({"training": 48.6, "hessian": 5.4, "optimizer": 6.0}, BASE, 18, 20)
    assert sophia.purposes == ("hessian", "optimizer")
    assert sophia.share == pytest.approx(11.4 / 60)
    # The baseline's own recipe with another seed: nothing is extra (within 1% per step).
    assert extra_work({"training": 54.3, "optimizer": 6.0}, BASE, 20, 20) == ExtraWork(0.0, ())


def test_the_budget_buys_less_work_when_the_extra_work_costs_more():
    assert work_factor(0.5, 0.05) == pytest.approx(1 / 1.025)
    assert work_factor(0.5, -0.05) == pytest.approx(1 / 0.975)
    assert work_factor(0.0, 0.05) == 1.0


def test_the_loss_change_on_the_fit_and_on_a_curve_by_hand():
    fit = PowerLaw(a=2.0, b=0.5, c=3.0, scale=100.0, low=25.0, high=100.0)
    # loss(B) = 2 (B/100)^-0.5 + 3; at B = 100 with factor 0.81: 2 / 0.9 + 3 - 5 = 0.2222...
    assert shift_on_fit(fit, 100.0, 0.81) == pytest.approx(2 / 0.9 - 2)
    assert shift_on_fit(fit, 100.0, 1.21) == pytest.approx(2 / 1.1 - 2)
    # Curves of two seeds, (spent, loss): secants over the last >= 10% of each.
    curves = [
        [(0.0, 8.0), (50.0, 5.0), (90.0, 4.2), (100.0, 4.0)],  # (4.0 - 4.2) / 10 = -0.02
        [(0.0, 8.0), (60.0, 4.6), (100.0, 4.2)],  # (4.2 - 4.6) / 40 = -0.01
    ]
    assert curve_slope(curves) == pytest.approx(-0.015)
    assert curve_slope([[(0.0, 8.0)]]) is None
    assert shift_on_curve(-0.015, 100.0, 0.9) == pytest.approx(0.15)


def planted_family(gain: float) -> tuple[list[stats.Comparison], dict, dict]:
    """One arm, 4 seeds sharing their luck with the baseline, better by `gain` nats."""
    base = {1: 5.02, 2: 4.985, 3: 5.005, 4: 4.99}
    arm = {s: v - gain + 0.0004 * (-1) ** s for s, v in base.items()}
    family = stats.judge(stats.run_tests({"base": base, "arm": arm}, "base"))
    return family, arm, base


@pytest.mark.parametrize(("gain", "label"), [(0.01, "flips at +5%"), (0.3, "survives ±5%")])
def test_a_small_gain_bought_with_much_selection_flips_a_large_one_survives(gain, label):
    family, arm, base = planted_family(gain)
    assert family[0].verdict == "better"
    fit = PowerLaw(a=1.5, b=0.6, c=4.0, scale=120.0, low=15.0, high=120.0)

    def again(shift: float) -> str:
        return rejudge(
            family,
            0,
            arm,
            base,
            shift,
            test="paired",
            confidence=0.95,
            alpha=0.05,
            correction="holm",
        )

    s = sensitivity("better", ExtraWork(0.5, ("selection",)), 60.0, again, fit=fit)
    # At 60 s: dL/dlnB = -a b (0.5)^-0.6 = -1.364; 5% on half the charge = -2.5% of the work.
    assert s.shift_up == pytest.approx(fit.loss(60 / 1.025) - fit.loss(60))
    assert s.shift_up == pytest.approx(1.364 * math.log(1.025), rel=0.02)
    assert s.shift_down < 0 and s.source == "fit"
    assert s.label == label
    if gain < 0.05:
        assert s.verdict_up == "worse" and s.verdict_down == "better"
    else:
        assert s.verdict_up == s.verdict_down == "better"


def test_without_extra_work_nothing_moves_and_without_a_slope_nothing_is_said():
    def never(shift: float) -> str:
        raise AssertionError("no re-test needed")

    s = sensitivity("better", ExtraWork(0.0, ()), 60.0, never)
    assert s.label == "survives ±5%" and s.source == "none" and s.shift_up == 0.0
    assert sensitivity("better", ExtraWork(0.3, ("selection",)), 60.0, never) is None
    # From the arm's own curve when there is no fit.
    s = sensitivity("better", ExtraWork(0.5, ("selection",)), 60.0, lambda d: "better", slope=-0.01)
    assert s.source == "curve" and s.shift_up == pytest.approx(-0.01 * (1 / 1.025 - 1) * 60)


def test_rejudge_changes_only_this_tests_p_in_the_holm_family():
    family, arm, base = planted_family(0.01)
    # A second, clearly null test in the family: Holm over 2.
    null = stats.run_tests(
        {"base": base, "null": {s: v + 0.0003 * s for s, v in base.items()}}, "base"
    )
    judged = stats.judge(family + null)
    assert judged[0].family_size == 2
    kwargs = dict(test="paired", confidence=0.95, alpha=0.05, correction="holm")
    assert rejudge(judged, 0, arm, base, 0.0, **kwargs) == judged[0].verdict
    assert rejudge(judged, 0, arm, base, 0.02, **kwargs) == "worse"
    assert rejudge(judged, 0, arm, base, 0.01, **kwargs) == "no significant difference"
