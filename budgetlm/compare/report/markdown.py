"""The report as Markdown (report.md): the same tables and notes as the page, without charts."""

from __future__ import annotations

from budgetlm.compare.report import notes
from budgetlm.compare.report.build import Report
from budgetlm.compare.report.tables import (
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


def _table(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> list[str]:
    def clean(value: str) -> str:
        # A cell's line breaks mark where the page may wrap it; one Markdown row is one line.
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(clean(v) for v in row) + " |" for row in rows]
    return lines


def _summary_table(report: Report, budget: str) -> list[str]:
    rows = [summary_cells(report, r) for r in report.results[budget]]
    header = summary_header(report)
    if SHAPE_HEADER in header:  # its lines are the header's parts: "a · b · c"
        column = header.index(SHAPE_HEADER)
        for row in rows:
            row[column] = row[column].replace("\n", " · ")
    return _table(header, rows)


def render_markdown(report: Report) -> str:
    exp = report.exp
    lines = [f"# Comparison `{exp.name}`", ""]
    if exp.description:
        lines += [exp.description, ""]
    lines += [f"{notes.intro(report)} Charts are in report.html.", ""]
    if report.missing:
        lines += [f"**Unfinished grid:** {len(report.missing)} cells have not finished.", ""]
    if (failure := control_failure(report)) is not None:
        lines += [f"> **Warning:** {failure}", ""]
    for budget in exp.budgets:
        lines += [f"## Budget {budget}", ""]
        if (warning := notes.ngram_warning(report, budget)) is not None:
            lines += [f"> **Warning:** {warning}", ""]
        lines += [*_summary_table(report, budget), ""]
        if report.shape_study and budget == exp.budgets[0]:
            lines += [notes.shape_note(report), ""]
        if verdicts := notes.verdict_lines(report, budget):
            lines += [f"- **{arm}** — {text}" for arm, text in verdicts] + [""]
        lines += [notes.wall_caption(report, budget), ""]
        for d in report.downstream.get(budget, []):
            rows = downstream_cells(report, budget, d)
            lines += [f"### Downstream: {d.suite}", "", *_table(downstream_header(d), rows), ""]
            if (control := control_sentence(d)) is not None:
                text, warn = control
                lines += [f"> **Warning:** {text}" if warn else text, ""]
            lines += [notes.downstream_note(d), ""]
    lines += [notes.stats_note(report), "", notes.TRAIN_LOSS, ""]
    if report.references or report.references_note:
        lines += ["## N-gram references", "", notes.REFERENCES_NOTE, ""]
        if report.references_note:
            lines += [f"> **Warning:** {report.references_note}", ""]
        if report.references:
            lines += [*_table(REFERENCES_HEADER, reference_cells(report)), ""]
    if report.tunings:
        lines += ["## Learning-rate tuning", "", notes.tuning_note(report), ""]
        lines += [*_table(TUNING_HEADER, tuning_cells(report)), ""]
    if report.failed:
        lines += ["## Failed cells", "", notes.FAILED_NOTE, ""]
        lines += [*_table(FAILED_HEADER, failed_cells(report)), ""]
    lines += ["## Protocol", ""]
    lines += [f"- **{k}:** {v}" for k, v in notes.protocol_items(report)]
    return "\n".join(lines) + "\n"
