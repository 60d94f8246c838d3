"""The reference-system-time (RST) price of a run's steps, from a calibrated cost table."""

from __future__ import annotations

import sys
from typing import Any

from budgetlm.budget.clock import Budget, Work
from budgetlm.budget.rst import CostTable, TableError
from budgetlm.budget.work import forward_pass
from budgetlm.config import Config, ConfigError
from budgetlm.models import ModelShape


def rst_pricing(
    cfg: Config, budget: Budget, shape: ModelShape, warnings: list[str]
) -> tuple[CostTable | None, Any]:
    """The RST cost function of this run: required for RST budgets, logged when covered."""
    try:
        table = CostTable.load(cfg.rst.table, tolerance=cfg.rst.tolerance)
    except TableError as e:
        if budget.unit == "rst":
            raise ConfigError(f"rst.table: {e}") from e
        return None, None

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
