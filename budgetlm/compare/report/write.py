"""Write a built report into its compare folder: the page, the Markdown and the CSV tables."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from budgetlm.compare.report.build import Report
from budgetlm.compare.report.html import render_html
from budgetlm.compare.report.markdown import render_markdown
from budgetlm.compare.report.tables import (
    CELL_COLUMNS,
    DOWNSTREAM_COLUMNS,
    SUMMARY_COLUMNS,
    cell_rows,
    csv_value,
    downstream_csv_rows,
    summary_rows,
)


def write_report(report: Report) -> dict[str, Path]:
    """report.html (self-contained), report.md, summary.csv (per arm and budget), cells.csv
    (per run) and, when any run was fine-tuned, downstream.csv. Returns their paths by kind."""
    out = report.out_dir
    paths = {
        "html": out / "report.html",
        "markdown": out / "report.md",
        "summary_csv": out / "summary.csv",
        "cells_csv": out / "cells.csv",
    }
    paths["html"].write_text(render_html(report), encoding="utf-8")
    paths["markdown"].write_text(render_markdown(report), encoding="utf-8")
    _write_csv(paths["summary_csv"], SUMMARY_COLUMNS, summary_rows(report))
    _write_csv(paths["cells_csv"], CELL_COLUMNS, cell_rows(report))
    if any(report.downstream.values()):
        paths["downstream_csv"] = out / "downstream.csv"
        _write_csv(paths["downstream_csv"], DOWNSTREAM_COLUMNS, downstream_csv_rows(report))
    return paths


def _write_csv(path: Path, columns: tuple[str, ...], rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: csv_value(v) for k, v in row.items()})
