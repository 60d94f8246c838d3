"""Measure a cost table on this machine: `budgetlm calibrate CONFIG`.

Each point times what the training loop does for one micro-batch — build the batch from the run's
own data and objective, move it to the device, forward (and backward) with the first L blocks of
each stack active — after warm-up, synchronised on CUDA, as the median of repeats. The optimizer
step (clipping included) is timed separately for every optimizer asked for. The result is fitted
and checked before it is written (budgetlm/budget/rst.py). The timing harness itself is in
budgetlm/budget/timing.py, shared with the table probe (`rst.verify=probe`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from budgetlm.api import Method, StepPlan
from budgetlm.budget.rst import Point, ShapeCosts, fit_loop_overheads
from budgetlm.budget.timing import machine_description, median_seconds, pass_function, round_robin
from budgetlm.config import ConfigError
from budgetlm.optim.modes import to_train_mode
from budgetlm.registry import check_optimizer_name, optimizer_provider


def depth_grid(depth: int, max_points: int = 8) -> list[int]:
    """Depths to measure: every depth for shallow stacks, an even spread (with 1 and max) else."""
    if depth <= max_points:
        return list(range(1, depth + 1))
    step = (depth - 1) / (max_points - 1)
    return sorted({round(1 + i * step) for i in range(max_points)})


def layer_configs(stacks: dict[str, int]) -> list[dict[str, int]]:
    """Vary one stack's depth at a time with the others full (enough to fit per-stack terms)."""
    configs = []
    for name, depth in stacks.items():
        for d in depth_grid(depth):
            config = dict(stacks)
            config[name] = d
            if config not in configs:
                configs.append(config)
    return configs


def calibrate_shape(
    model: torch.nn.Module,
    stream: Any,
    label: str,
    *,
    batch_sizes: Sequence[int],
    optimizers: dict[str, dict[str, Any]],
    grad_clip: float,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    repeats: int = 5,
    warmup: int = 2,
    progress: bool = True,
    tolerance: float = 0.25,
    retries: int = 3,
) -> ShapeCosts:
    """Measure forward and training passes over a grid, and each optimizer's step."""
    from budgetlm.budget.work import stack_sizes
    from budgetlm.optim import build_optimizer

    shape = model.shape
    configs = layer_configs(stack_sizes(shape))
    tasks: list[tuple[str, int, dict[str, int], Callable[[], None]]] = []
    for batch_size in batch_sizes:
        for active_counts in configs:
            for phase in ("train", "forward"):
                fn = pass_function(
                    model, stream, phase, batch_size, active_counts, device, autocast
                )
                tasks.append((phase, batch_size, dict(active_counts), fn))

    total = (warmup + repeats) * len(tasks) + len(optimizers)
    bar = tqdm(total=total, desc=f"calibrating {label}", disable=None if progress else True)
    model.train()
    times = round_robin([fn for *_, fn in tasks], device, warmup, repeats, bar.update)
    points = [
        Point(phase, batch_size, active, statistics.median(ts))
        for (phase, batch_size, active, _), ts in zip(tasks, times, strict=True)
    ]
    _remeasure_outliers(tasks, points, device, warmup, repeats, tolerance, retries)

    # Optimizer steps skip parameters without a gradient (dropped or not yet stacked blocks), so
    # they are measured at every depth of the grid, like the passes.
    optimizer_seconds: dict[str, float] = {}
    optimizer_points: dict[str, list[dict[str, Any]]] = {}
    batch = {k: v.to(device) for k, v in stream.batch(0, 0, batch_sizes[0]).items()}
    for name, settings in optimizers.items():
        optimizer = build_optimizer(name, model, device=device, **settings)
        to_train_mode(optimizer)  # a schedule-free optimizer steps only in train mode
        optimizer_points[name] = []
        for active_counts in configs:
            model.zero_grad(set_to_none=True)
            with autocast():
                active = {s: list(range(n)) for s, n in active_counts.items()}
                model(batch, active=active).loss.backward()

            def step(optimizer: torch.optim.Optimizer = optimizer) -> None:
                if grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()

            seconds = median_seconds(step, device, warmup, repeats)
            optimizer_points[name].append({"active": dict(active_counts), "seconds": seconds})
        full = max(optimizer_points[name], key=lambda pt: sum(pt["active"].values()))
        optimizer_seconds[name] = full["seconds"]
        model.zero_grad(set_to_none=True)
        bar.update()
    bar.close()
    return ShapeCosts(label, dataclasses.asdict(shape), points, optimizer_seconds, optimizer_points)


def _remeasure_outliers(
    tasks: list,
    points: list[Point],
    device: torch.device,
    warmup: int,
    repeats: int,
    tolerance: float,
    retries: int,
) -> None:
    """Time again the points far from the fit, keeping the lower median.

    Another process on the machine only ever makes a pass slower, so the lower of two medians is
    the better estimate. A table file is never re-measured when loaded: a wrong entry written by
    hand (the original 7-layer typo) still fails the checks.
    """
    order = {id(p): i for i, p in enumerate(points)}
    for _ in range(retries):
        entry = ShapeCosts("calibration", {}, points, {})
        entry.refit()
        by_phase = {ph: [p for p in points if p.phase == ph] for ph in entry.fit}
        suspects = [
            order[id(p)]
            for ph, pts in by_phase.items()
            for p, r in zip(pts, entry.residuals[ph], strict=True)
            if abs(r) > tolerance / 2
        ]
        if not suspects:
            return
        for i in suspects:
            again = median_seconds(tasks[i][3], device, warmup, repeats)
            points[i].seconds = min(points[i].seconds, again)


def calibrate_config(
    cfg: Any,
    *,
    batch_sizes: Sequence[int] | None = None,
    optimizers: Sequence[str] | None = None,
    repeats: int = 5,
    warmup: int = 2,
    progress: bool = True,
    tolerance: float = 0.25,
    loop_steps: int = 24,
) -> tuple[ShapeCosts, dict[str, Any]]:
    """Measure the model shape a run config trains (after fitting it to its data).

    `loop_steps`: steps of each whole-loop timing run that fits the loop's overheads
    (`measure_loop_overhead`; the first quarter are warm-up).

    Default batch sizes: the micro-batch and its half and quarter. Default optimizers: the
    config's own and AdamW. Returns the entry and the machine description.
    """
    from budgetlm.data import BatchStream
    from budgetlm.models import build_model
    from budgetlm.train.run_data import resolve_data
    from budgetlm.train.runtime import autocast_for, resolve_device

    device = resolve_device(cfg.train.device)
    autocast = autocast_for(cfg.train.precision, device)
    data = resolve_data(cfg, progress=progress)
    micro = cfg.train.micro_batch_size or cfg.train.batch_size
    sizes = sorted(set(batch_sizes or [max(1, micro // 4), max(1, micro // 2), micro]))
    names = list(dict.fromkeys(optimizers or [cfg.optim.name, "adamw"]))
    for name in names:  # built-ins, registered plug-ins and import paths, before any timing
        try:
            check_optimizer_name(name)
            optimizer_provider(name)
        except ValueError as e:
            raise ConfigError(f"--optimizers: {e}") from e
    torch.manual_seed(cfg.run.seed)
    model = build_model(data.shape).to(device)
    stream = BatchStream(data.dataset.tokens("train"), data.objective, max(sizes), seed=0)
    base = {
        "lr": cfg.optim.lr,
        "betas": cfg.optim.betas,
        "eps": cfg.optim.eps,
        "weight_decay": cfg.optim.weight_decay,
    }
    # The config's optimizer options belong to its own optimizer only.
    settings = {
        n: {**base, "options": cfg.optim.options if n == cfg.optim.name else {}} for n in names
    }
    label = (
        cfg.model.preset
        + "".join(
            f" {k}={v}"
            for k, v in sorted(dataclasses.asdict(cfg.model).items())
            if k != "preset" and v is not None
        )
        + f" vocab={data.shape.vocab_size}"
    )
    entry = calibrate_shape(
        model,
        stream,
        label,
        batch_sizes=sizes,
        optimizers=settings,
        grad_clip=cfg.optim.grad_clip,
        device=device,
        autocast=autocast,
        repeats=repeats,
        warmup=warmup,
        progress=progress,
        tolerance=tolerance,
    )
    entry.refit()
    overheads = measure_loop_overhead(cfg, entry, steps=loop_steps)
    entry.loop_overhead, entry.micro_batch_overhead = overheads.per_step, overheads.per_micro_batch
    if progress:
        print(f"{label}: {overheads.describe()}", file=sys.stderr)
    machine = machine_description(device)
    machine["dtype"] = "bf16" if device.type == "cuda" and cfg.train.precision != "fp32" else "fp32"
    # Passes are timed eager: compiling every (batch size, active depth) point of the grid would
    # take longer than measuring it. A run with train.compile=true is charged these eager costs.
    machine["compile"] = False
    return entry, machine


def overhead_counts(micro_batches: int) -> tuple[int, int]:
    """The two micro-batch counts whose loop steps fit the overheads: the config's own and one
    far enough from it to separate a per-step from a per-micro-batch cost (double a small count,
    a quarter of a large one, so that a 12-micro-batch config is not timed at 24)."""
    other = 2 * micro_batches if micro_batches < 4 else micro_batches // 4
    return tuple(sorted((micro_batches, other)))  # type: ignore[return-value]


@dataclass
class LoopOverheads:
    """The loop's overheads fitted from whole steps, and what they were fitted from.

    `checks`: whole steps at another depth (not used in the fit), each with its measured and
    priced seconds: how well the table prices a step it was not fitted to.
    """

    per_step: float
    per_micro_batch: float
    counts: list[int]
    residuals: list[float]
    checks: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        text = (
            f"loop overhead {1e3 * self.per_step:.2f} ms/step + "
            f"{1e3 * self.per_micro_batch:.2f} ms/micro-batch (fitted at {self.counts} "
            "micro-batches)"
        )
        for c in self.checks:
            layers = ", ".join(f"{s}={n}" for s, n in sorted(c["active"].items()))
            text += (
                f"; a step at {layers} measured {c['measured']:.4g}s, priced "
                f"{c['priced']:.4g}s ({c['measured'] / c['priced'] - 1:+.1%})"
            )
        return text


def measure_loop_overhead(
    cfg: Any,
    entry: ShapeCosts,
    steps: int = 24,
    counts: Sequence[int] | None = None,
    check_depth: bool = True,
) -> LoopOverheads:
    """(per step, per micro-batch) cost of the real loop beyond its passes and optimizer step.

    Planning, charging, logging and Python between passes cost a few milliseconds a step: next to
    the passes of a tiny model on a CPU that is several percent, and more for steps whose passes
    are cheap (a 1-layer stacking stage). On a GPU part of it scales with the micro-batches (a
    table with one per-step figure, measured at 12 micro-batches, over-charged runs at 2 by
    7-19%). So whole loop steps are timed at two micro-batch counts (`overhead_counts`: the same
    micro-batch, the global batch changed), and per count the median over the steps after a
    warm-up, less the priced passes and optimizer step, is fitted by `fit_loop_overheads`.
    `check_depth`: then time steps with half the layers of each stack active (as layer dropping
    or stacking train) and compare them with their price, overheads included.
    """
    micro = cfg.train.micro_batch_size or cfg.train.batch_size
    own = cfg.train.batch_size // micro
    counts = list(counts or overhead_counts(own))
    full = {s: max(p.active[s] for p in entry.points) for s in entry.stacks}

    def priced_work(k: int, active: dict[str, int]) -> float:
        optimizer = entry.optimizer_step_seconds(cfg.optim.name, active) or 0.0
        return k * entry.pass_seconds("train", micro, active) + optimizer

    residuals = []
    for k in counts:
        wall = statistics.median(loop_step_seconds(cfg, k, steps))
        residuals.append(wall - priced_work(k, full))
    per_step, per_micro = fit_loop_overheads(counts, residuals)
    result = LoopOverheads(per_step, per_micro, counts, residuals)
    half = {s: max(1, n // 2) for s, n in full.items()}
    if check_depth and half != full:
        k = own
        measured = statistics.median(loop_step_seconds(cfg, k, steps, active=half))
        priced = priced_work(k, half) + per_step + k * per_micro
        result.checks.append(
            {"micro_batches": k, "active": half, "measured": measured, "priced": priced}
        )
    return result


class _FixedDepth(Method):
    """Trains the first blocks of each stack every step (what a dropped or not yet stacked layer
    leaves): given to the timing run directly, never named in a config."""

    name = "calibration_fixed_depth"
    leaves_parameters_unused = True

    def __init__(self, active: dict[str, int]) -> None:
        self.active = active

    def plan_step(self, state: Any, plan: StepPlan) -> None:
        plan.active = {s: list(range(n)) for s, n in self.active.items()}


def loop_step_seconds(
    cfg: Any, micro_batches: int, steps: int = 24, active: dict[str, int] | None = None
) -> list[float]:
    """Wall seconds of each training step of a short baseline run at `micro_batches` per step
    (the config's micro-batch size), after a quarter of the steps as warm-up; `active`: the
    first blocks of each stack trained (default all).

    The training loop's own clock (`wall_s` in metrics.jsonl): evaluation, checkpoints and
    trackers are off, compile too (the passes were timed eager; so is the loop around them).
    """
    import tempfile
    from pathlib import Path

    from budgetlm.train.metrics import read_metrics
    from budgetlm.train.session import open_run

    micro = cfg.train.micro_batch_size or cfg.train.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = dataclasses.replace(
            cfg,
            budget=f"{steps}steps",
            method="none",
            methods={},
            run=dataclasses.replace(cfg.run, dir=str(Path(tmp) / "run")),
            train=dataclasses.replace(
                cfg.train,
                batch_size=micro * micro_batches,
                micro_batch_size=micro,
                eval_every=0.0,
                checkpoint_every=0.0,
                log_every=1,
                progress_bar=False,
                compile=False,
                loggers=[],  # a timing run in a temporary folder: nothing for trackers
            ),
        )
        methods = [_FixedDepth(active)] if active is not None else []
        trainer = open_run(run_cfg, progress=False, methods=methods)
        try:
            trainer.run()
        finally:
            trainer.log.close()
        walls = [
            m["wall_s"]
            for m in read_metrics(trainer.run_dir / "metrics.jsonl")
            if m["event"] == "train"
        ]
    return [b - a for a, b in zip(walls, walls[1:], strict=False)][steps // 4 :]
