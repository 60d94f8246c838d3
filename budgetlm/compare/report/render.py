"""Render a Report as one self-contained HTML page and as Markdown."""

from __future__ import annotations

import html
import math
from typing import Any

from budgetlm.budget.clock import Budget
from budgetlm.compare.report.build import (
    PURPOSES,
    ArmResult,
    Downstream,
    Report,
    curve_unit,
    downstream_table,
    seed_band,
    summary_rows,
)
from budgetlm.compare.report.svg import Series, bar_chart, line_chart, palette, points_chart

CHART_WIDTH = 530  # two charts side by side on the page
VERDICT_CLASS = {
    "better": "better",
    "worse": "worse",
    "no significant difference": "same",
    "not tested": "untested",
    "baseline": "baseline",
}
CHARGED = (
    "every training pass (a dropped layer costs nothing), the selection forwards of "
    "selective backprop and RHO-loss, Sophia's Hessian passes, and each optimizer step with the "
    "loop's fixed overhead. Not charged: evaluation, checkpointing, and the RHO-loss "
    "irreducible-loss model (shown as 'uncharged')."
)


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def fmt_p(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def fmt_lr(r: ArmResult) -> str:
    lr = "–" if r.lr is None else f"{r.lr:g}"
    return f"{lr} (tuned)" if r.tuned else lr


def _diff(row: dict[str, Any]) -> str:
    if row["diff_vs_baseline"] is None:
        return "–"
    ci = ""
    if row["ci_low"] is not None and not math.isnan(row["ci_low"]):
        ci = f" [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"
    return f"{row['diff_vs_baseline']:+.4f}{ci}"


def _loss(row: dict[str, Any]) -> str:
    if row["loss_mean"] is None:
        return "–"
    return f"{row['loss_mean']:.4f} ± {row['loss_std']:.4f}"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


TABLE_HEADER = (
    "arm",
    "method · optimizer",
    "LR",
    "n",
    "held-out loss (mean ± std)",
    "Δ vs baseline [CI]",
    "p (adj.)",
    "verdict",
    "steps",
    "RST s",
    "wall s",
    "selection + Hessian",
)


def table_cells(row: dict[str, Any], r: ArmResult) -> list[str]:
    return [
        r.arm,
        f"{r.method} · {r.optim}",
        fmt_lr(r),
        str(row["n"]),
        _loss(row),
        _diff(row),
        fmt_p(row["p_adjusted"]),
        row["verdict"] or "–",
        fmt(row["steps_mean"], 0),
        fmt(row["rst_s_mean"], 1),
        fmt(row["wall_s_mean"], 1),
        _share(row["selection_hessian_share"]),
    ]


# -- downstream -----------------------------------------------------------------------------------


def downstream_header(d: Downstream) -> list[str]:
    return ["arm", "n", f"{d.suite} average", "Δ vs baseline [CI]", "p (adj.)", "verdict", *d.tasks]


def downstream_rows(report: Report, budget: str, d: Downstream) -> list[list[str]]:
    rows = []
    for row in downstream_table(report, budget, d):
        c, diff = row.comparison, "–"
        if c is not None:
            ci = "" if math.isnan(c.ci_low) else f" [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
            diff = f"{c.diff:+.4f}{ci}"
        rows.append(
            [
                row.arm,
                str(row.n),
                f"{row.mean:.4f} ± {row.std:.4f}",
                diff,
                fmt_p(c.p_adjusted if c else None),
                row.verdict or "–",
                *(fmt(v) for v in row.task_means.values()),
            ]
        )
    return rows


def downstream_note(d: Downstream) -> str:
    p = d.protocol
    select = (
        "the best epoch on validation (max over epochs: optimistic, it selects on what it reports)"
        if p.get("select") == "max"
        else "the final epoch on validation"
    )
    return (
        f"Each pre-trained run (one per seed) fine-tuned on {d.suite}: lr {p.get('lr')}, batch "
        f"{p.get('batch_size')}, {p.get('epochs')} epochs, max length {p.get('max_length')}; "
        f"score of {select}, averaged over fine-tuning seeds; the suite average is the mean of "
        "the tasks' main metrics. Higher is better."
    )


# -- charts -------------------------------------------------------------------------------------


def loss_curves(report: Report, budget: str) -> str:
    key, label = curve_unit(budget)
    series = []
    for i, r in enumerate(report.results[budget]):
        xs, mean, lo, hi = seed_band(r.finished, key)
        if xs:
            series.append(Series(r.arm, xs, mean, lo, hi, color=palette(i)))
    return line_chart(
        series,
        title="Held-out loss (band: min–max over seeds)",
        x_label=label,
        y_label="held-out loss",
        width=CHART_WIDTH,
    )


def loss_vs_budget(report: Report) -> str | None:
    budgets = report.exp.budgets
    units = {Budget.parse(b).unit for b in budgets}
    if len(budgets) < 2 or len(units) != 1:
        return None
    amounts = [Budget.parse(b).amount for b in budgets]
    series = []
    for i, arm in enumerate(report.exp.arms):
        xs, ys, lo, hi = [], [], [], []
        for budget, amount in zip(budgets, amounts, strict=True):
            ms = report.arm_result(budget, arm.name).mean_std
            if ms:
                xs.append(amount)
                ys.append(ms[0])
                lo.append(ms[0] - ms[1])
                hi.append(ms[0] + ms[1])
        if xs:
            series.append(Series(arm.name, xs, ys, lo, hi, color=palette(i)))
    return points_chart(
        series,
        title="Final held-out loss vs budget (mean ± std over seeds)",
        x_label=f"budget ({units.pop()})",
        y_label="final held-out loss",
        log_x=max(amounts) / min(amounts) > 4,
        width=CHART_WIDTH,
    )


def spending(report: Report, budget: str) -> tuple[str, str]:
    arms = report.results[budget]
    unit = "rst" if all(r.mean_of("rst") for r in arms if r.finished) else "flops"
    parts = {r.arm: r.spend(unit) for r in arms}
    stacks = {
        purpose: [parts[r.arm].get(purpose, 0.0) for r in arms]
        for purpose in (*PURPOSES, "uncharged")
        if any(parts[r.arm].get(purpose) for r in arms)
    }
    label = "reference-system seconds" if unit == "rst" else "FLOPs"
    charged = bar_chart(
        [r.arm for r in arms],
        stacks,
        title=f"Budget spent, by purpose ({label})",
        y_label=label,
        width=CHART_WIDTH,
    )
    wall = bar_chart(
        [r.arm for r in arms],
        {"wall seconds": [r.mean_of("seconds") or 0.0 for r in arms]},
        title="Wall time on the machine that ran it",
        y_label="wall seconds",
        width=CHART_WIDTH,
    )
    return charged, wall


# -- HTML ---------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1120px;padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.85rem}
.scroll{overflow-x:auto}
th,td{border:1px solid #ddd;padding:.25rem .4rem;text-align:right;white-space:nowrap}
th{white-space:normal}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
td.better{background:#dff3e3;font-weight:600}td.worse{background:#f8dede;font-weight:600}
td.same{color:#555;white-space:normal;min-width:7rem}td.untested{color:#999}td.baseline{color:#555;font-style:italic}
.charts{display:flex;flex-wrap:wrap;gap:1rem}.note{color:#555;font-size:.9rem}
code,pre{background:#f6f6f6;padding:.1rem .3rem;border-radius:3px}
pre{padding:.6rem;overflow-x:auto;white-space:pre-wrap}dt{font-weight:600}dd{margin:0 0 .5rem 1rem}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_table(header: list[str] | tuple[str, ...], rows: list[list[str]], classes=None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        tds = []
        for j, value in enumerate(row):
            cls = (classes or {}).get((i, j))
            tds.append(f'<td class="{cls}">{_e(value)}</td>' if cls else f"<td>{_e(value)}</td>")
        body.append(f"<tr>{''.join(tds)}</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def render_html(report: Report) -> str:
    exp = report.exp
    rows = summary_rows(report)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>budgetlm compare: {_e(exp.name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Comparison <code>{_e(exp.name)}</code></h1>",
    ]
    if exp.description:
        parts.append(f"<p>{_e(exp.description)}</p>")
    parts.append(
        f'<p class="note">Report written {_e(report.created)}. Each arm is trained once per '
        "seed under each budget, with its schedule ending at that budget, and judged on its "
        f"final held-out loss against <b>{_e(exp.baseline)}</b>.</p>"
    )
    if report.missing:
        parts.append(
            f"<p><b>Unfinished grid:</b> {len(report.missing)} cells have not finished: "
            f"{_e(', '.join(report.missing[:12]))}{' …' if len(report.missing) > 12 else ''}."
            " Run the same compare command again to complete them.</p>"
        )
    for budget in exp.budgets:
        budget_rows = [row for row in rows if row["budget"] == budget]
        table_rows, classes = [], {}
        for i, (row, r) in enumerate(zip(budget_rows, report.results[budget], strict=True)):
            table_rows.append(table_cells(row, r))
            classes[(i, 7)] = VERDICT_CLASS.get(row["verdict"] or "", "")
        parts += [
            f"<h2>Budget {_e(budget)}</h2>",
            _html_table(TABLE_HEADER, table_rows, classes),
            f'<p class="note">{_e(_stats_note(report))}</p>',
            *_downstream_html(report, budget),
            '<div class="charts">',
            loss_curves(report, budget),
            *spending(report, budget),
            "</div>",
        ]
    if (chart := loss_vs_budget(report)) is not None:
        parts += ["<h2>Final loss across budgets</h2>", chart]
    if report.tunings:
        parts += ["<h2>Learning-rate tuning</h2>", _tuning_html(report)]
    if report.failed:
        parts += ["<h2>Failed cells</h2>", _failed_html(report)]
    parts += ["<h2>Protocol</h2>", _protocol_html(report), "</body></html>"]
    return "\n".join(parts) + "\n"


def _downstream_html(report: Report, budget: str) -> list[str]:
    parts = []
    for d in report.downstream.get(budget, []):
        rows = downstream_rows(report, budget, d)
        classes = {(i, 5): VERDICT_CLASS.get(row[5], "") for i, row in enumerate(rows)}
        parts += [
            f"<h3>Downstream: {_e(d.suite)}</h3>",
            _html_table(downstream_header(d), rows, classes),
            f'<p class="note">{_e(downstream_note(d))}</p>',
        ]
    return parts


def _stats_note(report: Report) -> str:
    s = report.exp.stats
    test = "Welch's t-test" if s.test == "welch" else "a bootstrap of the difference of means"
    corr = (
        "Holm-adjusted across the arms of this budget" if s.correction == "holm" else "unadjusted"
    )
    return (
        f"Δ is the arm's mean minus the baseline's (negative = lower loss = better), with its "
        f"{round(100 * s.confidence)}% confidence interval from {test}; p is {corr}. A verdict "
        f"says better/worse only when p < {s.alpha}. With few seeds only large differences "
        "can be significant."
    )


def _tuning_rows(report: Report) -> list[list[str]]:
    rows = []
    for t in report.tunings:
        for lr, score in t.scores.items():
            mark = "chosen" if lr == t.chosen else ""
            if lr == t.chosen and t.at_edge:
                mark = "chosen (edge of the grid: widen it)"
            shown = "failed" if score is not None and math.isinf(score) else fmt(score)
            rows.append([t.arm, t.budget, f"{lr:g}", shown, mark])
    return rows


TUNING_HEADER = ("arm", "budget", "LR", "mean held-out loss on tuning seeds", "")


def _tuning_html(report: Report) -> str:
    seeds = ", ".join(map(str, report.exp.tuning_seeds))
    return (
        f'<p class="note">Arms with an LR grid ran every LR on seed(s) {_e(seeds)}; the LR with '
        "the lowest final held-out loss was then run on every seed. Selecting on the same "
        "held-out set the arms are judged on favours tuned arms slightly.</p>"
        + _html_table(TUNING_HEADER, _tuning_rows(report))
    )


def _failed_rows(report: Report) -> list[list[str]]:
    return [
        [
            c.cell.id,
            ("fine-tuning: " if c.status == "finished" else "") + (c.error or {}).get("type", "?"),
            (c.error or {}).get("message", "")[:400],
            str(c.run_dir / "cell.log"),
        ]
        for c in report.failed
    ]


FAILED_HEADER = ("cell", "error", "message", "log")


def _failed_html(report: Report) -> str:
    return (
        '<p class="note">Failed cells are left out of the statistics above; their arms '
        "show fewer seeds (n).</p>" + _html_table(FAILED_HEADER, _failed_rows(report))
    )


def _protocol_items(report: Report) -> list[tuple[str, str]]:
    p = report.protocol
    machine = p.get("rst_machine") or {}
    machine_text = ", ".join(f"{k}={v}" for k, v in machine.items()) or "unknown"
    tuned = [a.name for a in report.exp.arms if a.tuned]
    return [
        ("Budgets", ", ".join(p["budgets"]) + " — each arm judged at the end of its own budget"),
        ("Seeds", ", ".join(map(str, p["seeds"]))),
        ("Baseline", p["baseline"]),
        ("Reference table", f"{p['rst_table']} (hash {p['rst_table_hash'] or 'n/a'})"),
        ("Reference machine", machine_text),
        ("Charged to the budget", CHARGED),
        (
            "Learning rates",
            f"tuned per budget for {', '.join(tuned)}; others fixed as configured"
            if tuned
            else "not tuned per arm: every arm runs at its configured LR",
        ),
        ("Statistics", _stats_note(report)),
        ("Code version", ", ".join(p["code_versions"]) or "unknown"),
        ("budgetlm", str(p.get("budgetlm") or "unknown")),
        ("Ran on", "; ".join(p["machines_that_ran"]) or "unknown"),
        ("Base config", p.get("base_config") or "inline"),
        ("Command", p.get("command") or "unknown"),
    ]


def _protocol_html(report: Report) -> str:
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in _protocol_items(report))
    return f"<dl>{items}</dl>"


# -- Markdown -----------------------------------------------------------------------------------


def _md_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    def clean(v: str) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(clean(v) for v in row) + " |" for row in rows]
    return lines


def render_markdown(report: Report) -> str:
    exp = report.exp
    rows = summary_rows(report)
    lines = [f"# Comparison `{exp.name}`", ""]
    if exp.description:
        lines += [exp.description, ""]
    lines += [f"Report written {report.created}; plots are in report.html.", ""]
    if report.missing:
        lines += [f"**Unfinished grid:** {len(report.missing)} cells have not finished.", ""]
    for budget in exp.budgets:
        table = [
            table_cells(row, r)
            for row, r in zip(
                [row for row in rows if row["budget"] == budget],
                report.results[budget],
                strict=True,
            )
        ]
        lines += [f"## Budget {budget}", "", *_md_table(TABLE_HEADER, table), ""]
        for d in report.downstream.get(budget, []):
            rows = downstream_rows(report, budget, d)
            lines += [f"### Downstream: {d.suite}", "", *_md_table(downstream_header(d), rows)]
            lines += ["", downstream_note(d), ""]
    lines += [_stats_note(report), ""]
    if report.tunings:
        lines += ["## Learning-rate tuning", "", *_md_table(TUNING_HEADER, _tuning_rows(report))]
        lines.append("")
    if report.failed:
        lines += ["## Failed cells", "", *_md_table(FAILED_HEADER, _failed_rows(report)), ""]
    lines += ["## Protocol", ""]
    lines += [f"- **{k}:** {v}" for k, v in _protocol_items(report)]
    return "\n".join(lines) + "\n"
