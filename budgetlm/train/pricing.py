"""The reference-system-time (RST) price of a run's steps, from a calibrated cost table.

The table named by `rst.table` (default: the shipped CPU reference) is loaded and checked for every
run, whatever the budget's unit: a broken or tampered table is refused (exit 2) even when it only
feeds the RST column of a steps budget. `rst.verify=probe` also times a few of its passes here
(docs/rst.md, "What the checks catch").

Every shape the run will train is priced before it starts (`run_shapes`: the configured shape
and what its methods grow it into, `Method.shapes_used`), never only the first: a growth target
the table does not cover would otherwise fail the run in its middle, or be priced silently by
FLOPs. Under an RST budget an uncovered shape is refused with the calibrate command that measures
it, unless `rst.fallback=flops` (then the estimate is a recorded warning from the start); under
any other budget the run simply does not log RST.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from budgetlm.budget.clock import Budget, Work
from budgetlm.budget.rst import CostTable, Measure, TableError, probe_table
from budgetlm.budget.work import forward_pass
from budgetlm.config import Config, ConfigError
from budgetlm.models import ModelShape


def rst_pricing(
    cfg: Config,
    budget: Budget,
    shape: ModelShape,
    warnings: list[str],
    measure: Measure | None = None,
    configured: ModelShape | None = None,
) -> tuple[CostTable | None, Any]:
    """The RST cost function of this run: required for RST budgets, logged when covered.

    The table itself must load and pass its checks for any budget unit. `shape` is the shape the
    run starts at now (a run resumed after a growth: the grown one), `configured` the config's
    shape fitted to the data (default: the config's preset and knobs with `shape`'s vocabulary
    and target length, which no growth changes). The shapes priced are `shape` and those the run
    has still to grow into (`run_shapes`). `measure` replaces the probe's timing (tests plant
    figures with it).
    """
    try:
        table = CostTable.load(cfg.rst.table, tolerance=cfg.rst.tolerance)
        if cfg.rst.verify == "probe":
            verify_by_probe(table, shape, measure)
    except TableError as e:
        raise ConfigError(f"rst.table: {e}") from e

    def record(message: str) -> None:
        if message not in warnings:
            warnings.append(message)
            print(f"warning: {message}", file=sys.stderr)

    cost = table.cost_function(cfg.optim.name, fallback=cfg.rst.fallback, on_warning=record)
    start = configured if configured is not None else configured_shape(cfg, shape)
    shapes = run_shapes(cfg, start)
    # Resumed after a growth: what is left from here; a shape grown otherwise (`budgetlm
    # grow`): that shape and what the methods grow it into.
    shapes = shapes[shapes.index(shape) :] if shape in shapes else run_shapes(cfg, shape)
    uncovered: list[tuple[ModelShape, str]] = []
    for used in shapes:
        probe = Work(passes=(forward_pass(used, 1, None),), tokens=0, optimizer=cfg.optim.name)
        try:
            cost(probe)
        except TableError as e:
            if budget.unit != "rst":
                return table, None  # not covered: RST is simply not logged for this run
            if used == shape:
                raise ConfigError(str(e)) from e
            uncovered.append((used, str(e)))
    if uncovered:
        raise ConfigError(_method_shapes_not_covered(cfg, start, uncovered))
    return table, cost


def run_shapes(cfg: Config, configured: ModelShape) -> list[ModelShape]:
    """Every model shape a run of `cfg` trains, from its configured shape (fitted to the data):
    that shape, then what each method adds (`Method.shapes_used`: staged growth's targets),
    each shape once, in order."""
    from budgetlm.methods import configured_methods

    shapes = [configured]
    try:
        for cls, options in configured_methods(cfg.method, cfg.methods):
            shapes += [s for s in cls.shapes_used(options, configured) if s not in shapes]
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return shapes


def configured_shape(cfg: Config, shape: ModelShape) -> ModelShape:
    """The config's shape fitted to the data as `shape` was (run_data.py fits the vocabulary
    and T5's target length, which growth never changes)."""
    from budgetlm.config import model_overrides
    from budgetlm.models import get_shape

    base = get_shape(cfg.model.preset, **model_overrides(cfg.model))
    return dataclasses.replace(base, vocab_size=shape.vocab_size, target_len=shape.target_len)


def _method_shapes_not_covered(
    cfg: Config, start: ModelShape, uncovered: list[tuple[ModelShape, str]]
) -> str:
    """The refusal of shapes the run's methods train (a growth target, a warm-up's shorter
    sequences) that the table does not price: every one of them, each with its command."""
    lines = []
    for target, why in uncovered:
        changed = " ".join(
            f"model.{f.name}={getattr(target, f.name)}"
            for f in dataclasses.fields(target)
            if getattr(target, f.name) != getattr(start, f.name)
        )
        lines.append(
            f"the run's config with {changed} ({why}): `budgetlm calibrate CONFIG --set "
            f"{changed} --out TABLE.json`"
        )
    return (
        f"refused before the run starts: method={cfg.method} also trains the model at "
        f"{len(uncovered)} shape(s) that the RST budget must price and the table does not: "
        + "; ".join(lines)
        + " (TABLE.json is extended if it exists; measure the starting shape into it too)"
    )


def verify_by_probe(table: CostTable, shape: ModelShape, measure: Measure | None = None) -> None:
    """rst.verify=probe: time a few passes of the run's entry and the cheapest other one.

    In a multi-process run only rank 0 measures (ranks sharing a CPU would slow each other) and
    every rank gets its verdict, so all of them refuse or none does.
    """
    import torch.distributed as dist

    from budgetlm.budget.timing import measure_probe, probe_machine

    here = probe_machine(table.machine.get("device", "cpu"))
    if measure is None:

        def measure(entry, points, look):  # noqa: ANN001, ANN202
            return measure_probe(entry, points, table.machine, look)

    shared = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    verdict: list[str | None] = [None]
    if not shared or dist.get_rank() == 0:
        try:
            result = probe_table(table, here, measure, first=shape)
            print(
                f"rst.verify=probe: {table.source or 'the table'} agrees with this machine "
                f"(measured/priced: {result.summary()})",
                file=sys.stderr,
            )
        except TableError as e:
            verdict[0] = str(e)
    if shared:
        dist.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        raise TableError(verdict[0])
