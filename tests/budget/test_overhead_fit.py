"""The loop's two overheads (per optimizer step, per micro-batch): fitted from planted loop-step
timings at two micro-batch counts, charged by the cost model, and kept out of old tables' hashes."""

import json
from importlib import resources

import pytest

from budgetlm.budget.clock import Work
from budgetlm.budget.rst import CostTable, Point, ShapeCosts, fit_loop_overheads
from budgetlm.budget.work import forward_pass, train_pass
from budgetlm.models import get_shape

SHAPE = get_shape("gpt-tiny", n_layers=4)
FULL = {"decoder": [0, 1, 2, 3]}


def entry(loop_overhead=0.0, micro_batch_overhead=0.0):
    """A table entry from a known pass cost model (a + b·B + c·B·L), AdamW at 5 ms a step."""
    points = [
        Point(
            phase,
            batch,
            {"decoder": layers},
            scale * (0.004 + 0.002 * batch + 0.0015 * batch * layers),
        )
        for phase, scale in (("train", 1.0), ("forward", 0.35))
        for batch in (2, 4, 8)
        for layers in (1, 2, 3, 4)
    ]
    return ShapeCosts(
        "gpt-tiny test",
        SHAPE.__dict__ | {},
        points,
        {"adamw": 0.005},
        loop_overhead=loop_overhead,
        micro_batch_overhead=micro_batch_overhead,
    )


def table_with(e):
    table = CostTable({"device": "test"})
    table.add(e)
    return table


def step(micro_batches, micro=4, extra=()):
    passes = [train_pass(SHAPE, micro, FULL)] * micro_batches
    return Work(passes=tuple(passes + list(extra)), tokens=1, optimizer="adamw")


def test_overheads_fitted_at_two_counts_price_steps_at_other_counts():
    per_step, per_micro = 0.0031, 0.0017
    bare = table_with(entry())
    price_bare = bare.cost_function("adamw")
    # Planted loop steps at 2 and 8 micro-batches: the priced passes and optimizer step plus the
    # known overheads. The fit sees only their residuals, as measure_loop_overhead computes them.
    counts = [2, 8]
    walls = [price_bare(step(k)) + per_step + k * per_micro for k in counts]
    residuals = [w - price_bare(step(k)) for w, k in zip(walls, counts, strict=True)]
    fitted = fit_loop_overheads(counts, residuals)
    assert fitted == pytest.approx((per_step, per_micro), abs=1e-12)

    price = table_with(entry(*fitted)).cost_function("adamw")
    for k in (4, 12):
        truth = price_bare(step(k)) + per_step + k * per_micro
        assert price(step(k)) == pytest.approx(truth, abs=1e-9)


def test_several_steps_per_count_are_fitted_by_least_squares():
    counts = [2, 2, 2, 8, 8, 8]
    residuals = [
        0.01 + k * 0.002 + noise for k, noise in zip(counts, [1e-4, -1e-4, 0] * 2, strict=True)
    ]
    assert fit_loop_overheads(counts, residuals) == pytest.approx((0.01, 0.002), abs=1e-9)


def test_overheads_are_clamped_at_zero():
    # More micro-batches measured cheaper per step: no negative per-micro-batch cost; the per-step
    # term takes the mean.
    assert fit_loop_overheads([2, 8], [0.010, 0.004]) == pytest.approx((0.007, 0.0))
    # A negative per-step intercept: all of it per micro-batch, least squares through the origin.
    step_, micro = fit_loop_overheads([2, 8], [0.001, 0.010])
    assert step_ == 0.0 and micro == pytest.approx((2 * 0.001 + 8 * 0.010) / (4 + 64))
    # Passes faster in the loop than alone: both 0.
    assert fit_loop_overheads([1, 2], [-0.002, -0.003]) == (0.0, 0.0)
    # One count cannot separate the two: all per step, as before the per-micro-batch term.
    assert fit_loop_overheads([4, 4], [0.002, 0.004]) == pytest.approx((0.003, 0.0))
    with pytest.raises(ValueError):
        fit_loop_overheads([2, 8], [0.001])


def test_micro_batch_overhead_goes_with_training_passes_only():
    e = entry(loop_overhead=0.003, micro_batch_overhead=0.002)
    price = table_with(e).cost_function("adamw")
    selection = forward_pass(SHAPE, 8, FULL)
    hessian = train_pass(SHAPE, 4, FULL, purpose="hessian")
    parts = price.parts(step(3, extra=(selection, hessian)))
    full = {"decoder": 4}
    assert parts["training"] == pytest.approx(3 * (e.pass_seconds("train", 4, full) + 0.002))
    assert parts["selection"] == pytest.approx(e.pass_seconds("forward", 8, full))
    assert parts["hessian"] == pytest.approx(e.pass_seconds("train", 4, full))
    assert parts["optimizer"] == pytest.approx(0.005 + 0.003)


@pytest.mark.parametrize("name", ["cpu-reference", "h100"])
def test_shipped_tables_keep_their_hash_and_file_content(name):
    text = (resources.files("budgetlm.budget") / "tables" / f"{name}.json").read_text()
    data = json.loads(text)
    table = CostTable.load(name)
    assert data["hash"] in table._measurement_hashes()
    assert all(e.micro_batch_overhead == 0.0 for e in table.entries.values())
    written = table.to_dict()
    assert all("micro_batch_overhead" not in e for e in written["entries"])


def test_a_table_with_the_term_hashes_it_and_round_trips(tmp_path):
    path = tmp_path / "t.json"
    table_with(entry(0.001, 0.002)).save(path)
    data = json.loads(path.read_text())
    assert data["entries"][0]["micro_batch_overhead"] == 0.002
    loaded = CostTable.load(path)
    assert next(iter(loaded.entries.values())).micro_batch_overhead == 0.002
    without = table_with(entry(0.001, 0.0))
    assert without.hash != loaded.hash
    # Tampering with the term is caught by the hash.
    data["entries"][0]["micro_batch_overhead"] = 0.0002
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="hash mismatch"):
        CostTable.load(path)


def test_overhead_counts_spread_the_configs_own():
    from budgetlm.train.calibrate import overhead_counts

    assert overhead_counts(1) == (1, 2)
    assert overhead_counts(2) == (2, 4)
    assert overhead_counts(12) == (3, 12)


@pytest.mark.slow
def test_the_real_loop_measurement_fits_both_terms_and_checks_another_depth():
    """Whole loop steps at two counts and at half depth; never judged on its timings."""
    from budgetlm.config import load_config
    from budgetlm.train.calibrate import measure_loop_overhead
    from budgetlm.train.run_data import resolve_data

    cfg = load_config("configs/gpt-tiny.yaml", ["train.batch_size=4", "train.micro_batch_size=2"])
    shipped = CostTable.load("cpu-reference").entry_for(resolve_data(cfg, progress=False).shape)
    result = measure_loop_overhead(cfg, shipped, steps=8)
    assert result.counts == [2, 4] and len(result.residuals) == 2
    assert result.per_step >= 0 and result.per_micro_batch >= 0
    [check] = result.checks
    assert check["micro_batches"] == 2 and check["active"] == {"decoder": 2}
    assert check["measured"] > 0 and check["priced"] > 0
    assert "ms/micro-batch" in result.describe()


def test_measure_loop_overhead_fits_planted_loop_steps(monkeypatch):
    """The calibration's wiring: planted whole-step timings in, the planted overheads out."""
    import budgetlm.train.calibrate as calibrate
    from budgetlm.config import load_config

    per_step, per_micro = 0.004, 0.0015
    e = entry()
    table_with(e)  # fitted
    cfg = load_config("configs/gpt-tiny.yaml", ["train.batch_size=8", "train.micro_batch_size=4"])

    def planted(cfg, k, steps=24, active=None):
        active = active or {"decoder": 4}
        work = k * e.pass_seconds("train", 4, active) + e.optimizer_step_seconds("adamw", active)
        return [work + per_step + k * per_micro] * 3

    monkeypatch.setattr(calibrate, "loop_step_seconds", planted)
    result = calibrate.measure_loop_overhead(cfg, e)
    assert result.counts == [2, 4]
    assert (result.per_step, result.per_micro_batch) == pytest.approx((per_step, per_micro))
    [check] = result.checks
    assert check["active"] == {"decoder": 2}
    assert check["measured"] == pytest.approx(check["priced"], abs=1e-12)
