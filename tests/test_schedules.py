import math

import pytest

from budgetlm.schedules import SCHEDULES, make_schedule


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_ends_at_its_final_value(name):
    opts = {"constant": {"final": 1e-5}}.get(name, {})
    lr = make_schedule(name, 1e-3, **opts)
    assert lr(1.0) == pytest.approx(lr.final)
    assert all(lr(p / 100) >= 0 for p in range(101))


def test_one_cycle_shape():
    lr = make_schedule("one_cycle", 1e-3)
    assert lr(0.0) == 0.0
    assert lr(0.25) == pytest.approx(5e-4)
    assert lr(0.5) == pytest.approx(1e-3)
    assert lr(1.0) == 0.0


def test_warmup_cosine_is_nanot5():
    lr = make_schedule("warmup_cosine", 2e-2)
    assert lr(0.0) == pytest.approx(1e-2)  # starts at half the peak
    assert lr(0.15) == pytest.approx(2e-2)
    assert lr(1.0) == pytest.approx(1e-5)
    mid = 0.15 + 0.85 / 2
    assert lr(mid) == pytest.approx(1e-5 + (2e-2 - 1e-5) * 0.5)


def test_wsd_is_flat_then_decays():
    lr = make_schedule("wsd", 1.0, warmup=0.1, decay=0.2)
    assert lr(0.5) == 1.0 and lr(0.79) == 1.0
    assert lr(0.9) == pytest.approx(0.5)
    assert lr(1.0) == 0.0


def test_schedules_are_monotone_after_warmup():
    lr = make_schedule("warmup_linear", 1.0, warmup=0.1)
    values = [lr(p / 1000) for p in range(100, 1001)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert not math.isnan(sum(values))


def test_bad_schedule_options_fail_early():
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("cosine_please", 1e-3)
    with pytest.raises(ValueError, match="peak_at"):
        make_schedule("warmup_linear", 1e-3, peak_at=0.3)
