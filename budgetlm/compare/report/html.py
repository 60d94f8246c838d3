"""The report as one self-contained HTML page: inline CSS and SVG charts, no script, no URL."""

from __future__ import annotations

from html import escape

from budgetlm.budget.clock import Budget
from budgetlm.compare.report import notes
from budgetlm.compare.report.build import Report
from budgetlm.compare.report.charts import Charts
from budgetlm.compare.report.tables import (
    DOWNSTREAM_VERDICT_COLUMN,
    FAILED_HEADER,
    REFERENCES_HEADER,
    SHAPE_HEADER,
    TUNING_HEADER,
    control_failure,
    control_sentence,
    downstream_cells,
    downstream_header,
    failed_cells,
    reference_cells,
    summary_cells,
    summary_header,
    tuning_cells,
)

VERDICT_CLASS = {
    "better": "better",
    "worse": "worse",
    "no significant difference": "same",
    "not tested": "untested",
    "baseline": "baseline",
    "control": "baseline",
}
CONTROL_COLOR = "#9e9e9e"  # the random-init control's swatch (it has no chart series)

# Tables may not widen the page (a 1280 px window shows every column): cells break lines where
# the formatted text allows it ("\n", shown as a smaller second line), headers wrap freely,
# long free text wraps anywhere, and a table that still does not fit scrolls inside its own box.
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5rem auto;
max-width:1200px;padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.6rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.table-wrap{overflow-x:auto;margin:.8rem 0}
table{border-collapse:collapse;font-size:.82rem}
th,td{border:1px solid #ddd;padding:.25rem .35rem;text-align:right;vertical-align:top}
th{background:#f4f4f4;font-weight:600;vertical-align:bottom}
td{white-space:nowrap}td:first-child,th:first-child{text-align:left}
td .sub{display:block;color:#666;font-size:.92em}
td.text{white-space:normal;overflow-wrap:anywhere;min-width:10rem}.text{text-align:left}
td.better{background:#dff3e3;font-weight:600}td.worse{background:#f8dede;font-weight:600}
td.same{color:#555}td.untested{color:#999}
td.baseline{color:#555;font-style:italic}
td.verdict{white-space:normal;min-width:4.5rem;width:7.5rem}
td.wrap{white-space:normal;min-width:3.5rem;width:6rem}
td.shape{white-space:normal;min-width:3.5rem}
td.verdict .sub{font-weight:400}
ul.verdicts{font-size:.88rem;color:#333;padding-left:1.2rem}ul.verdicts li{margin:.2rem 0}
.warning{background:#fff4d6;border-left:4px solid #e0a800;padding:.4rem .7rem;font-weight:600}
.swatch{display:inline-block;width:.75em;height:.75em;border-radius:2px;margin-right:.4em}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,440px),1fr));
gap:1.2rem 1.6rem;margin:1rem 0}
figure{margin:0}svg.chart{display:block;width:100%;height:auto}
figcaption,.note{color:#555;font-size:.88rem}
code{background:#f6f6f6;padding:.1rem .3rem;border-radius:3px}
dt{font-weight:600}dd{margin:0 0 .5rem 1rem;overflow-wrap:anywhere}
"""

FINAL_CAPTION = (
    "Circles: each seed's final held-out loss; diamond and bar: mean ± std over seeds; dashed "
    "line: the baseline's mean. The verdict against the baseline is on the right. Each arm has "
    "the same colour in every chart (see the table)."
)
CURVES_CAPTION = (
    "Mean over seeds, band from min to max. For insight only: arms are judged at the end of "
    "their own budget, where each schedule ends."
)
ACROSS_CAPTION = (
    "Each arm's mean final held-out loss at each budget, bar: ± std over seeds. Every point is "
    "its own run, trained to the end of that budget."
)
FIT_CAPTION = " Dashed: the baseline's fitted power law, L(B) = a·B^−b + c (see below)."
JOINED_CAPTION = (
    " Dashed: the baseline's means joined in log budget (a power law missed them; see below)."
)


def _fit_caption(report: Report) -> str:
    if report.fit is None:
        return ""
    return FIT_CAPTION if report.fit.kind == "power law" else JOINED_CAPTION


REFERENCES_CAPTION = " Dotted grey: the n-gram references (unigram, bigram) of each budget."
SPENT_CAPTION = (
    "One bar per arm, in the arm's colour; the shades say what the budget paid for (see the "
    "legend). Dashed outline: work that was not charged."
)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _verdict_class(value: str) -> str:
    """The colour class of a verdict cell, from its first line (the verdict itself)."""
    return " ".join(filter(None, [VERDICT_CLASS.get(value.split("\n")[0], ""), "verdict"]))


def _cell(value: str) -> str:
    first, *rest = str(value).split("\n")
    return _e(first) + "".join(f'<span class="sub">{_e(line)}</span>' for line in rest)


def _table(
    header: tuple[str, ...] | list[str],
    rows: list[list[str]],
    classes: dict[tuple[int, int], str] | None = None,
    swatches: list[str] | None = None,
    text_columns: tuple[int, ...] = (),
) -> str:
    """A table in its own box; ``classes`` by (row, column), ``swatches``: a colour per row,
    shown before the first cell (the arm's colour in the charts); ``text_columns`` hold free
    text, left-aligned and wrapped."""
    head = "".join(
        f'<th class="text">{_e(h)}</th>' if j in text_columns else f"<th>{_e(h)}</th>"
        for j, h in enumerate(header)
    )
    body = []
    for i, row in enumerate(rows):
        tds = []
        for j, value in enumerate(row):
            cls = "text" if j in text_columns else (classes or {}).get((i, j))
            text = _cell(value)
            if j == 0 and swatches:
                text = f'<span class="swatch" style="background:{swatches[i]}"></span>{text}'
            tds.append(f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>")
        body.append(f"<tr>{''.join(tds)}</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="table-wrap">{table}</div>'


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>"


def render_html(report: Report) -> str:
    exp = report.exp
    charts = Charts(report)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>budgetlm compare: {_e(exp.name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Comparison <code>{_e(exp.name)}</code></h1>",
    ]
    if exp.description:
        parts.append(f"<p>{_e(exp.description)}</p>")
    parts.append(f'<p class="note">{_e(notes.intro(report))}</p>')
    if report.missing:
        shown = ", ".join(report.missing[:12]) + (" …" if len(report.missing) > 12 else "")
        parts.append(
            f"<p><b>Unfinished grid:</b> {len(report.missing)} cells have not finished: "
            f"{_e(shown)}. Run the same compare command again to complete them.</p>"
        )
    if (failure := control_failure(report)) is not None:
        parts.append(f'<p class="warning">{_e(failure)}</p>')
    for budget in exp.budgets:
        parts += _budget_section(report, budget, charts)
    if (chart := charts.loss_vs_budget()) is not None:
        caption = ACROSS_CAPTION + _fit_caption(report)
        caption += REFERENCES_CAPTION if report.references else ""
        figure = _figure(chart, caption)
        parts += ["<h2>Final loss across budgets</h2>", f'<div class="charts">{figure}</div>']
        parts.append(f'<p class="note">{_e(notes.saved_note(report))}</p>')
    if report.references or report.references_note:
        parts += ["<h2>N-gram references</h2>", f'<p class="note">{_e(notes.REFERENCES_NOTE)}</p>']
        if report.references_note:
            parts.append(f'<p class="warning">{_e(report.references_note)}</p>')
        if report.references:
            parts.append(_table(REFERENCES_HEADER, reference_cells(report), text_columns=(7,)))
    if report.tunings:
        parts += [
            "<h2>Learning-rate tuning</h2>",
            f'<p class="note">{_e(notes.tuning_note(report))}</p>',
            _table(TUNING_HEADER, tuning_cells(report)),
        ]
    if report.failed:
        parts += [
            "<h2>Failed cells</h2>",
            f'<p class="note">{_e(notes.FAILED_NOTE)}</p>',
            _table(FAILED_HEADER, failed_cells(report), text_columns=(2, 3)),
        ]
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in notes.protocol_items(report))
    parts += ["<h2>Protocol</h2>", f"<dl>{items}</dl>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _budget_section(report: Report, budget: str, charts: Charts) -> list[str]:
    arms = report.results[budget]
    colors = charts.colors
    header = summary_header(report)
    verdict, saved = header.index("verdict"), header.index("compute saved")
    rows = [summary_cells(report, r) for r in arms]
    classes = {(i, verdict): _verdict_class(row[verdict]) for i, row in enumerate(rows)}
    classes.update({(i, saved): "wrap" for i in range(len(rows))})
    if SHAPE_HEADER in header:  # a growing arm's start → end may wrap after the arrow
        classes.update({(i, header.index(SHAPE_HEADER)): "shape" for i in range(len(rows))})
    parts = [f"<h2>Budget {_e(budget)}</h2>"]
    if (warning := notes.ngram_warning(report, budget)) is not None:
        parts.append(f'<p class="warning">{_e(warning)}</p>')
    parts.append(_table(header, rows, classes, [colors[r.arm] for r in arms]))
    if report.shape_study and budget == report.exp.budgets[0]:
        parts.append(f'<p class="note">{_e(notes.shape_note(report))}</p>')
    if lines := notes.verdict_lines(report, budget):
        items = "".join(f"<li><b>{_e(arm)}</b> — {_e(text)}</li>" for arm, text in lines)
        parts.append(f'<ul class="verdicts">{items}</ul>')
    parts.append(f'<p class="note">{_e(notes.stats_note(report))} {_e(notes.TRAIN_LOSS)}</p>')
    if Budget.parse(budget).unit == "rst" and lines:
        parts.append(f'<p class="note">{_e(notes.sensitivity_note(report))}</p>')
    for d in report.downstream.get(budget, []):
        rows = downstream_cells(report, budget, d)
        column = DOWNSTREAM_VERDICT_COLUMN
        classes = {(i, column): _verdict_class(row[column]) for i, row in enumerate(rows)}
        swatches = [colors.get(row[0], CONTROL_COLOR) for row in rows]
        parts += [
            f"<h3>Downstream: {_e(d.suite)}</h3>",
            _table(downstream_header(d), rows, classes, swatches),
        ]
        if (control := control_sentence(d)) is not None:
            text, warn = control
            parts.append(f'<p class="{"warning" if warn else "note"}">{_e(text)}</p>')
        parts.append(f'<p class="note">{_e(notes.downstream_note(d))}</p>')
    parts += [
        '<div class="charts">',
        _figure(charts.final_losses(budget), FINAL_CAPTION),
        _figure(
            charts.loss_curves(budget),
            CURVES_CAPTION + (REFERENCES_CAPTION if budget in report.references else ""),
        ),
        _figure(charts.spending(budget), SPENT_CAPTION),
        _figure(charts.wall_time(budget), notes.wall_caption(report, budget)),
        "</div>",
    ]
    return parts
