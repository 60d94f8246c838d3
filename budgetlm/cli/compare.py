"""`budgetlm compare EXPERIMENT.yaml`: run arms x budgets x seeds, then report (docs/compare.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from budgetlm.cli.common import EXIT_FAILED, EXIT_INTERRUPTED


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare",
        help="run methods x budgets x seeds and report who beats the baseline",
        description="Run an experiment's grid (arms x budgets x seeds, optional LR grids), "
        "each cell its own run in its own process, then write the report. Re-running skips "
        "finished cells and resumes interrupted ones. Exit status: 0 all cells finished, "
        "1 some failed (the report lists them), 130 interrupted. See docs/compare.md.",
    )
    p.add_argument("experiment", help="experiment YAML file")
    p.add_argument("--out", help="output folder (default: runs/compare-<experiment name>)")
    p.add_argument("--jobs", type=int, default=1, help="cells run in parallel (default 1)")
    p.add_argument("--threads", type=int, help="torch threads per cell (default: CPU cores / jobs)")
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    p.add_argument(
        "--rerun-changed",
        action="store_true",
        help="discard cells whose config no longer matches the experiment, and rerun them",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the RST table covers every shape the arms train, list the cells; run nothing",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare)


def default_out(name: str) -> Path:
    return Path("runs") / f"compare-{name}"


def cmd_compare(args: argparse.Namespace) -> int:
    from budgetlm.compare.run.experiment_file import load_experiment
    from budgetlm.compare.run.grid import GridRunner
    from budgetlm.compare.run.shapes import check_rst_coverage

    exp = load_experiment(args.experiment)
    out = Path(args.out) if args.out else default_out(exp.name)
    if args.dry_run:
        # What a real run refuses before its first cell, the dry run refuses too.
        check_rst_coverage(exp, progress=not args.quiet)
        _print_plan(exp)
        return 0
    runner = GridRunner(
        exp,
        out,
        jobs=args.jobs,
        threads=args.threads,
        progress=not args.quiet,
        retry_failed=args.retry_failed,
        rerun_changed=args.rerun_changed,
    )
    print(f"compare {exp.name}: output in {out}", file=sys.stderr)
    try:
        outcome = runner.run()
    except KeyboardInterrupt:
        print("stopped; run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    _write_references(exp, out)
    paths = write_report_files(out)
    print(
        f"cells: {len(outcome.finished)} run now, {len(outcome.skipped)} already finished, "
        f"{len(outcome.failed)} failed, {len(outcome.interrupted)} interrupted"
    )
    print(f"report: {paths['html']}")
    if outcome.stopped:
        print("stopped; run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    if outcome.failed:
        print(f"{len(outcome.failed)} cells failed; the report lists their errors", file=sys.stderr)
        return EXIT_FAILED
    if outcome.control == "failed":
        print("the random-init control failed; the report shows its error", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _write_references(exp: Any, out: Path) -> None:
    """The n-gram regime references the report draws (references.json); the report is still
    written without them, so a failure here is a warning."""
    from budgetlm.compare.analysis.references import write_references

    try:
        write_references(exp, out)
    except Exception as e:  # noqa: BLE001 - a reference line is not worth losing the report
        print(f"warning: regime references not computed: {type(e).__name__}: {e}", file=sys.stderr)


def write_report_files(out: Path) -> dict[str, Path]:
    from budgetlm.compare.report.build import build_report
    from budgetlm.compare.report.write import write_report

    return write_report(build_report(out))


def _print_plan(exp: Any) -> None:
    """What a run of the grid would start with, and what it adds as results come in."""
    spec = exp.spec
    tuning, untuned = exp.tuning_cells(), exp.untuned_cells()
    tuned = [a for a in exp.arms if a.tuned]
    later = len(tuned) * len(exp.budgets) * len(exp.seeds)
    extensions = len(tuned) * len(spec.budgets) * spec.max_extensions * len(exp.tuning_seeds)
    print(
        f"experiment {exp.name}: {len(exp.arms)} arms x {len(exp.budgets)} budgets x "
        f"{len(exp.seeds)} seeds; baseline {exp.baseline}"
    )
    for line in _tuning_lines(exp):
        print(f"  {line}")
    for cell in tuning:
        print(f"  tune  {cell.id}")
    for cell in untuned:
        print(f"  run   {cell.id}")
    if later:
        print(f"  then  {later} cells: the judged seeds of tuned arms at their chosen LR")
    print(f"{len(tuning) + len(untuned) + later} cells in all", end="")
    if extensions:
        print(
            f", and up to {extensions} more tuning cells if searches end at an edge of their "
            f"grid (tuning.max_extensions: {spec.max_extensions})"
        )
    else:
        print()


def _tuning_lines(exp: Any) -> list[str]:
    """The protocol in a few lines: seeds, splits, which arms are tuned on which grid."""
    spec = exp.spec
    carried = [b for b in exp.budgets if b not in spec.budgets]
    if not any(arm.tuned for arm in exp.arms):
        return ["no arm is tuned: each runs at its configured LR, judged on the test split"]
    lines = [
        f"tuning on seed(s) {', '.join(map(str, exp.tuning_seeds))} (never judged), scored on "
        "the tune split; judged seeds scored on the test split"
    ]
    if carried:
        lines.append(f"tuned at {', '.join(spec.budgets)}; LRs carried to {', '.join(carried)}")
    for arm in exp.arms:
        if not arm.tuned:
            lr = f" at LR {arm.lr_grid[0]:g}" if arm.lr_grid else " at its configured LR"
            lines.append(f"arm {arm.name}: untuned{lr}")
            continue
        grid = ", ".join(f"{lr:g}" for lr in arm.lr_grid)
        origin = "its lr_grid" if arm.grid_given else f"around its LR {arm.default_lr:g}"
        lines.append(f"arm {arm.name}: LRs {grid} ({origin})")
    return lines
