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
    p.add_argument(
        "--jobs",
        metavar="N",
        help="cells at a time (default: the experiment's executor.jobs, else as many as --gpus "
        "allow, else 1)",
    )
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
    p.add_argument(
        "--plan",
        action="store_true",
        help="write every cell's config known now (tuning cells, untuned arms) and print the "
        "cells, their folders and the command that runs one; run nothing (launch them with "
        "your own tooling)",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar (nor lines, without a terminal)"
    )
    where = p.add_argument_group(
        "where cells run",
        "Each also an `executor:` key of the experiment file (gpus_per_cell, time_min, ...; "
        "wait: false for --no-wait); the command line wins. The random-init control of "
        "`finetune:` always runs here, as a local process.",
    )
    where.add_argument(
        "--executor",
        metavar="{local,slurm,ray}",
        help="where each cell runs: local processes (default), Slurm jobs (submitit), Ray tasks",
    )
    where.add_argument(
        "--gpus",
        metavar="all|0,1,...",
        help="local: GPUs to share out, `all` or indices such as 0,1,3 (each cell sees only "
        "its own; default: none, cells as before)",
    )
    where.add_argument(
        "--gpus-per-cell",
        metavar="K",
        help="GPUs of one cell (default 1); more than 1 trains it through torchrun (DDP or "
        "FSDP2, as its train.parallel says)",
    )
    where.add_argument("--partition", help="slurm: the partition")
    where.add_argument("--account", help="slurm: the account")
    where.add_argument(
        "--time-min", metavar="MIN", help="slurm: time limit of one cell's job, minutes (60)"
    )
    where.add_argument("--cpus-per-cell", metavar="N", help="slurm, ray: CPU cores of one cell (1)")
    where.add_argument("--mem-gb", metavar="GB", help="slurm: memory of one cell's job, GB")
    where.add_argument(
        "--no-wait",
        dest="wait",
        action="store_const",
        const=False,
        help="slurm: submit what can run now and exit (130); run the same command again to "
        "collect finished cells and submit the next",
    )
    where.add_argument(
        "--cluster", help="slurm: submitit's cluster, slurm (default) or local to try it here"
    )
    where.add_argument("--address", help="ray: the cluster's address (default: auto)")
    p.set_defaults(func=cmd_compare)


def default_out(name: str) -> Path:
    return Path("runs") / f"compare-{name}"


def executor_settings(args: argparse.Namespace, exp: Any) -> tuple[str, int | None, dict[str, Any]]:
    """The executor's name, --jobs (None: not given) and options: the command line over the
    experiment file's `executor:` section, over the defaults. A flag the chosen executor does
    not use is refused; a file's option for another executor than the chosen one is left out."""
    from budgetlm.compare.run.executors import (
        OPTIONS,
        check_applies,
        check_jobs,
        check_name,
        check_option,
    )

    section = exp.executor
    name = check_name(args.executor) if args.executor is not None else section.get("name", "local")
    if name != section.get("name", "local"):  # the file's jobs were meant for its own executor
        section = {k: v for k, v in section.items() if k != "jobs"}
    jobs = check_jobs(args.jobs) if args.jobs is not None else section.get("jobs")
    given = {k: check_option(k, getattr(args, k)) for k in OPTIONS if getattr(args, k) is not None}
    check_applies(name, given, flags=True)
    from_file = {k: v for k, v in section.items() if k in OPTIONS and name in OPTIONS[k].executors}
    return name, jobs, {**from_file, **given}


def cmd_compare(args: argparse.Namespace) -> int:
    from budgetlm.compare.run.experiment_file import load_experiment
    from budgetlm.compare.run.shapes import check_rst_coverage

    exp = load_experiment(args.experiment)
    name, jobs, options = executor_settings(args, exp)
    out = Path(args.out) if args.out else default_out(exp.name)
    if name != "local" or args.plan:
        # Cells started elsewhere (other machines, the user's own tooling): their folders
        # (run.dir in cell.yaml) must not depend on the working directory.
        out = out.resolve()
    if args.dry_run:
        # What a real run refuses before its first cell, the dry run refuses too.
        check_rst_coverage(exp, progress=not args.quiet)
        _print_plan(exp)
        return 0
    if args.plan:
        return _write_plan(exp, out, args, options)
    from budgetlm.compare.run.executors import make_executor
    from budgetlm.compare.run.grid import GridRunner

    executor = make_executor(name, jobs=jobs, out_dir=out, options=options)
    jobs = getattr(executor, "jobs", None) or jobs or 1
    runner = GridRunner(
        exp,
        out,
        jobs=jobs,
        threads=args.threads or _threads(name, jobs, options, executor),
        progress=not args.quiet,
        retry_failed=args.retry_failed,
        rerun_changed=args.rerun_changed,
        executor=executor,
    )
    print(f"compare {exp.name}: output in {out}; cells on {executor.describe()}", file=sys.stderr)
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
    if outcome.submitted or outcome.queued:
        print(
            f"{len(outcome.submitted)} cells queued or running on {name}, "
            f"{len(outcome.queued)} more to submit; run the same command again to collect them "
            "and submit the next",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
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


def _threads(name: str, jobs: int, options: dict[str, Any], executor: Any) -> int | None:
    """Torch threads per training process when --threads is not given: a cluster cell's CPU
    cores per rank; local GPU cells share this machine's cores among the ranks that run at
    once; None (the grid's default, cores / jobs) otherwise."""
    import math
    import os

    ranks = max(1, math.ceil(options.get("gpus_per_cell") or 1))
    if name != "local":
        return max(1, int(options.get("cpus_per_cell", 1)) // ranks)
    devices = getattr(executor, "devices", None)
    if not devices:
        return None
    at_once = max(1, min(jobs, len(devices) // ranks))
    return max(1, (os.cpu_count() or 1) // (at_once * ranks))


def _write_plan(exp: Any, out: Path, args: argparse.Namespace, options: dict[str, Any]) -> int:
    """`--plan`: every cell's config known now written, nothing run; what to launch, and how."""
    from budgetlm.compare.run.grid import GridRunner

    runner = GridRunner(
        exp,
        out,
        threads=args.threads,
        progress=not args.quiet,
        retry_failed=args.retry_failed,
        rerun_changed=args.rerun_changed,
    )
    planned = runner.plan()
    todo = [(cell, state) for cell, state in planned if state == "todo"]
    print(f"compare {exp.name}: {len(planned)} cells planned in {out} (nothing was run)")
    width = max((len(cell.id) for cell, _ in planned), default=0)
    for cell, state in planned:
        kind = "tune" if exp.is_tuning_cell(cell) else "run"
        folder = out / "cells" / cell.id
        print(f"  {state:<8} {kind:<4}  {cell.id:<{width}}  {folder}")
    tuned = [a for a in exp.arms if a.tuned]
    later = len(tuned) * len(exp.budgets) * len(exp.seeds)
    known = {cell for cell, _ in planned}
    missing = later - sum(1 for c in known if not exp.is_tuning_cell(c) and exp.arm(c.arm).tuned)
    print(f"{len(todo)} to run; one cell (each an ordinary run folder, resumable):")
    print("  python -m budgetlm.compare.run.cell FOLDER")
    ranks = options.get("gpus_per_cell") or 1
    k = int(ranks) if float(ranks).is_integer() and ranks > 1 else "K"
    print(
        f"  on {k} GPUs: python -m torch.distributed.run --standalone --nproc-per-node {k} "
        "-m budgetlm.compare.run.cell FOLDER"
    )
    print("Run the tuning cells first: their results decide the later cells.")
    if missing > 0:
        print(
            f"{missing} judged cells of tuned arms are not planned yet (the tuning cells choose "
            "their LR):\n  once the tuning cells have finished, run --plan again to write them "
            "(and any LR a search adds past an edge of its grid)."
        )
    print(f"Then `budgetlm report {out}` (or this command without --plan) writes the report.")
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
