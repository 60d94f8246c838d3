"""`budgetlm calibrate CONFIG ... --out TABLE.json`: measure an RST cost table (docs/rst.md).

`budgetlm calibrate --rehash TABLE.json` re-hashes a table edited by hand on purpose (a table
without its hash, or with one that does not match, is refused everywhere else).

`budgetlm calibrate --check TABLE CONFIG...` measures how well a table predicts wall time on this
machine, for the baseline and each method (budgetlm/train/fidelity.py): exit 0 when every
method's mean error relative to the baseline is within --max-error, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
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
        "re-check and re-hash a table edited by hand. With --check, measure no table either: run "
        "short RST-budgeted trainings of the baseline and each method and report how well the "
        "table predicts their wall time here. See docs/rst.md.",
    )
    p.add_argument("configs", nargs="*", help="YAML configs whose model shapes to measure")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every config"
    )
    p.add_argument(
        "--out", help="table file to write (extended if it exists); with --check, the JSON report"
    )
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
    p.add_argument(
        "--repeats",
        type=int,
        help="timed repeats per point (median; default 5); with --check, rounds of runs "
        "(default 3)",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed repeats before each point")
    p.add_argument(
        "--loop-steps",
        type=int,
        default=24,
        help="steps of each whole-loop run that fits the loop's overheads (the first quarter "
        "warm up; at least 8)",
    )
    p.add_argument(
        "--tolerance", type=float, default=0.25, help="largest relative residual from the fit"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    check = p.add_argument_group("--check: how well a table predicts wall time here")
    check.add_argument(
        "--check",
        metavar="TABLE",
        help="measure nothing into a table: alternate short RST-budgeted runs of the baseline and "
        "each method of every config, and report RST/wall (the baseline's) and each method's "
        "RST/wall relative to its round's baseline; exit 1 if a method is off by more than "
        "--max-error",
    )
    check.add_argument(
        "--methods",
        nargs="+",
        help="methods to check, and optimizers as optim:NAME (default: every built-in method "
        "that fits the model family, optim:lion, optim:sophia)",
    )
    check.add_argument("--budget", help="RST budget of each run (default 20s-rst)")
    check.add_argument(
        "--max-error",
        type=float,
        help="largest mean error relative to the baseline that passes (default 0.05)",
    )
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from budgetlm.budget.rst import CostTable, TableError, rehash_table
    from budgetlm.config import ConfigError, load_config
    from budgetlm.train.calibrate import calibrate_config

    check_only = {"--methods": args.methods, "--budget": args.budget, "--max-error": args.max_error}
    if args.check:
        return cmd_check(args)
    given = [flag for flag, value in check_only.items() if value is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: only with --check TABLE")
    if args.rehash:
        if args.configs or args.out or args.repeats is not None:
            raise ConfigError(
                "calibrate --rehash TABLE.json takes no configs, no --out and no --repeats"
            )
        old, new = rehash_table(args.rehash)
        was = f"{old[:12]} -> " if old else "no hash -> "
        print(f"re-hashed {args.rehash}: {was}{new[:12]} (sanity checks passed)")
        return 0
    if not args.configs or not args.out:
        raise ConfigError("calibrate needs CONFIG... and --out TABLE.json (or --rehash TABLE.json)")
    if args.loop_steps < 8:  # a quarter warms up; the median needs a few steps after it
        raise ConfigError(f"--loop-steps must be at least 8, got {args.loop_steps}")
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
            repeats=5 if args.repeats is None else args.repeats,
            warmup=args.warmup,
            progress=not args.quiet,
            tolerance=args.tolerance,
            loop_steps=args.loop_steps,
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


def cmd_check(args: argparse.Namespace) -> int:
    """`calibrate --check TABLE CONFIG...`: the table's RST/wall here, per method (exit 0/1)."""
    from budgetlm.config import ConfigError
    from budgetlm.train import fidelity

    measuring = {
        "--rehash": args.rehash,
        "--batch-sizes": args.batch_sizes,
        "--optimizers": args.optimizers,
    }
    given = [flag for flag, value in measuring.items() if value]
    if given:
        raise ConfigError(
            f"calibrate --check measures no table: {', '.join(given)} cannot go with it "
            "(name optimizers to check as --methods optim:NAME)"
        )
    if not args.configs:
        raise ConfigError("calibrate --check TABLE needs CONFIG... to run")
    configs = [split_config_arg(c, args.set) for c in args.configs]
    report = fidelity.check_fidelity(
        args.check,
        configs,
        methods=args.methods,
        repeats=fidelity.DEFAULT_REPEATS if args.repeats is None else args.repeats,
        budget=args.budget or fidelity.DEFAULT_BUDGET,
        max_error=fidelity.DEFAULT_MAX_ERROR if args.max_error is None else args.max_error,
        command=_check_command(args),
        progress=None if not args.quiet else (lambda line: None),
    )
    if args.out:
        report.write(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    print(report.render())
    return report.exit_code


def _check_command(args: argparse.Namespace) -> str:
    """The command as parsed (not sys.argv: `main(argv)` may be called from Python)."""
    words = ["budgetlm", "calibrate", "--check", args.check, *args.configs]
    if args.set:
        words += ["--set", *args.set]
    if args.methods:
        words += ["--methods", *args.methods]
    for flag, value in (
        ("--repeats", args.repeats),
        ("--budget", args.budget),
        ("--max-error", args.max_error),
        ("--out", args.out),
    ):
        if value is not None:
            words += [flag, str(value)]
    return shlex.join(words)
