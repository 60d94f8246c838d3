"""The report's tables as rows: numbers for the CSV files, formatted text for HTML and Markdown.

A formatted cell may hold a line break ("\\n") where it may wrap: the HTML page breaks the line
there (so wide tables fit the page), Markdown joins the parts with a space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from budgetlm.compare.analysis import stats
from budgetlm.compare.analysis.compute_saved import BETTER_THAN_RANGE, OK, Saved
from budgetlm.compare.analysis.results import CellResult, read_cell
from budgetlm.compare.report.build import ArmResult, Control, Downstream, Report

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


def fmt_design(c: stats.Comparison) -> str:
    """How the test paired the seeds, in a few words: "4 pairs", "Welch", "Welch, 1 pair"."""
    if c.design == "paired":
        return f"{c.n_pairs} pairs"
    name = "bootstrap" if c.test == "bootstrap" else "Welch"
    if c.note:  # a paired test fell back: say how many seeds were shared
        return f"{name}, {c.n_pairs} pair{'s' if c.n_pairs != 1 else ''}"
    return name


def fmt_mdd(c: stats.Comparison) -> str:
    if math.isinf(c.mdd):
        return "MDD ∞"
    return f"MDD {fmt(c.mdd, 4)}"


def fmt_delta(c: stats.Comparison | None) -> str:
    """One compact cell: Δ, its CI, the adjusted p with the design, and the MDD, a line each."""
    if c is None or not c.tested:
        return fmt_diff(c)
    p = fmt_p(c.p_adjusted)
    p = f"p{p}" if p.startswith("<") else f"p={p}"
    return f"{fmt_diff(c)}\n{p} · {fmt_design(c)}\n{fmt_mdd(c)}"


def fmt_multiplier(value: float) -> str:
    if math.isinf(value):
        return "∞"
    return f"{value:.2f}" if value < 10 else f"{value:.3g}"


def fmt_saved(report: Report, r: ArmResult) -> str:
    """The compute-saved cell: multiplier and interval, outside the range, or why empty."""
    if r.arm == report.exp.baseline:
        return DASH
    saved = r.saved
    if saved is None:
        return r.saved_note or DASH
    if saved.status == OK:
        ci = DASH
        if not _missing(saved.ci_low):
            # A no-break space: the interval stays on one line where the cell wraps.
            ci = f"[{fmt_multiplier(saved.ci_low)},\u00a0{fmt_multiplier(saved.ci_high)}]"
        return f"{fmt_multiplier(saved.multiplier)}×\n{ci}"
    edge = report.exp.budgets[-1] if saved.status == BETTER_THAN_RANGE else report.exp.budgets[0]
    word = "better" if saved.status == BETTER_THAN_RANGE else "worse"
    return f"outside fit\n({word} than\nat {edge})"


def excludes(c: stats.Comparison | None) -> float | None:
    """What a "no significant difference" can rule out: effects beyond ± this (its CI)."""
    if c is None or c.verdict != stats.NO_DIFFERENCE or _missing(c.ci_low):
        return None
    return stats.excluded_beyond(c)


def fmt_verdict(report: Report, r: ArmResult) -> str:
    """The verdict, then what a non-result excludes and whether it survives a price error."""
    shown = verdict(report, r) or DASH
    lines = [shown]
    if not r.tuned and report.exp.spec.given and r.arm != report.exp.baseline:
        lines.append("(untuned: its own configured LR)")
    if (beyond := excludes(r.comparison)) is not None:
        lines.append(f"excludes ±{beyond:.3f}")
    if r.sensitivity is not None:
        lines.append(r.sensitivity.label)
    return "\n".join(lines)


def fmt_lr(r: ArmResult, report: Report | None = None) -> str:
    """The LR an arm ran at, and how it got it: tuned, or untuned (it opted out of an
    experiment's tuning, so its verdict leans on a configured LR)."""
    lr = DASH if r.lr is None else f"{r.lr:g}"
    if r.tuned:
        return f"{lr}\n(tuned)"
    return f"{lr}\n(untuned)" if report is not None and report.exp.spec.given else lr


def fmt_epochs(value: float | None) -> str:
    # Three significant digits: tiny runs see a few thousandths of an epoch, long ones dozens.
    return DASH if _missing(value) else f"{value:.3g}"


def fmt_si(value: float | None) -> str:
    """A count in three significant digits with an SI prefix: 1.05M, 210k, 12.6G."""
    if _missing(value):
        return DASH
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{prefix}"
    return f"{value:.3g}"


def fmt_start_end(start: list[float], end: list[float]) -> str:
    """A shape figure of an arm's runs: one value, or start → end when they grew (→ min–max
    when its seeds ended at different shapes). It may wrap only after the arrow."""
    if not start:
        return DASH
    first, ends = start[0], sorted(set(end))
    if not ends or ends == [first]:
        return fmt_si(first)
    last = fmt_si(ends[0]) if len(ends) == 1 else f"{fmt_si(ends[0])}–{fmt_si(ends[-1])}"
    return f"{fmt_si(first)}\u00a0→ {last}"


def fmt_shape(r: ArmResult) -> str:
    """The model cell of a shape study, a line each (Markdown joins them with " · ", as in
    SHAPE_HEADER): non-embedding parameters and training FLOPs per token (start → end for an
    arm that grows), reference seconds per optimizer step."""
    params = fmt_start_end(*_start_end(r, "params_non_embedding"))
    flops = fmt_start_end(*_start_end(r, "train_flops_per_token"))
    rst = DASH if r.rst_per_step is None else f"{r.rst_per_step:.3g}\u00a0s"
    return f"{params}\n{flops}\n{rst}"


def _start_end(r: ArmResult, key: str) -> tuple[list[float], list[float]]:
    return r.shape_values("start", key), r.shape_values("end", key)


def _mean(values: list[float]) -> float | None:
    """The mean; the value itself when all are one (a parameter count stays exact)."""
    if len(set(values)) == 1:
        return values[0]
    return sum(values) / len(values) if values else None


def fmt_share(value: float | None) -> str:
    return DASH if _missing(value) else f"{100 * value:.1f}%"


def csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


# An arm's test against the baseline, the same columns in summary.csv and downstream.csv.
COMPARISON_COLUMNS = (
    "diff_vs_baseline",
    "ci_low",
    "ci_high",
    "p_value",
    "p_adjusted",
    "test",
    "design",
    "n_pairs",
    "test_note",
    "holm_family_size",
    "mdd",
    "mdd_alpha",
    "excludes_beyond",
)


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
    # The model: the shape each run started with, and (means over seeds) the one it ended with
    # (they differ for an arm that grows); RST per optimizer step. Empty without shape.json.
    "params_non_embedding",
    "params",
    "params_non_embedding_end",
    "params_end",
    "train_flops_per_token",
    "train_flops_per_token_end",
    "rst_per_step_mean",
    *COMPARISON_COLUMNS,
    "verdict",
    "compute_saved",
    "compute_saved_ci_low",
    "compute_saved_ci_high",
    "compute_saved_status",
    "baseline_budget_needed",
    "compute_saved_failed_fits",
    "extra_work_share",
    "extra_work_purposes",
    "loss_shift_price_up",
    "loss_shift_price_down",
    "verdict_price_up",
    "verdict_price_down",
    "price_sensitivity",
    "train_loss_mean",
    "train_loss_std",
    "epochs_mean",
    "steps_mean",
    "rst_s_mean",
    "wall_s_mean",
    "selection_hessian_share",
)

DELTA_HEADER = "Δ vs baseline [CI] · p (adj.) · MDD"
SUMMARY_HEADER = (
    "arm",
    "method · optimizer",
    "LR",
    "n",
    "held-out loss (mean ± std)",
    DELTA_HEADER,
    "verdict",
    "compute saved",
    "training loss (mean ± std)",
    "epochs",
    "steps",
    "RST s",
    "wall s",
    "selection + Hessian",
)
# A shape study's extra column, just before the loss (Report.shape_study).
SHAPE_HEADER = "params (non-emb.) · FLOPs / token · RST s / step"
LOSS_HEADER = "held-out loss (mean ± std)"


def summary_header(report: Report) -> tuple[str, ...]:
    """The per-budget table's header: SUMMARY_HEADER, with the model column in a shape study."""
    if not report.shape_study:
        return SUMMARY_HEADER
    i = SUMMARY_HEADER.index(LOSS_HEADER)
    return (*SUMMARY_HEADER[:i], SHAPE_HEADER, *SUMMARY_HEADER[i:])


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
                    **_shape_columns(r),
                    **_comparison_columns(c),
                    "verdict": verdict(report, r),
                    **_saved_columns(report, r),
                    **_sensitivity_columns(r),
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


def _shape_columns(r: ArmResult) -> dict[str, Any]:
    """The model columns of summary.csv: the start shape (the same for every seed of an arm),
    the end shape as a mean over seeds, RST per step."""
    start = {key: r.shape_values("start", key) for key in _SHAPE_KEYS}
    end = {key: r.shape_values("end", key) for key in _SHAPE_KEYS}
    return {
        "params_non_embedding": _first(start["params_non_embedding"]),
        "params": _first(start["params"]),
        "params_non_embedding_end": _mean(end["params_non_embedding"]),
        "params_end": _mean(end["params"]),
        "train_flops_per_token": _first(start["train_flops_per_token"]),
        "train_flops_per_token_end": _mean(end["train_flops_per_token"]),
        "rst_per_step_mean": r.rst_per_step,
    }


_SHAPE_KEYS = ("params_non_embedding", "params", "train_flops_per_token")


def _first(values: list[float]) -> float | None:
    return values[0] if values else None


def _comparison_columns(c: stats.Comparison | None) -> dict[str, Any]:
    """COMPARISON_COLUMNS of one test (none for the baseline itself: empty cells)."""
    if c is None:
        return {}
    return {
        "diff_vs_baseline": c.diff,
        "ci_low": c.ci_low,
        "ci_high": c.ci_high,
        "p_value": c.p_value,
        "p_adjusted": c.p_adjusted,
        "test": c.test,
        "design": c.design,
        "n_pairs": c.n_pairs,
        "test_note": c.note,
        "holm_family_size": c.family_size,
        "mdd": c.mdd,
        "mdd_alpha": c.mdd_alpha,
        "excludes_beyond": excludes(c),
    }


def _saved_columns(report: Report, r: ArmResult) -> dict[str, Any]:
    saved: Saved | None = r.saved
    if r.arm == report.exp.baseline:
        return {}
    if saved is None:
        return {"compute_saved_status": r.saved_note}
    return {
        "compute_saved": saved.multiplier,
        "compute_saved_ci_low": saved.ci_low,
        "compute_saved_ci_high": saved.ci_high,
        "compute_saved_status": saved.status,
        "baseline_budget_needed": saved.needed,
        "compute_saved_failed_fits": saved.failed,
    }


def _sensitivity_columns(r: ArmResult) -> dict[str, Any]:
    s = r.sensitivity
    if s is None:
        return {"price_sensitivity": r.sensitivity_note or None}
    return {
        "extra_work_share": s.work.share,
        "extra_work_purposes": "+".join(s.work.purposes),
        "loss_shift_price_up": s.shift_up,
        "loss_shift_price_down": s.shift_down,
        "verdict_price_up": s.verdict_up,
        "verdict_price_down": s.verdict_down,
        "price_sensitivity": s.label,
    }


def summary_cells(report: Report, r: ArmResult) -> list[str]:
    """One arm's row of the per-budget table on the page, in `summary_header` order."""
    ms, train, c = r.mean_std, r.train_loss, r.comparison
    return [
        r.arm,
        f"{r.method} ·\n{r.optim}",
        fmt_lr(r, report),
        str(len(r.losses)),
        *([fmt_shape(r)] if report.shape_study else []),
        fmt_mean_std(*(ms or (None, None))),
        fmt_delta(c),
        fmt_verdict(report, r),
        fmt_saved(report, r),
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
    *COMPARISON_COLUMNS,
    "verdict",
    "diff_vs_random_init",
    "task",
    "task_mean",
)

CONTROL_ARM = "random init (control)"  # the control's row in the downstream table
CONTROL_HEADER = "Δ vs random init"


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
    control = [CONTROL_HEADER] if d.control is not None else []
    metric = " (ROUGE-L)" if d.protocol.get("metric") == "rougeL" else ""
    return ["arm", "n", f"{d.suite} average{metric}", DELTA_HEADER, "verdict", *control, *d.tasks]


DOWNSTREAM_VERDICT_COLUMN = 4


def downstream_cells(report: Report, budget: str, d: Downstream) -> list[list[str]]:
    """The arms' rows, then the random-init control's (when it has scores on this suite)."""
    c = d.control
    rows = [
        [
            row.arm,
            str(row.n),
            fmt_mean_std(row.mean, row.std),
            fmt_delta(row.comparison),
            _downstream_verdict(row),
            *([_fmt_signed(c.diffs.get(row.arm))] if c is not None else []),
            *(fmt(v) for v in row.task_means.values()),
        ]
        for row in downstream_table(report, budget, d)
    ]
    if c is not None:
        rows.append(
            [
                CONTROL_ARM,
                str(c.n),
                fmt_mean_std(c.mean, c.std),
                DASH,
                "control",
                DASH,
                *(fmt(v) for v in c.task_means.values()),
            ]
        )
    return rows


def control_failure(report: Report) -> str | None:
    """Why the random-init control has no scores, when it failed."""
    control = report.control
    if control is None or control.error is None:
        return None
    error = control.error
    return (
        f"The random-init control failed ({error.get('type')}: {error.get('message')}); see "
        f"{control.run_dir / 'error.json'}. Run the compare command again with --retry-failed."
    )


def _fmt_signed(value: float | None) -> str:
    return DASH if _missing(value) else f"{value:+.4f}"


def control_sentence(d: Downstream) -> tuple[str, bool] | None:
    """What the control says about pre-training on this suite, and whether it is a warning."""
    c = d.control
    if c is None or c.baseline_diff is None:
        return None
    diff = c.baseline_diff
    interval = ""
    if c.test is not None:
        interval = (
            f", {c.confidence:.0%} interval [{c.test.ci_low:+.4f}, {c.test.ci_high:+.4f}] "
            "(Welch: the baseline's pre-training seeds against the control's seeds)"
        )
    if c.helped:
        text = f"Pre-training helped: the baseline beats random initialisation by {diff:+.4f}"
        text += (
            interval or " (untested: one score on a side; more fine-tuning seeds give an interval)"
        )
        text += "."
    else:
        beyond = "" if diff <= 0 or c.test is None else " beyond the noise"
        text = (
            f"Pre-training did not beat random initialisation on this suite{beyond} (baseline "
            f"− random init: {diff:+.4f}{interval}): downstream differences between methods "
            "say little."
        )
    text += f" {control_note(c)}"
    return text, not c.helped


def control_note(c: Control) -> str:
    text = (
        f"The {CONTROL_ARM} row is the baseline's architecture fine-tuned from random weights "
        f"with the same protocol, tasks and fine-tuning seeds, one initialisation per seed "
        f"(n = {c.n}); {CONTROL_HEADER} is each arm's mean minus the control's. Not part of "
        "the Holm family."
    )
    if c.other_model:
        text += (
            f" {', '.join(c.other_model)} have another model config than the baseline: their "
            "difference to the control mixes architecture and pre-training."
        )
    return text


def _downstream_verdict(row: DownstreamRow) -> str:
    beyond = excludes(row.comparison)
    shown = row.verdict or DASH
    return shown if beyond is None else f"{shown}\nexcludes ±{beyond:.3f}"


def downstream_csv_rows(report: Report) -> list[dict[str, Any]]:
    """One row per (budget, suite, arm, task): the arm's statistics repeat on its task rows."""
    out = []
    for budget, suites in report.downstream.items():
        for d in suites:
            control = d.control
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
                            **_comparison_columns(c),
                            "verdict": row.verdict,
                            "diff_vs_random_init": control.diffs.get(row.arm) if control else None,
                            "task": task,
                            "task_mean": task_mean,
                        }
                    )
            if control is not None:
                for task, task_mean in control.task_means.items():
                    out.append(
                        {
                            "budget": budget,
                            "suite": d.suite,
                            "arm": CONTROL_ARM,
                            "n": control.n,
                            "average_mean": control.mean,
                            "average_std": control.std,
                            "verdict": "control",
                            "task": task,
                            "task_mean": task_mean,
                        }
                    )
    return out


# -- n-gram references ---------------------------------------------------------------------------

REFERENCES_HEADER = (
    "budget",
    "unigram",
    "bigram",
    "baseline mean",
    "baseline beats",
    "training tokens",
    "split",
    "note",
)


def reference_cells(report: Report) -> list[list[str]]:
    rows = []
    for budget, ref in report.references.items():
        ms = report.arm_result(budget, report.exp.baseline).mean_std
        beats = DASH
        if ms is not None:
            beaten = [k for k in ("unigram", "bigram") if ref[k] is not None and ms[0] < ref[k]]
            beats = " and ".join(beaten) or "neither"
        tokens = DASH if ref["tokens"] is None else f"{ref['tokens']:,}"
        rows.append(
            [
                budget,
                fmt(ref["unigram"]),
                fmt(ref["bigram"]),
                fmt(ms[0] if ms else None),
                beats,
                tokens,
                ref["split"],
                ref["note"],
            ]
        )
    return rows


# -- LR tuning and failed cells -------------------------------------------------------------------

TUNING_HEADER = ("arm", "budget", "LR", "mean held-out loss on tuning seeds", "")


def tuning_cells(report: Report) -> list[list[str]]:
    rows = []
    for t in report.tunings:
        added = {e.lr: e for e in t.extensions}
        for lr, score in t.scores.items():
            marks = []
            if lr in added:
                marks.append(f"added: the best was at the {added[lr].side} edge")
            if lr == t.chosen:
                marks.append("chosen (at the edge: extensions ran out)" if t.at_edge else "chosen")
            shown = "failed" if score is not None and math.isinf(score) else fmt(score)
            rows.append([t.arm, t.budget, f"{lr:g}", shown, "; ".join(marks)])
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
    "shape_start",
    "shape_end",
    "params_non_embedding_start",
    "params_non_embedding_end",
    "error",
)


def _cell_shape_columns(c: CellResult) -> dict[str, Any]:
    shapes = c.shapes or {}
    out = {}
    for which in ("start", "end"):
        facts = shapes.get(which) or {}
        out[f"shape_{which}"] = facts.get("label")
        out[f"params_non_embedding_{which}"] = facts.get("params_non_embedding")
    return out


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
        for cell in t.cells(report.exp):
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
                **_cell_shape_columns(c),
                "error": (c.error or {}).get("message", ""),
            }
        )
    return rows
