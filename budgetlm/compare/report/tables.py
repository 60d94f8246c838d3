"""The report's tables as rows: numbers for the CSV files, formatted text for HTML and Markdown.

A formatted cell may hold a line break ("\\n") where it may wrap: the HTML page breaks the line
there (so wide tables fit the page), Markdown joins the parts with a space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from budgetlm.compare.analysis import stats
from budgetlm.compare.analysis.results import CellResult, read_cell
from budgetlm.compare.report.build import ArmResult, Downstream, Report
from budgetlm.compare.run.experiment import Cell

DASH = "–"

# -- number formatting --------------------------------------------------------------------------


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(value: float | None, digits: int = 4) -> str:
    return DASH if _missing(value) else f"{value:.{digits}f}"


def fmt_p(value: float | None) -> str:
    if _missing(value):
        return DASH
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def fmt_mean_std(mean: float | None, std: float | None) -> str:
    return DASH if _missing(mean) else f"{mean:.4f}\n± {std:.4f}"


def fmt_diff(c: stats.Comparison | None) -> str:
    if c is None or _missing(c.diff):
        return DASH
    if _missing(c.ci_low):
        return f"{c.diff:+.4f}"
    return f"{c.diff:+.4f}\n[{c.ci_low:+.4f}, {c.ci_high:+.4f}]"


def fmt_lr(r: ArmResult) -> str:
    lr = DASH if r.lr is None else f"{r.lr:g}"
    return f"{lr}\n(tuned)" if r.tuned else lr


def fmt_epochs(value: float | None) -> str:
    # Three significant digits: tiny runs see a few thousandths of an epoch, long ones dozens.
    return DASH if _missing(value) else f"{value:.3g}"


def fmt_share(value: float | None) -> str:
    return DASH if _missing(value) else f"{100 * value:.1f}%"


def csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


# -- summary: one row per arm and budget ---------------------------------------------------------

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
    "train_loss_mean",
    "train_loss_std",
    "epochs_mean",
    "steps_mean",
    "rst_s_mean",
    "wall_s_mean",
    "selection_hessian_share",
)

SUMMARY_HEADER = (
    "arm",
    "method · optimizer",
    "LR",
    "n",
    "held-out loss (mean ± std)",
    "Δ vs baseline [CI]",
    "p (adj.)",
    "verdict",
    "training loss (mean ± std)",
    "epochs",
    "steps",
    "RST s",
    "wall s",
    "selection + Hessian",
)
VERDICT_COLUMN = SUMMARY_HEADER.index("verdict")


def verdict(report: Report, r: ArmResult) -> str | None:
    if r.comparison is not None:
        return r.comparison.verdict
    return "baseline" if r.arm == report.exp.baseline else None


def summary_rows(report: Report) -> list[dict[str, Any]]:
    """summary.csv: every arm at every budget, as numbers."""
    rows = []
    for budget, arms in report.results.items():
        for r in arms:
            ms, train, c = r.mean_std, r.train_loss, r.comparison
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
                    "verdict": verdict(report, r),
                    "train_loss_mean": train[0] if train else None,
                    "train_loss_std": train[1] if train else None,
                    "epochs_mean": r.epochs,
                    "steps_mean": r.steps,
                    "rst_s_mean": r.mean_of("rst"),
                    "wall_s_mean": r.mean_of("seconds"),
                    "selection_hessian_share": r.overhead_share,
                }
            )
    return rows


def summary_cells(report: Report, r: ArmResult) -> list[str]:
    """One arm's row of the per-budget table on the page, in SUMMARY_HEADER order."""
    ms, train, c = r.mean_std, r.train_loss, r.comparison
    return [
        r.arm,
        f"{r.method} ·\n{r.optim}",
        fmt_lr(r),
        str(len(r.losses)),
        fmt_mean_std(*(ms or (None, None))),
        fmt_diff(c),
        fmt_p(c.p_adjusted if c else None),
        verdict(report, r) or DASH,
        fmt_mean_std(*(train or (None, None))),
        fmt_epochs(r.epochs),
        fmt(r.steps, 0),
        fmt(r.mean_of("rst"), 1),
        fmt(r.mean_of("seconds"), 1),
        fmt_share(r.overhead_share),
    ]


# -- downstream: fine-tuning scores per suite -----------------------------------------------------

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
        shown = "baseline" if r.arm == report.exp.baseline else (c.verdict if c else None)
        task_means = {}
        for task in d.tasks:
            scores = r.downstream(d.suite, task)
            task_means[task] = sum(scores) / len(scores) if scores else None
        rows.append(DownstreamRow(r.arm, len(values), mean, std, c, shown, task_means))
    return rows


def downstream_header(d: Downstream) -> list[str]:
    return ["arm", "n", f"{d.suite} average", "Δ vs baseline [CI]", "p (adj.)", "verdict", *d.tasks]


DOWNSTREAM_VERDICT_COLUMN = 5


def downstream_cells(report: Report, budget: str, d: Downstream) -> list[list[str]]:
    return [
        [
            row.arm,
            str(row.n),
            fmt_mean_std(row.mean, row.std),
            fmt_diff(row.comparison),
            fmt_p(row.comparison.p_adjusted if row.comparison else None),
            row.verdict or DASH,
            *(fmt(v) for v in row.task_means.values()),
        ]
        for row in downstream_table(report, budget, d)
    ]


def downstream_csv_rows(report: Report) -> list[dict[str, Any]]:
    """One row per (budget, suite, arm, task): the arm's statistics repeat on its task rows."""
    out = []
    for budget, suites in report.downstream.items():
        for d in suites:
            for row in downstream_table(report, budget, d):
                c = row.comparison
                for task, task_mean in row.task_means.items():
                    out.append(
                        {
                            "budget": budget,
                            "suite": d.suite,
                            "arm": row.arm,
                            "n": row.n,
                            "average_mean": row.mean,
                            "average_std": row.std,
                            "diff_vs_baseline": c.diff if c else None,
                            "ci_low": c.ci_low if c else None,
                            "ci_high": c.ci_high if c else None,
                            "p_adjusted": c.p_adjusted if c else None,
                            "verdict": row.verdict,
                            "task": task,
                            "task_mean": task_mean,
                        }
                    )
    return out


# -- LR tuning and failed cells -------------------------------------------------------------------

TUNING_HEADER = ("arm", "budget", "LR", "mean held-out loss on tuning seeds", "")


def tuning_cells(report: Report) -> list[list[str]]:
    rows = []
    for t in report.tunings:
        for lr, score in t.scores.items():
            mark = "chosen" if lr == t.chosen else ""
            if lr == t.chosen and t.at_edge:
                mark = "chosen (edge of the grid: widen it)"
            shown = "failed" if score is not None and math.isinf(score) else fmt(score)
            rows.append([t.arm, t.budget, f"{lr:g}", shown, mark])
    return rows


FAILED_HEADER = ("cell", "error", "message", "log")


def failed_cells(report: Report) -> list[list[str]]:
    return [
        [
            c.cell.id,
            ("fine-tuning: " if c.status == "finished" else "") + (c.error or {}).get("type", "?"),
            (c.error or {}).get("message", "")[:400],
            str(c.run_dir / "cell.log"),
        ]
        for c in report.failed
    ]


# -- cells.csv: one row per run -------------------------------------------------------------------

CELL_COLUMNS = (
    "cell",
    "arm",
    "budget",
    "seed",
    "lr",
    "status",
    "final_val_loss",
    "final_train_loss",
    "steps",
    "epochs",
    "rst_s",
    "wall_s",
    "flops",
    "tokens",
    "error",
)


def cell_rows(report: Report) -> list[dict[str, Any]]:
    """Every run the grid made: judged cells, failed ones and the LR-tuning runs, by id."""
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
    rows = []
    for cid in sorted(cells):
        c = cells[cid]
        s = c.summary or {}
        spent = s.get("spent", {})
        rows.append(
            {
                "cell": cid,
                "arm": c.cell.arm,
                "budget": c.cell.budget,
                "seed": c.cell.seed,
                "lr": c.cell.lr,
                "status": c.status,
                "final_val_loss": s.get("final_val_loss"),
                "final_train_loss": c.train_loss,
                "steps": s.get("steps"),
                "epochs": s.get("epochs"),
                "rst_s": spent.get("rst"),
                "wall_s": spent.get("seconds"),
                "flops": spent.get("flops"),
                "tokens": spent.get("tokens"),
                "error": (c.error or {}).get("message", ""),
            }
        )
    return rows
