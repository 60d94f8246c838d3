"""The comparison report, built only from the cells' own files (`budgetlm report DIR`).

`build_report` gathers what the grid produced: per budget and arm the final held-out losses
over seeds, the statistics against the baseline, the curves and where the budget went.
`write_report` renders it three ways: report.html (self-contained: inline CSS and SVG, no
script, no URL), report.md, and two CSV files (summary.csv per arm and budget, cells.csv per
run).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetlm.budget.clock import Budget
from budgetlm.compare.analysis import stats
from budgetlm.compare.analysis.results import CellResult, Tuning, judged_cells, read_cell, tuning
from budgetlm.compare.run.experiment import Cell, Experiment, experiment_from_dict
from budgetlm.compare.run.grid import EXPERIMENT_FILE
from budgetlm.errors import UserError

# The unit each budget's curves are drawn in, by budget unit, and the eval-record key holding it.
CURVE_KEY = {
    "rst": "rst_s",
    "seconds": "wall_s",
    "steps": "step",
    "tokens": "tokens",
    "flops": "flops",
}
PURPOSES = ("training", "selection", "hessian", "optimizer")


@dataclass
class ArmResult:
    """One arm at one budget: its judged runs and their statistics against the baseline."""

    arm: str
    budget: str
    method: str
    optim: str
    lr: float | None
    tuned: bool
    cells: list[CellResult]
    comparison: stats.Comparison | None = None

    @property
    def finished(self) -> list[CellResult]:
        return [c for c in self.cells if c.status == "finished" and c.final_loss is not None]

    @property
    def losses(self) -> list[float]:
        return [float(c.final_loss) for c in self.finished]

    @property
    def mean_std(self) -> tuple[float, float] | None:
        return stats.mean_std(self.losses) if self.losses else None

    def mean_of(self, key: str) -> float | None:
        values = [c.summary["spent"][key] for c in self.finished if c.summary["spent"].get(key)]
        return sum(values) / len(values) if values else None

    def downstream(self, suite: str, task: str | None = None) -> list[float]:
        """Per seed: the suite average (or one task's mean main metric) after fine-tuning."""
        values = []
        for c in self.finished:
            scores = c.downstream.get(suite)
            if scores is None:
                continue
            if task is None:
                values.append(float(scores["average"]))
            elif task in scores["tasks"]:
                values.append(float(scores["tasks"][task]["mean"]))
        return values

    @property
    def steps(self) -> float | None:
        values = [c.summary["steps"] for c in self.finished]
        return sum(values) / len(values) if values else None

    def spend(self, unit: str) -> dict[str, float]:
        """Mean spending per purpose in `unit`, plus work the budget did not charge."""
        totals: dict[str, float] = {}
        for c in self.finished:
            parts = (c.summary.get("spent_by_purpose") or {}).get(unit, {})
            for purpose, amount in parts.items():
                totals[purpose] = totals.get(purpose, 0.0) + amount
            including = (c.summary.get("spent_including_uncharged") or {}).get(unit)
            if including is not None:
                extra = including - c.summary["spent"].get(unit, 0.0)
                totals["uncharged"] = totals.get("uncharged", 0.0) + extra
        n = max(1, len(self.finished))
        return {k: v / n for k, v in totals.items()}

    @property
    def overhead_share(self) -> float | None:
        """Share of the charged budget spent on selection forwards and Hessian passes."""
        unit = "rst" if self.mean_of("rst") else "flops"
        parts = self.spend(unit)
        total = sum(v for k, v in parts.items() if k != "uncharged")
        if not total:
            return None
        return (parts.get("selection", 0.0) + parts.get("hessian", 0.0)) / total


@dataclass
class Downstream:
    """Fine-tuning scores of every arm at one budget on one suite (higher is better)."""

    suite: str
    tasks: list[str]
    comparisons: dict[str, stats.Comparison]  # arm -> against the baseline (suite average)
    protocol: dict[str, Any]

    def verdict(self, arm: str) -> str | None:
        c = self.comparisons.get(arm)
        return c.verdict if c else None


@dataclass
class Report:
    exp: Experiment
    out_dir: Path
    record: dict[str, Any]
    results: dict[str, list[ArmResult]]  # budget -> one per arm, in experiment order
    tunings: list[Tuning]
    downstream: dict[str, list[Downstream]]  # budget -> one per suite any cell was scored on
    failed: list[CellResult]
    missing: list[str]  # cells not finished yet (report of an unfinished grid)
    protocol: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))

    def arm_result(self, budget: str, arm: str) -> ArmResult:
        return next(r for r in self.results[budget] if r.arm == arm)


class ReportError(UserError, ValueError):
    """DIR is not a compare output folder."""


def load_experiment_record(out_dir: Path) -> tuple[Experiment, dict[str, Any]]:
    path = out_dir / EXPERIMENT_FILE
    if not path.is_file():
        raise ReportError(f"{out_dir} is not a compare folder (no {EXPERIMENT_FILE})")
    record = json.loads(path.read_text())
    raw = {k: v for k, v in record.items() if k not in ("source", "command", "updated")}
    raw["base"] = raw.get("base")
    exp = experiment_from_dict(raw, out_dir, source=record.get("source"))
    return exp, record


def build_report(out_dir: str | Path) -> Report:
    out_dir = Path(out_dir)
    exp, record = load_experiment_record(out_dir)
    judged = judged_cells(exp, out_dir)
    results: dict[str, list[ArmResult]] = {}
    tunings: list[Tuning] = []
    seen_failed: dict[str, CellResult] = {}
    missing: list[str] = []
    for budget in exp.budgets:
        row: list[ArmResult] = []
        for arm in exp.arms:
            lr = None
            if arm.tuned:
                t = tuning(exp, arm, budget, out_dir)
                tunings.append(t)
                lr = t.chosen
                for grid_lr in arm.lr_grid:
                    for seed in exp.tuning_seeds:
                        c = read_cell(
                            Cell(arm.name, budget, seed, grid_lr), out_dir, with_curve=False
                        )
                        if c.status == "failed":
                            seen_failed[c.cell.id] = c
            elif arm.lr_grid:
                lr = arm.lr_grid[0]
            cells = [read_cell(c, out_dir) for c in judged[arm.name, budget] or []]
            for c in cells:
                if c.status == "failed" or c.error is not None:  # incl. failed fine-tuning
                    seen_failed[c.cell.id] = c
                elif c.status != "finished":
                    missing.append(c.cell.id)
            if judged[arm.name, budget] is None:
                missing.append(f"{arm.name}/{budget} (LR tuning unfinished)")
            # What the arm trains with: its config at this budget (LR: the chosen one if tuned).
            cfg = exp.config_for(Cell(arm.name, budget, exp.seeds[0], lr))
            row.append(
                ArmResult(
                    arm=arm.name,
                    budget=budget,
                    method=arm.method,
                    optim=cfg.optim.name,
                    lr=None if arm.tuned and lr is None else cfg.optim.lr,
                    tuned=arm.tuned,
                    cells=cells,
                )
            )
        _judge(exp, row)
        results[budget] = row
    downstream = {budget: _downstream(exp, row) for budget, row in results.items()}
    report = Report(
        exp=exp,
        out_dir=out_dir,
        record=record,
        results=results,
        tunings=tunings,
        downstream=downstream,
        failed=list(seen_failed.values()),
        missing=missing,
    )
    report.protocol = _protocol(report)
    return report


def _against_baseline(
    exp: Experiment, data: dict[str, list[float]], lower_is_better: bool = True
) -> dict[str, stats.Comparison]:
    """Every arm with results against the baseline, by the experiment's statistics settings."""
    if exp.baseline not in data:
        return {}
    found = stats.compare_arms(
        data,
        exp.baseline,
        test=exp.stats.test,
        confidence=exp.stats.confidence,
        alpha=exp.stats.alpha,
        correction=exp.stats.correction,
        lower_is_better=lower_is_better,
    )
    return {c.arm: c for c in found}


def _judge(exp: Experiment, row: list[ArmResult]) -> None:
    by_arm = _against_baseline(exp, {r.arm: r.losses for r in row if r.losses})
    for r in row:
        r.comparison = by_arm.get(r.arm)


def _downstream(exp: Experiment, row: list[ArmResult]) -> list[Downstream]:
    suites: dict[str, dict[str, Any]] = {}
    for r in row:
        for c in r.finished:
            for suite, scores in c.downstream.items():
                suites.setdefault(suite, scores)
    out = []
    for suite, example in sorted(suites.items()):
        data = {r.arm: r.downstream(suite) for r in row if r.downstream(suite)}
        comparisons = _against_baseline(exp, data, lower_is_better=False)
        out.append(Downstream(suite, list(example["tasks"]), comparisons, example["protocol"]))
    return out


def _protocol(report: Report) -> dict[str, Any]:
    """What a reader needs to trust (or reproduce) the comparison."""
    from budgetlm.budget.rst import CostTable, TableError

    exp = report.exp
    finished = [c for row in report.results.values() for r in row for c in r.finished]
    revisions, machines, tables = set(), set(), set()
    for c in finished:
        for attempt in (c.meta or {}).get("attempts", []):
            git = attempt.get("git") or {}
            rev = git.get("revision")
            revisions.add(f"{rev[:12]}{' (dirty)' if git.get('dirty') else ''}" if rev else "?")
            device = attempt.get("device") or {}
            machines.add(
                f"{device.get('type', '?')} {device.get('name') or device.get('cpu', '')}".strip()
            )
    cell = exp.final_cells(exp.arms[0], exp.budgets[0], None)[0]
    table_name = exp.config_for(cell).rst.table
    table = None
    try:
        table = CostTable.load(table_name)
        tables.add(table.hash[:16])
    except TableError:
        pass
    version = None
    if finished and finished[0].meta:
        version = finished[0].meta["attempts"][-1].get("budgetlm")
    return {
        "budgets": list(exp.budgets),
        "seeds": list(exp.seeds),
        "baseline": exp.baseline,
        "rst_table": table_name or "shipped CPU reference (cpu-reference)",
        "rst_table_hash": ", ".join(sorted(tables)) or None,
        "rst_machine": table.machine if table else None,
        "code_versions": sorted(revisions),
        "budgetlm": version,
        "machines_that_ran": sorted(machines),
        "stats": vars(exp.stats),
        "tuning_seeds": list(exp.tuning_seeds),
        "command": report.record.get("command"),
        "base_config": str(exp.base) if exp.base else None,
    }


# -- curves -------------------------------------------------------------------------------------


def curve_unit(budget: str) -> tuple[str, str]:
    """The eval-record key that measures a budget's spending, and its axis label."""
    unit = Budget.parse(budget).unit
    label = {
        "rst": "reference-system seconds spent",
        "seconds": "wall seconds spent",
        "steps": "optimizer steps",
        "tokens": "tokens",
        "flops": "FLOPs",
    }[unit]
    return CURVE_KEY[unit], label


def seed_band(
    cells: list[CellResult], key: str
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Held-out loss curves of the seeds on the x of the first seed: mean, min and max.

    Evaluations happen at the same budget fractions in every seed, but spending per step
    differs slightly, so the other seeds are interpolated onto the first seed's x."""
    curves = []
    for c in cells:
        pts = [(r.get(key), r.get("val_loss")) for r in c.curve]
        pts = [(float(x), float(y)) for x, y in pts if x is not None and y is not None]
        if pts:
            curves.append(sorted(pts))
    if not curves:
        return [], [], [], []
    xs = [x for x, _ in curves[0]]
    rows = [[_interp(curve, x) for curve in curves] for x in xs]
    mean = [_nanmean(r) for r in rows]
    lo = [min((v for v in r if not math.isnan(v)), default=math.nan) for r in rows]
    hi = [max((v for v in r if not math.isnan(v)), default=math.nan) for r in rows]
    return xs, mean, lo, hi


def _interp(curve: list[tuple[float, float]], x: float) -> float:
    if x < curve[0][0] or x > curve[-1][0]:
        return math.nan
    for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return curve[-1][1]


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


# -- writing ------------------------------------------------------------------------------------


def write_report(report: Report) -> dict[str, Path]:
    from budgetlm.compare.report.render import render_html, render_markdown

    out = report.out_dir
    paths = {
        "html": out / "report.html",
        "markdown": out / "report.md",
        "summary_csv": out / "summary.csv",
        "cells_csv": out / "cells.csv",
    }
    paths["html"].write_text(render_html(report))
    paths["markdown"].write_text(render_markdown(report))
    _write_summary_csv(report, paths["summary_csv"])
    _write_cells_csv(report, paths["cells_csv"])
    if any(report.downstream.values()):
        paths["downstream_csv"] = out / "downstream.csv"
        _write_downstream_csv(report, paths["downstream_csv"])
    return paths


DOWNSTREAM_COLUMNS = (
    "budget",
    "suite",
    "arm",
    "n",
    "average_mean",
    "average_std",
    "diff_vs_baseline",
    "ci_low",
    "ci_high",
    "p_adjusted",
    "verdict",
    "task",
    "task_mean",
)


@dataclass
class DownstreamRow:
    """One arm's fine-tuning scores at one budget on one suite, over its pre-training seeds."""

    arm: str
    n: int
    mean: float
    std: float
    comparison: stats.Comparison | None
    verdict: str | None
    task_means: dict[str, float | None]


def downstream_table(report: Report, budget: str, d: Downstream) -> list[DownstreamRow]:
    """The rows both the page and downstream.csv show (arms without scores are left out)."""
    rows = []
    for r in report.results[budget]:
        values = r.downstream(d.suite)
        if not values:
            continue
        mean, std = stats.mean_std(values)
        c = d.comparisons.get(r.arm)
        verdict = "baseline" if r.arm == report.exp.baseline else (c.verdict if c else None)
        task_means = {}
        for task in d.tasks:
            scores = r.downstream(d.suite, task)
            task_means[task] = sum(scores) / len(scores) if scores else None
        rows.append(DownstreamRow(r.arm, len(values), mean, std, c, verdict, task_means))
    return rows


def _write_downstream_csv(report: Report, path: Path) -> None:
    """One row per (budget, suite, arm, task): the arm's statistics repeat on its task rows."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=DOWNSTREAM_COLUMNS)
        writer.writeheader()
        for budget, suites in report.downstream.items():
            for d in suites:
                for row in downstream_table(report, budget, d):
                    c = row.comparison
                    for task, task_mean in row.task_means.items():
                        writer.writerow(
                            {
                                "budget": budget,
                                "suite": d.suite,
                                "arm": row.arm,
                                "n": row.n,
                                "average_mean": _csv_value(row.mean),
                                "average_std": _csv_value(row.std),
                                "diff_vs_baseline": _csv_value(c.diff if c else None),
                                "ci_low": _csv_value(c.ci_low if c else None),
                                "ci_high": _csv_value(c.ci_high if c else None),
                                "p_adjusted": _csv_value(c.p_adjusted if c else None),
                                "verdict": row.verdict or "",
                                "task": task,
                                "task_mean": _csv_value(task_mean),
                            }
                        )


SUMMARY_COLUMNS = (
    "budget",
    "arm",
    "method",
    "optim",
    "lr",
    "lr_tuned",
    "n",
    "loss_mean",
    "loss_std",
    "diff_vs_baseline",
    "ci_low",
    "ci_high",
    "p_value",
    "p_adjusted",
    "verdict",
    "steps_mean",
    "rst_s_mean",
    "wall_s_mean",
    "selection_hessian_share",
)


def summary_rows(report: Report) -> list[dict[str, Any]]:
    rows = []
    for budget, arms in report.results.items():
        for r in arms:
            ms = r.mean_std
            c = r.comparison
            rows.append(
                {
                    "budget": budget,
                    "arm": r.arm,
                    "method": r.method,
                    "optim": r.optim,
                    "lr": r.lr,
                    "lr_tuned": r.tuned,
                    "n": len(r.losses),
                    "loss_mean": ms[0] if ms else None,
                    "loss_std": ms[1] if ms else None,
                    "diff_vs_baseline": c.diff if c else None,
                    "ci_low": c.ci_low if c else None,
                    "ci_high": c.ci_high if c else None,
                    "p_value": c.p_value if c else None,
                    "p_adjusted": c.p_adjusted if c else None,
                    "verdict": c.verdict
                    if c
                    else ("baseline" if r.arm == report.exp.baseline else None),
                    "steps_mean": r.steps,
                    "rst_s_mean": r.mean_of("rst"),
                    "wall_s_mean": r.mean_of("seconds"),
                    "selection_hessian_share": r.overhead_share,
                }
            )
    return rows


def _write_summary_csv(report: Report, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for row in summary_rows(report):
            writer.writerow({k: _csv_value(v) for k, v in row.items()})


CELL_COLUMNS = (
    "cell",
    "arm",
    "budget",
    "seed",
    "lr",
    "status",
    "final_val_loss",
    "steps",
    "epochs",
    "rst_s",
    "wall_s",
    "flops",
    "tokens",
    "error",
)


def _write_cells_csv(report: Report, path: Path) -> None:
    cells: dict[str, CellResult] = {}
    for arms in report.results.values():
        for r in arms:
            for c in r.cells:
                cells[c.cell.id] = c
    for c in report.failed:
        cells.setdefault(c.cell.id, c)
    for t in report.tunings:
        for lr in t.scores:
            for seed in report.exp.tuning_seeds:
                cell = Cell(t.arm, t.budget, seed, lr)
                cells.setdefault(cell.id, read_cell(cell, report.out_dir, with_curve=False))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CELL_COLUMNS)
        writer.writeheader()
        for cid in sorted(cells):
            c = cells[cid]
            s = c.summary or {}
            spent = s.get("spent", {})
            writer.writerow(
                {
                    "cell": cid,
                    "arm": c.cell.arm,
                    "budget": c.cell.budget,
                    "seed": c.cell.seed,
                    "lr": _csv_value(c.cell.lr),
                    "status": c.status,
                    "final_val_loss": _csv_value(s.get("final_val_loss")),
                    "steps": s.get("steps", ""),
                    "epochs": s.get("epochs", ""),
                    "rst_s": _csv_value(spent.get("rst")),
                    "wall_s": _csv_value(spent.get("seconds")),
                    "flops": _csv_value(spent.get("flops")),
                    "tokens": _csv_value(spent.get("tokens")),
                    "error": (c.error or {}).get("message", ""),
                }
            )


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value
