"""The reference-system-time (RST) price of a run's steps, from a calibrated cost table.

The table named by `rst.table` (default: the shipped CPU reference) is loaded and checked for every
run, whatever the budget's unit: a broken or tampered table is refused (exit 2) even when it only
feeds the RST column of a steps budget. `rst.verify=probe` also times a few of its passes here
(docs/rst.md, "What the checks catch").
"""

from __future__ import annotations

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
) -> tuple[CostTable | None, Any]:
    """The RST cost function of this run: required for RST budgets, logged when covered.

    The table itself must load and pass its checks for any budget unit. `measure` replaces the
    probe's timing (tests plant figures with it).
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
    probe = Work(passes=(forward_pass(shape, 1, None),), tokens=0, optimizer=cfg.optim.name)
    try:
        cost(probe)
    except TableError as e:
        if budget.unit == "rst":
            raise ConfigError(str(e)) from e
        return table, None  # not covered: RST is simply not logged for this run
    return table, cost


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
