"""`method=staged` and `budgetlm grow`: schedule transfer, runs, resume (growth.py)."""

import argparse
import dataclasses
import json
import math

import pytest

from budgetlm.api import Method
from budgetlm.methods.growth import ScheduleTransfer, StagedGrowth
from budgetlm.methods.growth_operators import grow, grown_shape, widen_shape
from budgetlm.methods.stage_schedule import THRESHOLDS, grow_index
from budgetlm.models import forward_flops
from budgetlm.schedules import make_schedule

from .arch_helpers import (
    StepLog,
    losses,
    one_thread,  # noqa: F401 - autouse fixture: one thread
    run,
    same_state,
    tiny_config,
    tiny_model,
)


def test_schedule_transfer_enters_the_target_schedule_at_s_grow():
    schedule = make_schedule("warmup_linear", 1e-3, warmup=0.05, final=1e-5)
    t = ScheduleTransfer()
    assert t.lr(0.3, schedule) == schedule(0.3)  # before any growth: the schedule itself
    t.grew(0.4, c=1.81, rewarmup=0.0)
    # Right at the growth: the target schedule at S_grow = S_before / c.
    assert t.position(0.4) == pytest.approx(0.4 / 1.81)
    assert t.lr(0.4, schedule) == pytest.approx(schedule(0.4 / 1.81))
    assert t.lr(1.0, schedule) == schedule.final  # and still the final value at p = 1
    # With a re-warm-up the lr ramps from 0 and reaches the target schedule when it ends.
    w = ScheduleTransfer()
    w.grew(0.4, c=1.81, rewarmup=0.1)
    assert w.lr(0.45, schedule) == pytest.approx(0.5 * schedule(w.position(0.45)))
    assert w.lr(0.5, schedule) == pytest.approx(schedule(w.position(0.5)))
    assert w.lr(1.0, schedule) == schedule.final
    # A second growth composes: re-enter at the current position / c.
    q = w.position(0.7)
    w.grew(0.7, c=1.43, rewarmup=0.0)
    assert w.position(0.7) == pytest.approx(q / 1.43) and w.position(1.0) == 1.0


STAGED = [
    "budget=12steps",
    "method=staged",
    "methods.staged.grow=width@0.5",
    "methods.staged.rewarmup=0.25",
    "train.eval_every=0.5",
    "train.checkpoint_every=0",
    "model.positions=learned",
]


def test_staged_run_grows_at_half_budget_and_charges_the_grown_shape(tmp_path):
    log = StepLog()
    cfg = tiny_config("gpt", tmp_path / "run", *STAGED)
    trainer, summary, metrics = run(cfg, [log])
    assert summary["status"] == "finished"
    small = log.steps[0]["shape"]
    big = trainer.state.model.shape
    assert big == widen_shape(small)
    assert [s["shape"] for s in log.steps] == [small] * 6 + [big] * 6  # p = 0.5 after step 6
    batch = cfg.train.batch_size
    charged = 6 * 3 * forward_flops(small, batch) + 6 * 3 * forward_flops(big, batch)
    assert trainer.state.clock.spent["flops"] == pytest.approx(charged, rel=1e-12)
    # The optimizer is a new one, over the grown model's parameters.
    opt_params = {id(p) for g in trainer.state.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in trainer.state.model.parameters()}
    # ... holding the transformed state: Adam's step count runs on through the growth.
    tok_emb = trainer.state.model.tok_emb.weight
    assert float(trainer.state.optimizer.state[tok_emb]["step"]) == 12
    # LR: the target schedule from S_grow = 0.5 / 1.81, stretched to end at 1, re-warmed.
    lrs = {m["step"]: m["lr"] for m in metrics if m["event"] == "train"}
    schedule = trainer.schedule
    p_grow = 0.5  # a steps budget: progress is steps / 12, the growth ran after step 6
    assert lrs[6] == schedule(6 / 12)  # before: the run's own schedule

    def expected(p):
        q = p_grow / 1.81 + (p - p_grow) * (1 - p_grow / 1.81) / (1 - p_grow)
        return min(1.0, (p - p_grow) / 0.25) * schedule(q)

    for step in (7, 8, 9, 10, 11, 12):
        assert lrs[step] == pytest.approx(expected(step / 12), rel=1e-12), step
    assert lrs[12] == schedule.final
    # The checkpoint records the grown shape (resume rebuilds the model at it).
    ckpt = sorted((trainer.run_dir / "checkpoints").iterdir())[-1]
    trainer_json = json.loads((ckpt / "trainer.json").read_text())
    assert trainer_json["__dict__"]["shape"]["__dict__"]["d_model"] == big.d_model


@pytest.mark.parametrize("stop", [5, 6, 7])  # just before, at and just after the growth
def test_staged_resume_around_the_growth_is_bit_exact(stop, tmp_path):
    args = [*STAGED, "model.dropout=0.1"]
    straight, _, straight_metrics = run(tiny_config("gpt", tmp_path / "a", *args))
    run(tiny_config("gpt", tmp_path / "b", *args), stop_after=stop)
    resumed, summary, metrics = run(tiny_config("gpt", tmp_path / "b", *args), resume="auto")
    assert summary["status"] == "finished"
    assert resumed.state.model.shape == straight.state.model.shape
    same_state(straight, resumed)
    assert losses(metrics) == losses(straight_metrics)


def test_staged_depth_growth_on_t5_with_adamw_rms(tmp_path):
    log = StepLog()
    cfg = tiny_config(
        "t5",
        tmp_path / "run",
        "budget=8steps",
        "method=staged",
        "methods.staged.grow=depth@0.25",
        "methods.staged.mode=append",
        "train.eval_every=0",
    )
    trainer, summary, metrics = run(cfg, [log])
    assert summary["status"] == "finished" and cfg.optim.name == "adamw_rms"
    assert (
        trainer.state.model.shape.n_layers == 4 and trainer.state.model.shape.n_decoder_layers == 4
    )
    assert [len(s["active"]["decoder"]) for s in log.steps] == [2, 2] + [4] * 6
    assert all(m["loss"] == m["loss"] for m in metrics if m["event"] == "train")  # no NaN


def test_staged_options_are_validated(tmp_path):
    from budgetlm.config import ConfigError
    from budgetlm.train.session import open_run

    for bad in (
        ["methods.staged.grow=height@0.5"],
        ["methods.staged.grow=width@0.6,depth@0.3"],
        ["methods.staged.grow=width,depth@0.5"],  # points for all growths or for none
        ["methods.staged.grow=width", "methods.staged.trigger=progress"],  # progress: points
        ["methods.staged.grow=width@0.5", "methods.staged.trigger=slope"],  # slope: none
        ["methods.staged.variant=zero"],
        ["methods.staged.thresholds=scaled"],
        ["methods.staged.width_threshold=0.05"],  # relative thresholds are negative slopes
        ["methods.staged.fallback=1"],
        ["methods.staged.slope_start=0"],
    ):
        cfg = tiny_config("gpt", tmp_path / "run", "method=staged", *bad)
        with pytest.raises((ConfigError, ValueError)):
            open_run(cfg, progress=False)


def test_grow_command_grows_a_checkpoint_that_resumes(tmp_path, capsys):
    from budgetlm.cli.grow import register
    from budgetlm.train.saved_run import evaluate_checkpoint

    args = ["budget=8steps", "train.eval_every=0", "model.positions=learned"]
    cfg = tiny_config("bert", tmp_path / "run", *args)
    run(cfg, stop_after=4)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "grown"
    ns = parser.parse_args(["grow", str(tmp_path / "run"), "--width", "2", "--out", str(out)])
    assert ns.func(ns) == 0
    assert "continue with: budgetlm train" in capsys.readouterr().out
    before = evaluate_checkpoint(tmp_path / "run")["val_loss"]
    after = evaluate_checkpoint(out)["val_loss"]  # built at the grown shape it records
    assert abs(after - before) < 1e-5
    # The grown run resumes at the grown shape and finishes the same budget.
    from budgetlm.config import load_config

    trainer, summary, _ = run(load_config(out / "config.yaml"), resume="auto")
    assert summary["status"] == "finished" and summary["steps"] == 8
    assert trainer.state.model.shape.d_model == 2 * cfg.model.d_model
    with pytest.raises(SystemExit):
        parser.parse_args(["grow", str(out), "--width", "2", "--depth", "2"])


# -- the automatic schedule: the slope rule by default, with its fallback ------------------------


class PlantedLoss(Method):
    """Makes the loss the loop logs and the methods see a planted function of the progress the
    step reaches (a steps budget), keeping the real gradient: the slope rule reads a known
    curve while the model trains as usual."""

    name = "planted_loss"

    def __init__(self, steps, curve):
        self.steps, self.curve = steps, curve

    def after_forward(self, state, batch, output):
        planted = self.curve((state.step + 1) / self.steps)
        output.loss = output.loss - output.loss.detach() + planted


def saturating(p):
    """Kaplan form along one run, L = L_inf + B·p^-alpha: its log-log slope
    -alpha·(L - L_inf)/L is -2.5 at p = 0.1 and flattens towards 0 (to 7.57% of its steepest
    smoothed value, the relative depth threshold, at about p = 0.3)."""
    return 3.0 + 3e-5 * p**-5


def test_staged_grows_by_the_slope_rule_by_default_at_the_planted_point(tmp_path):
    steps = 200
    cfg = tiny_config(
        "gpt",
        tmp_path / "run",
        f"budget={steps}steps",
        "method=staged",  # nothing else: grow=depth, trigger auto -> slope, relative thresholds
        "train.eval_every=0",
        "train.checkpoint_every=0",
    )
    trainer, summary, metrics = run(cfg, [PlantedLoss(steps, saturating)])
    report = summary["methods"]["staged"]
    assert report["trigger"] == "slope" and report["thresholds"] == "relative"
    (growth,) = report["growths"]
    assert growth["trigger"] == "slope" and growth["op"] == "depth"
    assert trainer.state.model.shape.n_layers == 2 * cfg.model.n_layers
    # Where the planted curve says: the rule applied to the curve itself at the documented
    # points (log-spaced from p = 0.1, 8 per doubling; flops grow like p before the growth).
    ratio = 2 ** (1 / 8)
    points = [0.1 * ratio**k for k in range(1, 40) if 0.1 * ratio**k < 1]
    curve = [saturating(p) for p in points]
    index = grow_index(points, curve, THRESHOLDS["depth"], 5, relative=True)
    planted = points[index]
    assert 0.25 < planted < 0.5  # before the fallback point: the rule decides
    # Within one point of it (the recorded points are bucket means over whole steps).
    assert abs(math.log(growth["p"] / planted)) <= math.log(ratio) + 1 / steps / planted
    # What it read: the smoothed slope rose above 7.57% (depth: 0.0575 / 0.76) of its steepest.
    assert growth["slope"] > growth["bar"] and growth["bar"] < 0
    loss_at = {m["step"]: m["loss"] for m in metrics if m["event"] == "train"}
    assert loss_at[10] == pytest.approx(saturating(10 / steps), rel=1e-6)  # planted, as logged


def test_fallback_grows_when_the_slope_rule_never_fires(tmp_path):
    steps = 40
    cfg = tiny_config(
        "gpt",
        tmp_path / "run",
        f"budget={steps}steps",
        "method=staged",
        "train.eval_every=0",
        "train.checkpoint_every=0",
    )
    # A pure power law: its slope is -0.3 throughout and never flattens.
    trainer, summary, _ = run(cfg, [PlantedLoss(steps, lambda p: 4.0 * p**-0.3)])
    report = summary["methods"]["staged"]
    (growth,) = report["growths"]
    assert growth["trigger"] == "fallback" and growth["p"] == 0.5 and growth["step"] == 20
    assert report["fallback_points"] == [0.5]
    assert trainer.state.model.shape.n_layers == 2 * cfg.model.n_layers
    # Two slope-triggered growths fall back at evenly spaced points up to 0.5.
    cfg2 = tiny_config(
        "gpt",
        tmp_path / "run2",
        f"budget={steps}steps",
        "method=staged",
        "methods.staged.grow=width,depth",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "model.positions=learned",
    )
    _, summary2, _ = run(cfg2, [PlantedLoss(steps, lambda p: 4.0 * p**-0.3)])
    growths = summary2["methods"]["staged"]["growths"]
    assert [(g["op"], g["p"], g["trigger"]) for g in growths] == [
        ("width", 0.25, "fallback"),
        ("depth", 0.5, "fallback"),
    ]


RESUME_SLOPE = [
    "budget=60steps",
    "method=staged",
    "methods.staged.slope_points=4",
    "methods.staged.window=2",
    "methods.staged.fallback=0",  # the rule, not the fallback, must grow here
    "model.dropout=0.1",
    "train.eval_every=0.5",
    "train.checkpoint_every=0",
]


@pytest.fixture(scope="module")
def slope_straight(tmp_path_factory):
    """The uninterrupted run the resumed ones are compared with (one thread, as theirs)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_dir = tmp_path_factory.mktemp("slope") / "a"
        return run(tiny_config("gpt", run_dir, *RESUME_SLOPE), [PlantedLoss(60, saturating)])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("offset", [-4, -1, 0, 1])  # mid-point, just before, at, after growth
def test_staged_resume_around_a_slope_triggered_growth_is_bit_exact(
    offset, slope_straight, tmp_path
):
    planted = PlantedLoss(60, saturating)
    straight, summary, straight_metrics = slope_straight
    (growth,) = summary["methods"]["staged"]["growths"]
    assert growth["trigger"] == "slope"
    stop = growth["step"] + offset
    run(tiny_config("gpt", tmp_path / "b", *RESUME_SLOPE), [planted], stop_after=stop)
    resumed, summary_b, metrics = run(
        tiny_config("gpt", tmp_path / "b", *RESUME_SLOPE), [planted], resume="auto"
    )
    assert summary_b["methods"]["staged"] == summary["methods"]["staged"]
    same_state(straight, resumed)
    assert losses(metrics) == losses(straight_metrics)
    (method_a,) = [m for m in straight.state.methods if m.name == "staged"]
    (method_b,) = [m for m in resumed.state.methods if m.name == "staged"]
    assert method_b.state_dict() == method_a.state_dict()


def test_explicit_progress_points_still_work_with_the_new_defaults(tmp_path):
    cfg = tiny_config(
        "gpt", tmp_path / "run", "budget=8steps", "method=staged", "methods.staged.grow=depth@0.25"
    )
    assert cfg.methods["staged"] == {"grow": "depth@0.25"}  # trigger left at auto
    _, summary, _ = run(cfg)
    report = summary["methods"]["staged"]
    assert report["trigger"] == "progress"
    assert [(g["p"], g["trigger"]) for g in report["growths"]] == [(0.25, "progress")]


# -- the shapes a staged run trains, and their RST prices ----------------------------------------


@pytest.mark.parametrize(
    ("family", "spec", "factor"),
    [("gpt", "width,depth", 2), ("t5", "depth@0.2,width@0.5", 2), ("gpt", "depth,depth", 3)],
)
def test_shapes_used_are_the_shapes_the_operators_produce(family, spec, factor):
    model = tiny_model(family)
    options = StagedGrowth.Options(grow=spec, factor=factor)
    expected = [model.shape]
    for op in spec.split(","):
        model = grow(model, None, op.partition("@")[0], factor=factor).model
        expected.append(model.shape)
    assert StagedGrowth.shapes_used(options, expected[0]) == expected
    assert grown_shape(expected[0], spec.split(",")[0].partition("@")[0], factor) == expected[1]
    assert StagedGrowth.shapes_used(StagedGrowth.Options(), expected[0]) == expected[:1] + [
        grown_shape(expected[0], "depth")
    ]


RST_ARGS = [  # gpt-tiny at the settings the shipped cpu-reference table prices (4 layers)
    "data.vocab_size=2048",
    "data.val_fraction=0.05",
    "train.batch_size=8",
    "train.eval_batches=2",
    "train.progress_bar=false",
    "train.eval_every=0",
    "method=staged",  # default: depth growth, so the run also trains 8 layers: not priced
]


def _rst_config(run_dir, *extra):
    from budgetlm.config import load_config

    return load_config("configs/gpt-tiny.yaml", [*RST_ARGS, f"run.dir={run_dir}", *extra])


def test_an_rst_budget_refuses_a_growth_target_the_table_does_not_price(tmp_path):
    from budgetlm.budget.rst import CostTable
    from budgetlm.config import ConfigError
    from budgetlm.train.session import open_run

    table = CostTable.load("cpu-reference")
    start = _rst_config(tmp_path / "x").model
    cfg = _rst_config(tmp_path / "run", "budget=1s-rst")
    with pytest.raises(ConfigError) as refused:
        open_run(cfg, progress=False)
    message = str(refused.value)
    assert "method=staged also trains the model at 1 shape" in message
    assert "n_layers=8" in message and "does not cover" in message  # the shape, named
    assert "budgetlm calibrate CONFIG --set model.n_layers=8 --out TABLE.json" in message
    assert "rst.fallback=flops" in message
    assert not (tmp_path / "run").exists()  # refused before anything was written or trained
    assert start.n_layers is None and len(table.entries) > 0
    # With rst.fallback=flops, explicitly: a warning recorded from the start, not a refusal.
    allowed = _rst_config(tmp_path / "fb", "budget=1s-rst", "rst.fallback=flops")
    trainer = open_run(allowed, progress=False)
    try:
        warnings = trainer.state.info["warnings"]
        assert any("n_layers=8" in w and "FLOPs" in w for w in warnings), warnings
    finally:
        trainer.log.close()


def test_a_steps_budget_does_not_log_rst_for_a_growth_it_cannot_price(tmp_path):
    # Before, the table priced the first shape and the run failed at the first step after the
    # growth; now RST is not logged, as for any shape the table does not cover.
    cfg = _rst_config(tmp_path / "run", "budget=4steps", "methods.staged.grow=depth@0.5")
    trainer, summary, _ = run(cfg)
    assert summary["status"] == "finished" and trainer.state.model.shape.n_layers == 8
    assert summary["spent"]["rst"] == 0


def _planted_table(path, shapes):
    """An RST table pricing exactly `shapes`, from a known cost model (nothing is timed)."""
    from budgetlm.budget.rst import CostTable, Point, ShapeCosts

    table = CostTable({"device": "test"})
    for shape in shapes:
        points = [
            Point(
                phase,
                batch,
                {"decoder": layers},
                scale * (0.004 + 0.002 * batch) + scale * 0.0015 * batch * layers,
            )
            for phase, scale in (("train", 1.0), ("forward", 0.35))
            for batch in (2, 4, 8)
            for layers in range(1, shape.n_layers + 1)
        ]
        table.add(
            ShapeCosts(f"L{shape.n_layers}", dataclasses.asdict(shape), points, {"adamw": 0.005})
        )
    table.save(path)
    return path


def test_a_staged_rst_run_priced_for_both_shapes_resumes_after_its_growth(tmp_path):
    from budgetlm.config import ConfigError
    from budgetlm.methods.growth_operators import deepen_shape
    from budgetlm.train.run_data import resolve_data
    from budgetlm.train.session import open_run

    args = [
        "budget=1.5s-rst",
        "method=staged",
        "methods.staged.grow=depth@0.5",
        "train.eval_every=0",
        "train.checkpoint_every=0",
    ]
    start = resolve_data(tiny_config("gpt", tmp_path / "x", *args), progress=False).shape
    # Covers the start shape only: refused before anything is written.
    only_start = _planted_table(tmp_path / "start.json", [start])
    cfg = tiny_config("gpt", tmp_path / "refused", *args, f"rst.table={only_start}")
    with pytest.raises(ConfigError, match="model.n_layers=4"):
        open_run(cfg, progress=False)
    assert not (tmp_path / "refused").exists()
    # Covers both: runs, and a resume after the growth prices only what is left (the grown
    # shape, not a further doubling of it) and continues bit-exactly.
    both = _planted_table(tmp_path / "both.json", [start, deepen_shape(start)])
    args.append(f"rst.table={both}")
    straight, summary, straight_metrics = run(tiny_config("gpt", tmp_path / "a", *args))
    (growth,) = summary["methods"]["staged"]["growths"]
    assert summary["spent"]["rst"] >= 1.5 and growth["trigger"] == "progress"
    assert summary["steps"] > growth["step"] + 4
    run(tiny_config("gpt", tmp_path / "b", *args), stop_after=growth["step"] + 2)
    resumed, _, metrics = run(tiny_config("gpt", tmp_path / "b", *args), resume="auto")
    same_state(straight, resumed)
    assert losses(metrics) == losses(straight_metrics)
    assert resumed.state.clock.spent["rst"] == straight.state.clock.spent["rst"]
