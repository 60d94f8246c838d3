import pytest

from budgetlm.budget.clock import Budget, BudgetError, Clock, Pass, Work


@pytest.mark.parametrize(
    "text,amount,unit",
    [
        ("300s", 300, "seconds"),
        ("20m", 1200, "seconds"),
        ("6h", 21600, "seconds"),
        ("6h-rst", 21600, "rst"),
        ("90s-rst", 90, "rst"),
        ("2000steps", 2000, "steps"),
        ("2000 steps", 2000, "steps"),
        ("5M tokens", 5e6, "tokens"),
        ("400k-tokens", 4e5, "tokens"),
        ("1e15flops", 1e15, "flops"),
        ("2.5P flops", 2.5e15, "flops"),
    ],
)
def test_budget_parse(text, amount, unit):
    b = Budget.parse(text)
    assert b.unit == unit
    assert b.amount == pytest.approx(amount)


@pytest.mark.parametrize("text", ["", "fast", "10", "-5s", "5M s", "10 parsecs", "3steps-rst"])
def test_budget_parse_rejects(text):
    with pytest.raises(BudgetError):
        Budget.parse(text)


def _work(tokens=100, flops=1e6):
    return Work(passes=(Pass("train", 4, (("decoder", 2),), flops),), tokens=tokens)


def _run(clock, work, wall=0.1, limit=10_000):
    ps = []
    while not clock.done and len(ps) < limit:
        p, _ = clock.plan(work)
        ps.append(p)
        clock.charge(work, wall_seconds=wall)
    return ps


@pytest.mark.parametrize("budget", ["7steps", "1050 tokens", "3.3e7 flops"])
def test_deterministic_units_end_at_p1_within_one_step(budget):
    clock = Clock(Budget.parse(budget))
    work = _work(tokens=100, flops=3e6)
    ps = _run(clock, work)
    assert ps[-1] == 1.0
    assert all(p < 1.0 for p in ps[:-1])
    unit = clock.budget.unit
    cost = {"steps": 1, "tokens": 100, "flops": 3e6}[unit]
    assert 0 <= clock.spent[unit] - clock.budget.amount < cost


def test_exact_fit_has_no_extra_step():
    clock = Clock(Budget.parse("1000 tokens"))
    ps = _run(clock, _work(tokens=100))
    assert len(ps) == 10 and clock.spent["tokens"] == 1000


def test_wall_clock_budget_with_steady_steps():
    t = [0.0]
    clock = Clock(Budget.parse("10s"), timer=lambda: t[0])
    ps = []
    while not clock.done:
        p, _ = clock.plan(_work())
        ps.append(p)
        clock.start_step()
        t[0] += 0.5
        clock.charge(_work())
    assert ps[-1] == 1.0
    assert 0 <= clock.spent["seconds"] - 10 < 0.5 + 1e-9


def test_wall_clock_unannounced_overrun_gets_a_final_step():
    clock = Clock(Budget.parse("1s"))
    p, last = clock.plan(_work())
    assert not last
    clock.charge(_work(), wall_seconds=5.0)  # a step far slower than predicted
    assert not clock.done
    p, last = clock.plan(_work())
    assert p == 1.0 and last


def test_clock_state_roundtrip_and_budget_mismatch():
    clock = Clock(Budget.parse("10steps"))
    _run(clock, _work(), limit=4)
    other = Clock(Budget.parse("10steps"))
    other.load_state_dict(clock.state_dict())
    assert other.spent == clock.spent and other.progress == clock.progress
    with pytest.raises(BudgetError, match="budget"):
        Clock(Budget.parse("11steps")).load_state_dict(clock.state_dict())


def test_rst_budget_needs_a_cost_model():
    with pytest.raises(BudgetError, match="reference table"):
        Clock(Budget.parse("1h-rst"))
    clock = Clock(Budget.parse("10s-rst"), extra_costs={"rst": lambda w: 3.0})
    _run(clock, _work())
    assert clock.spent["rst"] == 12.0
