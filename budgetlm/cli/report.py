"""`budgetlm report DIR`: (re)write the report of a compare folder from its cells' files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from budgetlm.cli.compare import write_report_files


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="(re)write the report of a compare folder",
        description="Read a compare folder's cells and write report.html (self-contained), "
        "report.md, summary.csv and cells.csv into it. Works on an unfinished grid too.",
    )
    p.add_argument("dir", help="the folder `budgetlm compare` wrote")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    paths = write_report_files(Path(args.dir))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
