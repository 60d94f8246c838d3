"""Reference-system time: the cost model, its sanity checks, charging, budgets and resume."""

import copy
import hashlib
import json
from importlib import resources

import pytest

from budgetlm.budget.clock import Work
from budgetlm.budget.rst import (
    PROBE_HIGH,
    PROBE_LOW,
    CostTable,
    Point,
    ShapeCosts,
    TableError,
    choose_probe_entries,
    probe_points,
    probe_table,
    rehash_table,
)
from budgetlm.budget.work import forward_pass, train_pass
from budgetlm.cli import main
from budgetlm.config import load_config
from budgetlm.models import get_shape
from budgetlm.train.metrics import read_metrics
from budgetlm.train.session import open_run

SHAPE = get_shape("gpt-tiny", n_layers=4)


def synthetic_entry(a=0.004, b=0.002, c=0.0015, d=0.0, noise=()):
    """Points from a known cost model (seconds = a + b·B + c·B·L + d·L), optionally perturbed."""
    noise = dict(noise)
    points = []
    for phase, scale in (("train", 1.0), ("forward", 0.35)):
        for batch in (2, 4, 8):
            for layers in (1, 2, 3, 4):
                sec = scale * (a + b * batch + c * batch * layers + d * layers)
                sec *= noise.get((phase, batch, layers), 1.0)
                points.append(Point(phase, batch, {"decoder": layers}, sec))
    return ShapeCosts("gpt-tiny test", SHAPE.__dict__ | {}, points, {"adamw": 0.005})


def test_fit_recovers_a_linear_cost_model():
    entry = synthetic_entry()
    table = CostTable({"device": "test"})
    table.add(entry)
    assert entry.fit["train"] == pytest.approx([0.004, 0.002, 0.0015, 0.0], rel=1e-6, abs=1e-12)
    assert entry.fit["forward"] == pytest.approx(
        [0.0014, 0.0007, 0.000525, 0.0], rel=1e-6, abs=1e-12
    )
    assert max(abs(r) for r in entry.residuals["train"]) < 1e-9


def test_fit_recovers_a_per_layer_fixed_cost():
    # A small eager micro-batch on a GPU: each layer costs about the same whatever the batch
    # (launches, weight reads). Without the per-layer term the fit misses small batches by ~40%.
    entry = synthetic_entry(a=0.002, b=0.0001, c=0.0002, d=0.003)
    CostTable({"device": "test"}).add(entry)
    assert entry.fit["train"] == pytest.approx([0.002, 0.0001, 0.0002, 0.003], rel=1e-6)
    assert max(abs(r) for r in entry.residuals["forward"]) < 1e-9


def test_a_negative_fixed_cost_is_pinned_to_zero():
    # Curvature (cost growing faster than linearly in the batch) pulls fixed terms negative.
    entry = synthetic_entry(a=0.0, c=0.0015)
    for p in entry.points:
        p.seconds *= 1 + 0.02 * p.batch_size  # superlinear in the batch
    entry.refit()
    for phase in ("train", "forward"):
        fixed = [entry.fit[phase][0], entry.fit[phase][3]]
        assert min(fixed) >= 0.0
        assert entry.pass_seconds(phase, 1, {"decoder": 1}) > 0


def test_planted_ten_times_too_cheap_entry_is_refused():
    # The original BERT table's 7-layer entry was 0.01052 instead of ~0.1052.
    entry = synthetic_entry(noise={("train", 4, 3): 0.1})
    with pytest.raises(TableError) as err:
        CostTable({"device": "test"}).add(entry)
    message = str(err.value)
    assert "train B=4 layers(decoder=3)" in message
    assert "cheaper than the smaller" in message or "the fit gives" in message


def test_non_positive_and_non_monotone_costs_are_refused():
    entry = synthetic_entry(noise={("forward", 8, 4): -1.0})
    with pytest.raises(TableError, match="non-positive cost"):
        CostTable({"device": "test"}).add(entry)
    flat = synthetic_entry(c=-0.0004)  # cheaper with more layers
    with pytest.raises(TableError, match="does not grow with decoder layers"):
        CostTable({"device": "test"}).add(flat)


def test_charging_matches_the_table_for_full_partial_and_forward_passes():
    table = CostTable({"device": "test"})
    table.add(synthetic_entry())
    price = table.cost_function("adamw")
    full, partial = train_pass(SHAPE, 4, None), train_pass(SHAPE, 4, {"decoder": [0, 2]})
    forward = forward_pass(SHAPE, 8, {"decoder": [1]})
    assert price(Work((full,), tokens=0, optimizer_steps=0)) == pytest.approx(
        0.004 + 0.002 * 4 + 0.0015 * 4 * 4
    )
    assert price(Work((partial,), tokens=0, optimizer_steps=0)) == pytest.approx(
        0.004 + 0.002 * 4 + 0.0015 * 4 * 2
    )
    assert price(Work((forward,), tokens=0, optimizer_steps=0)) == pytest.approx(
        0.35 * (0.004 + 0.002 * 8 + 0.0015 * 8 * 1)
    )
    both = Work((full, full, forward), tokens=0)  # two micro-batches, a selection forward, a step
    assert price(both) == pytest.approx(
        2 * price(Work((full,), 0, 0)) + price(Work((forward,), 0, 0)) + 0.005
    )


def test_uncovered_shape_is_refused_or_priced_from_flops():
    table = CostTable({"device": "test"})
    table.add(synthetic_entry())
    other = get_shape("gpt-tiny", n_layers=6)
    work = Work((train_pass(other, 4, None),), tokens=0)
    with pytest.raises(TableError, match="budgetlm calibrate"):
        table.cost_function("adamw")(work)
    seen = []
    cost = table.cost_function("adamw", fallback="flops", on_warning=seen.append)(work)
    assert cost > 0
    assert len(seen) == 2 and "FLOPs" in seen[0] and "optimizer 'adamw'" in seen[1]


def test_saved_table_is_hashed_and_tampering_is_detected(tmp_path):
    table = CostTable({"device": "test"})
    table.add(synthetic_entry())
    path = tmp_path / "t.json"
    table.save(path)
    assert CostTable.load(path).hash == table.hash
    data = json.loads(path.read_text())
    data["entries"][0]["points"][5]["seconds"] *= 0.1
    path.write_text(json.dumps(data))
    with pytest.raises(TableError, match="hash mismatch"):
        CostTable.load(path)
    del data["hash"]  # dropping the hash does not skip the check: a table must carry one
    path.write_text(json.dumps(data))
    with pytest.raises(TableError, match="no content hash") as err:
        CostTable.load(path)
    assert f"budgetlm calibrate --rehash {path}" in str(err.value)
    # Re-hashing a deliberate edit still runs the sanity checks: this one is inconsistent.
    with pytest.raises(TableError, match="refused"):
        rehash_table(path)


def test_a_hand_edited_table_is_refused_until_rehashed(tmp_path, capsys):
    table = CostTable({"device": "test"})
    table.add(synthetic_entry())
    path = tmp_path / "t.json"
    table.save(path)
    data = json.loads(path.read_text())
    data["entries"][0]["optimizer_seconds"]["adamw"] *= 2  # consistent: the checks cannot see it
    del data["hash"]
    path.write_text(json.dumps(data))
    run = tmp_path / "run"
    train = ["train", "--quiet", "configs/gpt-tiny.yaml", *ARGS, f"run.dir={run}"]
    assert main([*train, f"rst.table={path}"]) == 2
    assert "no content hash" in capsys.readouterr().err
    assert not run.exists()
    assert main(["calibrate", "--rehash", str(path)]) == 0
    assert "re-hashed" in capsys.readouterr().out
    rehashed = CostTable.load(path)
    assert rehashed.hash != table.hash
    assert rehashed.entry_for(SHAPE).optimizer_seconds["adamw"] == pytest.approx(0.01)
    assert main(["calibrate", "--rehash", str(path), "configs/gpt-tiny.yaml"]) == 2


def test_a_table_hashed_before_the_cost_model_loads_under_a_new_hash(tmp_path):
    # Same measurements, another cost model: the file is intact, but it is another reference,
    # so a run started under the old hash is not resumed under this one.
    table = CostTable({"device": "test"})
    table.add(synthetic_entry())
    data = table.to_dict(derived=False)
    del data["cost_model"]
    legacy = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    data["hash"] = legacy
    loaded = CostTable.from_dict(data)
    assert loaded.hash == table.hash != legacy
    data["entries"][0]["points"][0]["seconds"] *= 2
    with pytest.raises(TableError, match="hash mismatch"):
        CostTable.from_dict(data)


def test_calibrate_keeps_a_refused_entry_and_measures_the_other_configs(tmp_path, monkeypatch):
    import budgetlm.train.calibrate as calibrate

    entries = iter([synthetic_entry(noise={("train", 4, 3): 0.1}), synthetic_entry(c=0.002)])
    monkeypatch.setattr(
        calibrate, "calibrate_config", lambda cfg, **kw: (next(entries), {"device": "test"})
    )
    out = tmp_path / "table.json"
    code = main(["calibrate", "configs/gpt-tiny.yaml", "configs/gpt-tiny.yaml", "--out", str(out)])
    assert code == 1
    assert len(CostTable.load(out).entries) == 1
    kept = json.loads((tmp_path / "table.refused-1.json").read_text())
    assert len(kept["points"]) == 24 and kept["label"] == "gpt-tiny test"


# -- runs under RST budgets, priced by the committed table --------------------------------------
# Nothing here times this machine: a table calibrated on the spot made step counts depend on how
# busy the machine was (a 1s-rst budget bought 3 steps under load). The shipped cpu-reference
# table prices gpt-tiny at these settings, the same on every machine.

ARGS = [
    "data.vocab_size=2048",
    "data.val_fraction=0.05",
    "train.batch_size=8",
    "train.eval_batches=2",
    "train.progress_bar=false",
    "train.log_every=1",
    "train.eval_every=0",
]


@pytest.fixture(scope="module")
def committed_table(tmp_path_factory):
    """The shipped cpu-reference table as a file (a path, like a user's own table)."""
    path = tmp_path_factory.mktemp("rst") / "table.json"
    path.write_text(
        (resources.files("budgetlm.budget") / "tables" / "cpu-reference.json").read_text()
    )
    return path


@pytest.mark.slow
def test_calibration_measures_every_point_of_the_grid(tmp_path):
    """The real measuring path, end to end, on this machine: it asserts what was measured, never
    how fast (whether the figures pass the checks depends on how busy the machine is; the checks
    are tested on planted figures above)."""
    from budgetlm.train.calibrate import calibrate_config

    cfg = load_config("configs/gpt-tiny.yaml", [*ARGS, f"run.dir={tmp_path / 'run'}"])
    entry, machine = calibrate_config(cfg, batch_sizes=[2, 4], repeats=1, warmup=0, progress=False)
    assert {p.phase for p in entry.points} == {"train", "forward"}
    assert {p.active["decoder"] for p in entry.points} == {1, 2, 3, 4}
    assert {p.batch_size for p in entry.points} == {2, 4}
    assert all(p.seconds > 0 for p in entry.points)
    assert set(entry.optimizer_seconds) == {"adamw"} and entry.loop_overhead >= 0
    assert machine["device"] == "cpu" and "torch" in machine and machine["compile"] is False


def _rst_config(run_dir, table, *extra):
    return load_config(
        "configs/gpt-tiny.yaml", [*ARGS, f"run.dir={run_dir}", f"rst.table={table}", *extra]
    )


def test_rst_budget_stops_within_one_step_and_ends_at_the_final_lr(committed_table, tmp_path):
    cfg = _rst_config(tmp_path / "run", committed_table, "budget=1s-rst")
    trainer = open_run(cfg, progress=False)
    summary = trainer.run()
    trainer.log.close()
    clock = trainer.state.clock
    per_step = clock.spent["rst"] / summary["steps"]
    assert summary["steps"] > 4  # 11 under the committed table, on any machine, busy or not
    assert 0 <= clock.spent["rst"] - 1.0 < per_step * 1.01
    train = [m for m in read_metrics(trainer.run_dir / "metrics.jsonl") if m["event"] == "train"]
    assert train[-1]["lr"] == trainer.schedule.final == 0.0
    assert train[-1]["rst_s"] == pytest.approx(clock.spent["rst"])
    assert train[-1]["rst_per_wall"] > 0


def test_resume_keeps_rst_exactly_and_refuses_another_table(committed_table, tmp_path):
    straight = open_run(
        _rst_config(tmp_path / "a", committed_table, "budget=0.8s-rst"), progress=False
    )
    straight.run()
    cfg = _rst_config(tmp_path / "b", committed_table, "budget=0.8s-rst")
    first = open_run(cfg, progress=False)
    first.run(stop_after=3)
    spent_at_stop = first.state.clock.spent["rst"]
    resumed = open_run(cfg, resume="auto", progress=False)
    assert resumed.state.clock.spent["rst"] == spent_at_stop
    resumed.run()
    assert resumed.state.clock.spent["rst"] == straight.state.clock.spent["rst"]
    assert resumed.state.step == straight.state.step

    other = tmp_path / "other.json"
    data = json.loads(committed_table.read_text())
    edited = copy.deepcopy(data)
    for e in edited["entries"]:
        e["optimizer_seconds"]["adamw"] *= 1.5
    other.write_text(json.dumps(edited))
    rehash_table(other)  # a deliberate edit: another reference, with its own hash
    cfg_c = _rst_config(tmp_path / "c", committed_table, "budget=0.8s-rst")
    open_run(cfg_c, progress=False).run(stop_after=2)
    moved = _rst_config(tmp_path / "c", other, "budget=0.8s-rst")
    with pytest.raises(Exception, match="RST table"):
        open_run(moved, resume="auto", progress=False)
    allowed = _rst_config(tmp_path / "c", other, "budget=0.8s-rst", "rst.allow_table_change=true")
    assert open_run(allowed, resume="auto", progress=False).state.step == 2


def test_rst_budget_on_an_uncovered_shape_fails_before_writing(committed_table, tmp_path):
    from budgetlm.config import ConfigError

    cfg = _rst_config(tmp_path / "run", committed_table, "budget=1s-rst", "model.n_layers=3")
    with pytest.raises(ConfigError, match="does not cover"):
        open_run(cfg, progress=False)
    assert not (tmp_path / "run").exists()
    fallback = _rst_config(
        tmp_path / "fb",
        committed_table,
        "budget=0.2s-rst",
        "model.n_layers=3",
        "rst.fallback=flops",
    )
    trainer = open_run(fallback, progress=False)
    summary = trainer.run()
    assert any("FLOPs" in w for w in summary["warnings"])


def test_optimizer_step_is_priced_by_the_layers_that_got_gradients():
    entry = synthetic_entry()
    entry.optimizer_points = {
        "adamw": [{"active": {"decoder": n}, "seconds": 0.001 + 0.0005 * n} for n in (1, 2, 3, 4)]
    }
    table = CostTable({"device": "test"})
    table.add(entry)
    price = table.cost_function("adamw")
    full, half = train_pass(SHAPE, 4, None), train_pass(SHAPE, 4, {"decoder": [0, 3]})
    passes_only = price(Work((half,), tokens=0, optimizer_steps=0))
    assert price(Work((half,), tokens=0)) - passes_only == pytest.approx(0.001 + 0.0005 * 2)
    full_only = price(Work((full,), tokens=0, optimizer_steps=0))
    assert price(Work((full,), tokens=0)) - full_only == pytest.approx(0.003)


def test_clock_keeps_spending_per_purpose_and_restores_it():
    from budgetlm.budget.clock import Budget, Clock

    table = CostTable({"device": "test"})
    table.add(synthetic_entry())
    price = table.cost_function("adamw")
    full = train_pass(SHAPE, 4, None)
    selection = forward_pass(SHAPE, 8, None)
    hessian = train_pass(SHAPE, 2, None, purpose="hessian")
    work = Work((full, full, selection, hessian), tokens=0)
    clock = Clock(Budget.parse("10s-rst"), extra_costs={"rst": price})
    for _ in range(3):
        clock.charge(work, wall_seconds=0.1)
    rst = clock.by_purpose["rst"]
    assert rst["training"] == pytest.approx(3 * 2 * price(Work((full,), 0, 0)))
    assert rst["selection"] == pytest.approx(3 * price(Work((selection,), 0, 0)))
    assert rst["hessian"] == pytest.approx(3 * price(Work((hessian,), 0, 0)))
    assert rst["optimizer"] == pytest.approx(3 * 0.005)
    assert sum(rst.values()) == pytest.approx(clock.spent["rst"])
    assert sum(clock.by_purpose["flops"].values()) == pytest.approx(clock.spent["flops"])
    restored = Clock(Budget.parse("10s-rst"), extra_costs={"rst": price})
    restored.load_state_dict(clock.state_dict())
    assert restored.by_purpose == clock.by_purpose


# -- the shipped tables ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shapes"),
    [
        # (preset, vocabulary of its config's data, T5 target length from its objective)
        ("cpu-reference", [("gpt-tiny", 2048, 0), ("bert-tiny", 2048, 0), ("t5-tiny", 2048, 29)]),
        ("cpu-xeon", [("gpt-tiny", 320, 0)]),  # configs/shakespeare-gpt.yaml
        (
            "h100",
            [("gpt2-small", 50257, 0), ("bert-cramming", 32768, 0), ("t5-v1_1-base", 32128, 114)],
        ),
    ],
)
def test_shipped_tables_pass_their_checks_and_cover_their_presets(name, shapes):
    table = CostTable.load(name)
    for preset, vocab, target_len in shapes:
        extra = {"target_len": target_len} if target_len else {}
        assert table.entry_for(get_shape(preset, vocab_size=vocab, **extra)), (name, preset)


def test_a_shape_another_shipped_table_covers_is_pointed_to():
    shape = get_shape("gpt2-small", vocab_size=50257)
    message = CostTable.load().not_covered_message(shape)
    assert "set rst.table=h100" in message
    assert "rst.table=h100" not in CostTable.load().not_covered_message(SHAPE)


# -- a broken table refuses the run whatever the budget's unit ------------------------------------


@pytest.mark.parametrize(
    "breakage", ["missing", "not json", "hashless", "tampered", "inconsistent"]
)
def test_a_broken_table_refuses_a_steps_budget_before_writing(breakage, committed_table, tmp_path):
    table = tmp_path / "broken.json"
    data = json.loads(committed_table.read_text())
    entry = data["entries"][0]
    if breakage == "not json":
        table.write_text("{ not json")
    elif breakage == "hashless":
        del data["hash"]
    elif breakage == "tampered":
        entry["points"][3]["seconds"] *= 0.999  # still consistent: only the hash sees it
    elif breakage == "inconsistent":  # the original 7-layer typo, re-hashed
        entry["points"][3]["seconds"] *= 0.1
        data["hash"] = CostTable.from_dict(data, verify_hash=False).hash
    if breakage not in ("missing", "not json"):
        table.write_text(json.dumps(data))
    run = tmp_path / "run"
    args = ["train", "--quiet", "configs/gpt-tiny.yaml", *ARGS, f"run.dir={run}"]
    assert main([*args, "budget=3steps", f"rst.table={table}"]) == 2
    assert not run.exists()


def test_a_good_table_still_only_logs_rst_for_a_steps_budget(committed_table, tmp_path):
    trainer = open_run(
        _rst_config(tmp_path / "run", committed_table, "budget=2steps"), progress=False
    )
    summary = trainer.run()
    assert summary["steps"] == 2 and summary["spent"]["rst"] > 0
    uncovered = _rst_config(tmp_path / "u", committed_table, "budget=2steps", "model.n_layers=3")
    assert open_run(uncovered, progress=False).run()["spent"]["rst"] == 0  # not covered: not logged


# -- the probe (rst.verify=probe) on planted timings ----------------------------------------------


def _planted_probe_table(tmp_path, scale=1.0):
    """The committed cpu-reference table as if measured on this machine, its gpt-tiny entry's
    measurements (points and optimizer steps) scaled by `scale` and the file re-hashed: internally
    consistent, so the hash and the checks accept it."""
    from budgetlm.budget.timing import probe_machine

    data = json.loads(
        (resources.files("budgetlm.budget") / "tables" / "cpu-reference.json").read_text()
    )
    data["machine"] = {**data["machine"], **probe_machine("cpu")}
    honest = CostTable.from_dict(copy.deepcopy(data), verify_hash=False)
    honest.check()  # fits it
    entry = next(e for e in data["entries"] if e["label"] == "gpt-tiny vocab=2048")
    for p in entry["points"]:
        p["seconds"] *= scale
    entry["optimizer_seconds"] = {k: v * scale for k, v in entry["optimizer_seconds"].items()}
    for pts in entry["optimizer_points"].values():
        for p in pts:
            p["seconds"] *= scale
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"planted-{scale}.json"
    path.write_text(json.dumps(data))
    rehash_table(path)
    return CostTable.load(path), honest


def _honest(honest, slowdown=1.0, looks=None):
    """A planted measurement: what the honest table prices each point, times `slowdown` (load)."""

    def measure(entry, points, look):
        if looks is not None:
            looks.append((entry.label, look))
        true = honest.entries[entry.key]
        return [slowdown * true.pass_seconds(*p) for p in points]

    return measure


GPT_TINY = get_shape("gpt-tiny", vocab_size=2048)


def test_a_whole_entry_ten_times_too_cheap_passes_hash_and_checks_but_not_the_probe(tmp_path):
    from budgetlm.budget.timing import probe_machine

    table, honest = _planted_probe_table(tmp_path, scale=0.1)
    here = probe_machine("cpu")
    with pytest.raises(TableError, match=r"gpt-tiny vocab=2048: passes measure 10\.0x.*too cheap"):
        probe_table(table, here, _honest(honest), first=GPT_TINY)
    # Even when the probe does not start from the run's entry, the cheapest entries include it.
    with pytest.raises(TableError, match="too cheap"):
        probe_table(table, here, _honest(honest, slowdown=0.5), max_entries=4)


def test_a_whole_entry_ten_times_too_expensive_is_refused_by_the_probe(tmp_path):
    from budgetlm.budget.timing import probe_machine

    table, honest = _planted_probe_table(tmp_path, scale=10.0)
    with pytest.raises(TableError, match=r"0\.10x.*too expensive"):
        probe_table(table, probe_machine("cpu"), _honest(honest), first=GPT_TINY)


@pytest.mark.parametrize("slowdown", [0.7, 1.0, 1.4, 2.9, 4.5])
def test_an_honest_table_passes_the_probe_on_an_idle_or_busy_machine(slowdown, tmp_path):
    from budgetlm.budget.timing import probe_machine

    table, honest = _planted_probe_table(tmp_path)
    looks = []
    result = probe_table(
        table, probe_machine("cpu"), _honest(honest, slowdown, looks), first=GPT_TINY
    )
    assert list(result.ratios)[0] == "gpt-tiny vocab=2048"  # the run's own entry first
    assert len(result.ratios) == 2
    assert all(r == pytest.approx(slowdown) for rs in result.ratios.values() for r in rs)
    assert PROBE_LOW < result.ratio("gpt-tiny vocab=2048") < PROBE_HIGH
    assert {look for _, look in looks} == {0}  # no second look needed


def test_a_busy_first_look_gets_a_second_one_before_the_table_is_refused(tmp_path):
    from budgetlm.budget.timing import probe_machine

    table, honest = _planted_probe_table(tmp_path)
    looks = []
    quick, faithful = _honest(honest, 8.0, looks), _honest(honest, 1.2, looks)

    def measure(entry, points, look):
        return (faithful if look else quick)(entry, points, look)

    result = probe_table(table, probe_machine("cpu"), measure, first=GPT_TINY)
    assert result.ratio("gpt-tiny vocab=2048") == pytest.approx(1.2)
    assert ("gpt-tiny vocab=2048", 1) in looks


def test_the_probe_refuses_another_machine_type_before_timing_anything(tmp_path):
    from budgetlm.budget.timing import probe_machine

    table, honest = _planted_probe_table(tmp_path)
    looks = []
    here = {**probe_machine("cpu"), "cpu": "Some Other CPU 9000"}
    with pytest.raises(TableError, match="cpu: table .* this machine 'Some Other CPU 9000'"):
        probe_table(table, here, _honest(honest, looks=looks))
    assert looks == []
    gpu_table = CostTable.load("h100")
    with pytest.raises(TableError, match="device: table 'cuda'"):
        probe_table(gpu_table, probe_machine("cpu"), _honest(honest))


def test_probe_entries_are_the_runs_own_then_the_cheapest():
    table = CostTable.load("cpu-reference")
    own = table.entry_for(get_shape("gpt-tiny", vocab_size=4096))
    chosen = choose_probe_entries(table, get_shape("gpt-tiny", vocab_size=4096), 2)
    assert chosen[0] is own and len(chosen) == 2 and chosen[1] is not own
    assert len(choose_probe_entries(table, None, 2)) == 2
    assert choose_probe_entries(table, get_shape("gpt2-small", vocab_size=50257), 1)[0] is not own


def test_verify_probe_refuses_a_run_with_exit_2(tmp_path, monkeypatch, capsys):
    """rst.verify=probe through `budgetlm train`, the timing planted: a steps budget too."""
    import budgetlm.budget.timing as timing

    table, honest = _planted_probe_table(tmp_path, scale=0.1)
    planted = _honest(honest)
    monkeypatch.setattr(
        timing,
        "measure_probe",
        lambda entry, points, machine, look=0: planted(entry, points, look),
    )
    run = tmp_path / "run"
    args = ["train", "--quiet", "configs/gpt-tiny.yaml", *ARGS, f"run.dir={run}", "budget=2steps"]
    assert main([*args, f"rst.table={table.source}", "rst.verify=probe"]) == 2
    assert "refused by rst.verify=probe" in capsys.readouterr().err
    assert not run.exists()
    good, _ = _planted_probe_table(tmp_path / "good")
    assert main([*args, f"rst.table={good.source}", "rst.verify=probe"]) == 0
    assert "agrees with this machine" in capsys.readouterr().err


@pytest.mark.slow
def test_the_real_probe_runs_and_returns_timings():
    """On this machine, for real: it only has to run and return numbers (how they compare with
    the table depends on the machine and its load; the judgement is tested on planted figures)."""
    from budgetlm.budget.timing import measure_probe

    table = CostTable.load("cpu-reference")
    entry = table.entry_for(GPT_TINY)
    points = probe_points(entry)
    for look in (0, 1):
        seconds = measure_probe(entry, points, table.machine, look, warmup=0, repeats=1)
        assert len(seconds) == len(points) and all(s > 0 for s in seconds)
