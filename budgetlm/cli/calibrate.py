"""`budgetlm calibrate CONFIG ... --out TABLE.json`: measure an RST cost table (docs/rst.md).

`budgetlm calibrate --rehash TABLE.json` re-hashes a table edited by hand on purpose (a table
without its hash, or with one that does not match, is refused everywhere else).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from budgetlm.cli.common import split_config_arg


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="measure an RST cost table on this machine",
        description="Time forward and training passes of each config's model over a grid of "
        "micro-batch sizes and active depths, and each optimizer's step; fit the cost model, "
        "check it, and write (or extend) a versioned JSON table. With --rehash, measure nothing: "
        "re-check and re-hash a table edited by hand. See docs/rst.md.",
    )
    p.add_argument("configs", nargs="*", help="YAML configs whose model shapes to measure")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every config"
    )
    p.add_argument("--out", help="table file to write (extended if it exists)")
    p.add_argument(
        "--rehash",
        metavar="TABLE.json",
        help="measure nothing: check a table edited by hand on purpose and write it with its new "
        "content hash (a run started under the old hash does not resume under the new one)",
    )
    p.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        help="micro-batch sizes (default: the micro-batch, its half and quarter)",
    )
    p.add_argument("--optimizers", nargs="+", help="optimizers to time (default: config's, adamw)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per point (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repeats before each point")
    p.add_argument(
        "--tolerance", type=float, default=0.25, help="largest relative residual from the fit"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from budgetlm.budget.rst import CostTable, TableError, rehash_table
    from budgetlm.config import ConfigError, load_config
    from budgetlm.train.calibrate import calibrate_config

    if args.rehash:
        if args.configs or args.out:
            raise ConfigError("calibrate --rehash TABLE.json takes no configs and no --out")
        old, new = rehash_table(args.rehash)
        was = f"{old[:12]} -> " if old else "no hash -> "
        print(f"re-hashed {args.rehash}: {was}{new[:12]} (sanity checks passed)")
        return 0
    if not args.configs or not args.out:
        raise ConfigError("calibrate needs CONFIG... and --out TABLE.json (or --rehash TABLE.json)")
    out = Path(args.out)
    table = None
    refused: list[str] = []
    if out.is_file():
        table = CostTable.load(out)
    for config in args.configs:
        config_path, overrides = split_config_arg(config, args.set)
        cfg = load_config(config_path, overrides)
        entry, machine = calibrate_config(
            cfg,
            batch_sizes=args.batch_sizes,
            optimizers=args.optimizers,
            repeats=args.repeats,
            warmup=args.warmup,
            progress=not args.quiet,
            tolerance=args.tolerance,
        )
        if table is None:
            table = CostTable(machine, tolerance=args.tolerance)
        elif table.machine != machine:
            raise TableError(
                f"{out} was measured on {table.machine}, this machine is {machine}: "
                "one table describes one reference machine; write a new file"
            )
        try:
            table.add(entry)  # fits and checks; refuses a bad entry with the offending points
        except TableError as e:
            # Keep the measurements (minutes of a reference machine) for a look or a re-check
            # at another --tolerance; the other configs are still measured.
            kept = out.with_name(f"{out.stem}.refused-{len(refused) + 1}.json")
            kept.write_text(json.dumps(dataclasses.asdict(entry), indent=1) + "\n")
            print(f"{e}\n  measurements kept in {kept}", file=sys.stderr)
            refused.append(entry.label)
            continue
        worst = max(abs(r) for rs in entry.residuals.values() for r in rs)
        print(
            f"{entry.label}: {len(entry.points)} points, worst fit residual {worst:.1%}, "
            f"optimizer step {entry.optimizer_seconds}"
        )
    if table is not None and table.entries:
        table.save(out)
        print(f"wrote {out} ({len(table.entries)} shapes, hash {table.hash[:12]})")
    if refused:
        print(f"refused: {', '.join(refused)}", file=sys.stderr)
        return 1
    return 0
