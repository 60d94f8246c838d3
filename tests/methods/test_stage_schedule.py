import argparse
import dataclasses
import json

import numpy as np
import pytest
import yaml

from budgetlm.methods.stage_schedule import (
    THRESHOLDS,
    bin_curve,
    fit_kaplan,
    grow_index,
    log_slopes,
    rank_shapes,
    read_loss_curve,
    relative_fraction,
    rule_index,
    smoothed_slopes,
)
from budgetlm.models import count_params, get_shape

from .arch_helpers import (
    one_thread,  # noqa: F401 - autouse fixture: one thread
    run,
    tiny_config,
)


def test_slope_of_a_power_law_is_its_exponent():
    c = np.geomspace(1e12, 1e16, 30)
    loss = 5.0 * c**-0.08
    np.testing.assert_allclose(log_slopes(c, loss), -0.08, rtol=1e-9)
    smooth = smoothed_slopes(c, loss, window=5)
    assert smooth.shape == (30 - 5,)
    np.testing.assert_allclose(smooth, -0.08, rtol=1e-9)


def _curve(slopes, start=1e12, step=1.2):
    """A curve whose consecutive log-log slopes are `slopes`."""
    c = start * step ** np.arange(len(slopes) + 1)
    log_loss = np.concatenate([[np.log(4.0)], np.log(4.0) + np.cumsum(slopes * np.log(step))])
    return c, np.exp(log_loss)


def test_rule_fires_when_the_smoothed_slope_rises_above_the_threshold_after_its_minimum():
    # flat start (slope 0, above every threshold: must not fire), steep drop, slow flattening
    slopes = np.concatenate([[0.0] * 6, [-0.4] * 6, np.linspace(-0.3, -0.01, 200)])
    c, loss = _curve(slopes)
    smooth = smoothed_slopes(c, loss, 5)
    i = rule_index(smooth, THRESHOLDS["width"])
    assert i is not None
    assert smooth[i] > THRESHOLDS["width"] and smooth[i - 1] <= THRESHOLDS["width"]
    assert i > int(np.argmin(smooth))
    point = grow_index(c, loss, THRESHOLDS["width"], 5)
    assert point == i + 5
    # depth's threshold is lower (steeper), so the depth rule fires first; stop in between
    assert grow_index(c, loss, THRESHOLDS["depth"]) < grow_index(c, loss, THRESHOLDS["stop"])
    assert grow_index(c, loss, THRESHOLDS["stop"]) < point
    # A curve that is still steep has not reached the point yet.
    assert grow_index(*_curve(np.full(20, -0.3)), THRESHOLDS["width"]) is None


def test_binning_tames_step_noise():
    rng = np.random.default_rng(0)
    c = np.linspace(1e12, 1e14, 3000)
    loss = 6.0 * (c / 1e12) ** -0.1 * np.exp(rng.normal(0, 0.02, c.size))
    raw = smoothed_slopes(c, loss)
    bc, bl = bin_curve(c, loss, bins=20)
    binned = smoothed_slopes(bc, bl)
    assert np.std(raw) > 1.0  # useless per step
    assert np.all(np.abs(binned + 0.1) < 0.03)


def test_kaplan_fit_recovers_known_constants():
    truth = {"n_c": 3e8, "alpha_n": 0.3, "s_c": 5e5, "alpha_s": 0.5}
    n, s, y = [], [], []
    for params in (1e5, 3e5, 1e6, 3e6):
        for tokens in np.geomspace(1e6, 1e8, 15):
            n.append(params)
            s.append(tokens)
            y.append(
                (truth["n_c"] / params) ** truth["alpha_n"]
                + (truth["s_c"] / tokens) ** truth["alpha_s"]
            )
    fit = fit_kaplan(n, s, y)
    assert fit.alpha_n == pytest.approx(truth["alpha_n"], rel=0.02)
    assert fit.alpha_s == pytest.approx(truth["alpha_s"], rel=0.02)
    assert fit.n_c == pytest.approx(truth["n_c"], rel=0.15)
    assert fit.s_c == pytest.approx(truth["s_c"], rel=0.15)
    assert fit.rel_rmse < 1e-3
    with pytest.raises(ValueError, match="two model sizes"):
        fit_kaplan([1e6] * 5, s[:5], y[:5])
    # Under a fixed compute budget the best size is interior: not the largest, not the smallest.
    shapes = [(f"N={p:g}", p, 6 * p) for p in np.geomspace(1e4, 1e9, 11)]
    ranked = rank_shapes(fit, 1e15, shapes)
    assert ranked[0].label not in (shapes[0][0], shapes[-1][0])
    assert [c.loss for c in ranked] == sorted(c.loss for c in ranked)


def _fake_run(path, shape, n_c=1e9, a_n=0.25, s_c=1e6, a_s=0.4, steps=60):
    """A finished run directory whose curve follows a known law exactly."""
    path.mkdir(parents=True)
    params = count_params(shape, embeddings=False)
    lines = []
    for step in range(1, steps + 1):
        tokens = 4096 * step
        loss = (n_c / params) ** a_n + (s_c / tokens) ** a_s
        flops = 6.0 * params * tokens
        record = {"event": "train", "step": step, "tokens": tokens, "flops": flops, "loss": loss}
        lines.append(json.dumps(record))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    meta = {"shape": dataclasses.asdict(shape), "params_non_embedding": params}
    (path / "meta.json").write_text(json.dumps(meta))
    (path / "config.yaml").write_text(yaml.safe_dump({"method": "none"}))
    return path


def _parser():
    from budgetlm.cli.scaling import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser


def test_scaling_fit_command_prints_constants_and_ranks_shapes(tmp_path, capsys):
    base = get_shape("gpt-tiny", n_layers=2, d_model=64, d_ff=256, n_heads=2, d_kv=32)
    runs = [
        _fake_run(tmp_path / f"run{i}", dataclasses.replace(base, d_model=d, d_ff=4 * d))
        for i, d in enumerate((32, 64, 128))
    ]
    args = _parser().parse_args(
        ["scaling", "fit", *map(str, runs), "--budget", "1e13flops", "--json"]
    )
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fit"]["alpha_n"] == pytest.approx(0.25, rel=0.05)
    assert out["fit"]["alpha_s"] == pytest.approx(0.4, rel=0.05)
    assert len(out["shapes"]) >= 4 and out["shapes"][0]["loss"] <= out["shapes"][-1]["loss"]
    args = _parser().parse_args(["scaling", "fit", *map(str, runs), "--budget", "1e13flops"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "alpha_N" in text and "<- best" in text


def test_scaling_fit_refuses_runs_whose_model_changes(tmp_path):
    from budgetlm.config import ConfigError

    run_dir = _fake_run(tmp_path / "staged", get_shape("gpt-tiny"))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"method": "staged"}))
    args = _parser().parse_args(["scaling", "fit", str(run_dir), str(run_dir)])
    with pytest.raises(ConfigError, match="changes the model"):
        args.func(args)


def test_slope_command_on_a_real_run(tmp_path, capsys):
    cfg = tiny_config("gpt", tmp_path / "run", "budget=30steps", "train.eval_every=0")
    run(cfg)
    curve = read_loss_curve(tmp_path / "run")
    assert len(curve) == 30 and curve == sorted(curve)  # flops increase along the run
    args = _parser().parse_args(
        ["scaling", "slope", str(tmp_path / "run"), "--bins", "12", "--threshold", "-0.0001"]
    )
    assert args.func(args) == 0
    assert "slope of log(loss)" in capsys.readouterr().out


def test_staged_growth_triggered_by_the_slope_rule_is_deterministic(tmp_path):
    # Absolute thresholds a tiny run's real (noisy) curve crosses early: the rule on a real
    # curve, not its default values, is under test; no fallback, so only the rule can grow.
    args = [
        "budget=40steps",
        "method=staged",
        "methods.staged.grow=depth",
        "methods.staged.trigger=slope",
        "methods.staged.slope_points=4",
        "methods.staged.window=2",
        "methods.staged.thresholds=absolute",
        "methods.staged.depth_threshold=-0.05",
        "methods.staged.fallback=0",
        "train.eval_every=0",
        "train.checkpoint_every=0",
    ]
    a, *_ = run(tiny_config("gpt", tmp_path / "a", *args))
    b, *_ = run(tiny_config("gpt", tmp_path / "b", *args))
    (method_a,) = a.state.methods
    (method_b,) = b.state.methods
    assert method_a.done == 1 and method_a.history == method_b.history
    assert a.state.model.shape.n_layers == 4
    assert 0.1 < method_a.history[0]["p"] < 1 and method_a.history[0]["trigger"] == "slope"


def test_relative_thresholds_are_the_papers_fractions_of_the_steepest_slope():
    assert relative_fraction(THRESHOLDS["width"]) == pytest.approx(0.0475 / 0.76)
    assert relative_fraction(THRESHOLDS["depth"]) == pytest.approx(0.0757, abs=1e-4)
    # On a curve whose steepest smoothed slope is Kaplan's -alpha_S both modes fire together.
    slopes = np.concatenate([[-0.76] * 8, np.linspace(-0.76, -0.001, 120)])
    c, loss = _curve(slopes)
    for kind in ("width", "depth"):
        absolute = grow_index(c, loss, THRESHOLDS[kind])
        relative = grow_index(c, loss, THRESHOLDS[kind], relative=True)
        assert absolute is not None and abs(relative - absolute) <= 1


def test_relative_rule_is_scale_free_and_the_absolute_one_is_not():
    """Scaling every slope of a curve by k (log L -> k·log L: a steeper or shallower run of
    the same shape) moves the absolute decision but not the relative one."""
    slopes = np.concatenate([[0.0] * 6, [-0.3] * 10, np.linspace(-0.3, -0.005, 150)])
    decisions = {}
    for k in (0.15, 1.0, 4.0):
        c, loss = _curve(k * slopes)
        decisions[k] = (
            grow_index(c, loss, THRESHOLDS["depth"], relative=True),
            grow_index(c, loss, THRESHOLDS["depth"]),
        )
    relative = {d[0] for d in decisions.values()}
    assert len(relative) == 1 and None not in relative
    (index,) = relative
    smooth = smoothed_slopes(*_curve(slopes), 5)
    # It fires where the smoothed slope has risen above 7.57% of its steepest value.
    assert smooth[index - 5] > 0.0757 * smooth.min() >= smooth[index - 6]
    absolute = [d[1] for d in decisions.values()]
    assert absolute[0] is None  # shallow: never below the paper's slope, so never "after" it
    assert absolute[1] != absolute[2]  # steep: crosses elsewhere
    # A flat or rising curve never fires a relative rule.
    c, loss = _curve(np.full(30, 0.01))
    assert grow_index(c, loss, THRESHOLDS["depth"], relative=True) is None
