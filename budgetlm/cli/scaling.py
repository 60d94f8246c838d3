"""`budgetlm scaling`: scaling-law fits over finished runs, and the stage-schedule slope rule.

    budgetlm scaling fit runs/gpt-a runs/gpt-b runs/gpt-c --budget 1e15flops
    budgetlm scaling slope runs/gpt-a --kind width

`fit` reads each run's loss curve (train records of metrics.jsonl: tokens seen, loss) and its
non-embedding parameter count (meta.json), fits L(N, S) = (N_c/N)^a_N + (S_c/S)^a_S with S the
tokens seen (budgetlm/methods/stage_schedule.py), prints the constants, and with --budget ranks
candidate shapes (each run's shape, doubled in width, in depth, in both, plus --shape presets) by
the loss the law predicts when that budget of FLOPs is spent on them. Runs whose model changes
during training (stacking, dropping, staged growth) have no single N and are left out.

`slope` prints the smoothed slope of log(loss) against log(FLOPs) along a run and the point at
which the rule of staged training says to grow (or stop).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

CHANGING_METHODS = {"layer_stacking", "layer_drop", "staged"}


def register(subparsers: Any) -> None:
    """Add the `scaling` command (with `fit` and `slope`) to the `budgetlm` parser."""
    p = subparsers.add_parser(
        "scaling",
        help="fit scaling laws to finished runs; find when a run should grow",
        description="Scaling-law tools for staged training: `fit` fits Kaplan-form L(N, S) "
        "to runs and ranks shapes for a budget; `slope` applies the slope rule to a loss curve.",
    )
    sub = p.add_subparsers(dest="scaling_command", required=True, metavar="COMMAND")

    f = sub.add_parser("fit", help="fit L(N, S) to runs; rank shapes for a FLOP budget")
    f.add_argument("runs", nargs="+", help="finished run directories (two sizes at least)")
    f.add_argument("--budget", help="a FLOP budget (e.g. 1e15flops): rank candidate shapes")
    f.add_argument("--shape", action="append", default=[], help="extra candidate preset")
    f.add_argument("--skip", type=float, default=0.1, help="leave out this early fraction")
    f.add_argument("--bins", type=int, default=20, help="log-spaced points per run")
    f.add_argument("--json", action="store_true", help="print the result as JSON")
    f.set_defaults(func=cmd_fit)

    s = sub.add_parser("slope", help="the slope rule of staged training along a run's curve")
    s.add_argument("run", help="a run directory (finished or running)")
    s.add_argument("--kind", choices=["width", "depth", "stop"], default="width")
    s.add_argument("--threshold", type=float, help="override the kind's default threshold")
    s.add_argument("--window", type=int, default=5, help="running-mean window (slopes)")
    s.add_argument("--bins", type=int, default=40, help="log-spaced points along the curve")
    s.set_defaults(func=cmd_slope)


# -- fit ----------------------------------------------------------------------------------------


def _run_points(run_dir: Path, skip: float, bins: int) -> tuple[Any, list[tuple[float, float]]]:
    """(shape, [(tokens, loss)...]) of a fixed-shape run, binned in log-tokens."""
    import yaml

    from budgetlm.config import ConfigError
    from budgetlm.methods.stage_schedule import bin_curve, read_loss_curve
    from budgetlm.models import ModelShape
    from budgetlm.registry import parse_method_spec

    meta_path = run_dir / "meta.json"
    if not meta_path.is_file():
        raise ConfigError(f"{run_dir}: no meta.json; is it a run directory?")
    config = (
        yaml.safe_load((run_dir / "config.yaml").read_text())
        if (run_dir / "config.yaml").is_file()
        else {}
    )
    changing = set(parse_method_spec(config.get("method"))) & CHANGING_METHODS
    if changing:
        raise ConfigError(f"{run_dir}: method {sorted(changing)} changes the model during training")
    shape = ModelShape(**json.loads(meta_path.read_text())["shape"])
    curve = read_loss_curve(run_dir, x="tokens")
    curve = curve[int(len(curve) * skip) :]
    if len(curve) < 2:
        raise ConfigError(f"{run_dir}: fewer than two train records to fit")
    tokens, loss = bin_curve([c for c, _ in curve], [v for _, v in curve], bins)
    return shape, list(zip(tokens.tolist(), loss.tolist(), strict=True))


def _candidates(shapes: list[Any], extra: list[str]) -> list[tuple[str, float, float]]:
    from budgetlm.methods.growth_operators import deepen_shape, widen_shape
    from budgetlm.models import count_params, flops_per_token, get_shape

    seen: dict[Any, str] = {}
    for shape in shapes:
        for label, s in (
            ("", shape),
            (" width x2", widen_shape(shape)),
            (" depth x2", deepen_shape(shape)),
            (" width+depth x2", deepen_shape(widen_shape(shape))),
        ):
            seen.setdefault(s, _label(shape) + label)
    for name in extra:
        s = get_shape(name)
        if shapes:  # the runs' vocabulary, so the embedding term is comparable
            import dataclasses

            s = dataclasses.replace(s, vocab_size=shapes[0].vocab_size)
        seen.setdefault(s, name)
    return [
        (label, count_params(s, embeddings=False), flops_per_token(s)) for s, label in seen.items()
    ]


def _label(shape: Any) -> str:
    depth = f"{shape.n_layers}/{shape.n_decoder_layers}" if shape.family == "t5" else shape.n_layers
    return f"{shape.family} L{depth} d{shape.d_model} ff{shape.d_ff}"


def cmd_fit(args: argparse.Namespace) -> int:
    from budgetlm.budget.clock import Budget
    from budgetlm.config import ConfigError
    from budgetlm.methods.stage_schedule import KAPLAN_2020, fit_kaplan, rank_shapes
    from budgetlm.models import count_params

    shapes, n, s, y = [], [], [], []
    for run in args.runs:
        shape, points = _run_points(Path(run), args.skip, args.bins)
        shapes.append(shape)
        params = count_params(shape, embeddings=False)
        for tokens, loss in points:
            n.append(params)
            s.append(tokens)
            y.append(loss)
    try:
        fit = fit_kaplan(n, s, y)
    except ValueError as e:
        raise ConfigError(f"scaling fit: {e}") from e
    result: dict[str, Any] = {
        "law": "L(N, S) = (N_c/N)^alpha_N + (S_c/S)^alpha_S, N non-embedding params, S tokens",
        "fit": {k: getattr(fit, k) for k in ("n_c", "alpha_n", "s_c", "alpha_s", "rel_rmse")},
        "points": fit.points,
        "runs": len(args.runs),
    }
    if args.budget:
        budget = Budget.parse(args.budget)
        if budget.unit != "flops":
            raise ConfigError(f"--budget must be in FLOPs (e.g. 1e15flops), got {budget}")
        ranked = rank_shapes(fit, budget.amount, _candidates(shapes, args.shape))
        result["budget_flops"] = budget.amount
        result["shapes"] = [c.__dict__ for c in ranked]
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(result["law"])
    c = result["fit"]
    print(
        f"N_c = {c['n_c']:.4g}  alpha_N = {c['alpha_n']:.4f}  "
        f"S_c = {c['s_c']:.4g}  alpha_S = {c['alpha_s']:.4f}  "
        f"(relative RMS error {c['rel_rmse']:.2%}, {fit.points} points from {len(args.runs)} runs)"
    )
    print(
        f"Kaplan et al. 2020 (steps, not tokens): N_c = {KAPLAN_2020['n_c']:.2g}  "
        f"alpha_N = {KAPLAN_2020['alpha_n']}  S_c = {KAPLAN_2020['s_c']:.2g}  "
        f"alpha_S = {KAPLAN_2020['alpha_s']}"
    )
    if args.budget:
        print(f"\npredicted loss for {budget} of training:")
        print(f"  {'shape':36} {'non-emb params':>15} {'tokens':>12} {'loss':>8}")
        for i, cand in enumerate(ranked):
            mark = "  <- best" if i == 0 else ""
            print(
                f"  {cand.label:36} {cand.params:15,.0f} {cand.tokens:12.4g} {cand.loss:8.4f}{mark}"
            )
    return 0


# -- slope --------------------------------------------------------------------------------------


def cmd_slope(args: argparse.Namespace) -> int:
    from budgetlm.config import ConfigError
    from budgetlm.methods.stage_schedule import (
        THRESHOLDS,
        bin_curve,
        grow_index,
        read_loss_curve,
        smoothed_slopes,
    )

    curve = read_loss_curve(Path(args.run), x="flops")
    if len(curve) <= args.window + 1:
        raise ConfigError(f"{args.run}: too few train records for a window of {args.window}")
    flops, loss = bin_curve([c for c, _ in curve], [v for _, v in curve], args.bins)
    threshold = THRESHOLDS[args.kind] if args.threshold is None else args.threshold
    smooth = smoothed_slopes(flops, loss, args.window)
    print(
        f"slope of log(loss) vs log(FLOPs), running mean over {args.window} (threshold {threshold})"
    )
    for i, value in enumerate(smooth):
        point = i + args.window
        print(f"  flops {flops[point]:.4g}  loss {loss[point]:.4f}  slope {value:+.4f}")
    index = grow_index(flops, loss, threshold, args.window)
    verb = "stop" if args.kind == "stop" else f"grow ({args.kind})"
    if index is None:
        print(f"not yet: the slope has not risen above {threshold} after its minimum")
    else:
        print(f"{verb} at flops {flops[index]:.4g} (loss {loss[index]:.4f})")
    return 0
