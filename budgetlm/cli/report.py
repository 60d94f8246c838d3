"""`budgetlm report DIR`: (re)write the report of a compare folder from its cells' files.

`budgetlm report DIR1 DIR2 ... --out OUT`: merge output folders of one experiment (one per
cluster, or per subset of arms) into OUT and write the report of all of them there
(compare/report/merge.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from budgetlm.cli.compare import write_report_files


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="(re)write the report of a compare folder, or merge several into one",
        description="Read a compare folder's cells and write report.html (self-contained), "
        "report.md, summary.csv and cells.csv into it. Works on an unfinished grid too. "
        "Several folders of the same experiment (e.g. one per cluster or per subset of arms) "
        "are merged into --out, a new folder, and reported there as one grid; the folders "
        "given are only read.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="a folder `budgetlm compare` wrote")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="merge the folders into this new folder (or an earlier merge, which is replaced) "
        "and write the report there; required with more than one DIR",
    )
    p.add_argument(
        "--prefer-first",
        action="store_true",
        help="when merging, a cell that finished in several folders with different results is "
        "taken from the first folder given (with a warning) instead of refused",
    )
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    dirs = [Path(d) for d in args.dirs]
    if args.out is None:
        if len(dirs) > 1:
            from budgetlm.compare.report.merge import MergeError

            raise MergeError(
                f"{len(dirs)} folders: give --out DIR, a new folder to merge them into (the "
                "folders given are left as they are)"
            )
        out = dirs[0]
    else:
        from budgetlm.compare.report.merge import merge_folders

        outcome = merge_folders(dirs, Path(args.out), prefer_first=args.prefer_first)
        for warning in outcome.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        counts = ", ".join(f"{n} from {source}" for source, n in outcome.counts().items())
        print(f"merged {len(dirs)} folder(s) into {outcome.out}: cells {counts}")
        out = outcome.out
    paths = write_report_files(out)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
