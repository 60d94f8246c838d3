"""`budgetlm finetune RUN_DIR --suite NAME` (docs/finetune.md).

Exit codes: 0 done; 1 a failure during training (the tasks finished before it are saved);
2 bad input (unknown task, a malformed or missing data file, an unwritable --out, results that
cannot be merged): nothing was trained; 5 the results could not be written; 130 interrupted
(the tasks finished before it are saved).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

from budgetlm.errors import EXIT_INTERRUPTED, EXIT_USAGE


class _BadOption(SystemExit):
    """An option value the protocol refuses: exit 2 (bad input), the message as its text."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_USAGE)
        self.message = message

    def __str__(self) -> str:
        return self.message


class _DefaultFloat(float):
    """An option's default, as opposed to the same value given on the command line."""


class _DefaultInt(int):
    """An option's default, as opposed to the same value given on the command line."""


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a fraction from 0 to 1, not {text!r}")
    return value


def register(subparsers: Any) -> None:
    from budgetlm.finetune.instructions.protocol import InstructionProtocol
    from budgetlm.finetune.protocol import Protocol
    from budgetlm.finetune.suites import SUITES

    d, i = Protocol(), InstructionProtocol()
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a run's final model on a suite of downstream tasks",
        description="Fine-tune copies of a run's newest checkpoint on every task of a suite "
        "(offline: real tasks from registry packages; glue / superglue: from --data-dir in the "
        "official layout, or the Hugging Face hub) and write per-task scores and the suite "
        "average to RUN_DIR/finetune/<suite>.json, where compare reports find them.",
    )
    p.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="run directories, or a transformers BERT directory (config.json + weights)",
    )
    p.add_argument(
        "--out",
        help="results folder, created if need be (default: the run itself; runs/hf-NAME for a "
        "transformers model, runs/random-init-NAME with --random-init); one RUN_DIR only",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="the control: fine-tune the run's architecture from random weights instead "
        "(one initialisation per fine-tuning seed), same protocol; results go to --out",
    )
    p.add_argument(
        "--suite",
        default="offline",
        choices=list(SUITES),
        help="instructions / sni: fine-tune one T5 on instruction tasks and report ROUGE-L on "
        "held-out tasks (nanoT5's Super-Natural Instructions protocol)",
    )
    p.add_argument("--tasks", nargs="+", help="a subset of the suite's tasks")
    p.add_argument(
        "--data-dir",
        help="GLUE/SuperGLUE files in the official layout; for sni, SNI's own layout",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="fine-tuning seeds")
    # Defaults of the classification suites, told apart from a value given (the instruction
    # suites have their own: see the group below).
    p.add_argument("--lr", type=float, default=_DefaultFloat(d.lr))
    p.add_argument("--batch-size", type=int, default=_DefaultInt(d.batch_size))
    p.add_argument("--epochs", type=int, default=_DefaultInt(d.epochs))
    g = p.add_argument_group(
        "instruction suites (instructions, sni)",
        f"nanoT5's protocol: --lr {i.lr} (constant), --batch-size {i.batch_size}, --epochs "
        f"{i.epochs} unless given",
    )
    g.add_argument("--steps", type=int, help="cap on optimizer steps (default: the epochs)")
    g.add_argument(
        "--max-instances",
        type=int,
        help=f"instances per training task (default {i.max_instances})",
    )
    g.add_argument(
        "--max-eval-instances",
        type=int,
        help=f"instances per held-out task (default {i.max_eval_instances})",
    )
    g.add_argument(
        "--max-source-len",
        type=int,
        help=f"prompt tokens, cut further to the model's (default {i.max_source_len})",
    )
    g.add_argument(
        "--max-target-len",
        type=int,
        help=f"target tokens, cut further to the model's (default {i.max_target_len})",
    )
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument(
        "--select",
        choices=["final", "max"],
        default=d.select,
        help="report the final epoch (default) or the best one (optimistic)",
    )
    p.add_argument("--max-train", type=int, help="cap training examples per task")
    p.add_argument("--max-eval", type=int, help="cap validation examples per task")
    p.add_argument(
        "--max-dropped",
        type=_fraction,
        default=0.1,
        metavar="FRACTION",
        help="refuse a task when more than this fraction of a split's rows is malformed (skipped "
        "rows are recorded in the results either way)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    from budgetlm.finetune.control import finetune_random_init
    from budgetlm.finetune.run import finetune_run, results_dir_for
    from budgetlm.finetune.store import results_path

    try:
        protocol = _protocol(args)
    except ValueError as e:
        print(f"budgetlm finetune: error: {e}", file=sys.stderr)
        raise _BadOption(f"budgetlm finetune: error: {e}") from e
    if args.out and len(args.run_dirs) > 1:
        print(
            "budgetlm finetune: error: --out takes one RUN_DIR (the results of several models "
            "would be merged into one file)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    missing = [r for r in args.run_dirs if not Path(r).exists()]
    if missing:  # found now, not after the runs before it have been fine-tuned
        print(
            f"budgetlm finetune: error: no such run directory: {', '.join(missing)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    for run_dir in args.run_dirs:
        run = finetune_run
        if args.random_init:
            out = args.out or Path("runs") / f"random-init-{Path(run_dir).resolve().name}"
            run = partial(finetune_random_init, out_dir=out)
        elif args.out:
            run = partial(finetune_run, out_dir=args.out)
        try:
            results = run(
                run_dir,
                args.suite,
                tasks=args.tasks,
                seeds=args.seeds,
                protocol=protocol,
                data_dir=args.data_dir,
                device=args.device,
                progress=not args.quiet,
                max_dropped=args.max_dropped,
                save_partial=True,
            )
        except KeyboardInterrupt:
            print("budgetlm finetune: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        _print_results(run_dir, args, results)
        where = run.keywords["out_dir"] if isinstance(run, partial) else results_dir_for(run_dir)
        print(f"  results: {results_path(where, args.suite)}")
    return 0


INSTRUCTION_OPTIONS = (
    "steps",
    "max_instances",
    "max_eval_instances",
    "max_source_len",
    "max_target_len",
)
CLASSIFICATION_OPTIONS = ("max_length", "select", "max_train", "max_eval")


def _given(args: argparse.Namespace, names: Any) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _protocol(args: argparse.Namespace) -> Any:
    """The suite's protocol from the options given (ValueError: a value it refuses, or an
    option of the other kind of suite)."""
    from budgetlm.finetune.instructions.protocol import InstructionProtocol, is_instruction_suite
    from budgetlm.finetune.protocol import Protocol

    shared = {
        k: v
        for k, v in _given(args, ("lr", "batch_size", "epochs")).items()
        if not isinstance(v, _DefaultFloat | _DefaultInt)
    }
    if is_instruction_suite(args.suite):
        c = Protocol()  # the classification options' defaults: an option left as it is
        wrong = [
            f"--{n.replace('_', '-')}"
            for n in CLASSIFICATION_OPTIONS
            if getattr(args, n) not in (None, getattr(c, n))
        ]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: not an option of suite {args.suite!r}")
        return InstructionProtocol(**shared, **_given(args, INSTRUCTION_OPTIONS))
    wrong = [f"--{n.replace('_', '-')}" for n in _given(args, INSTRUCTION_OPTIONS)]
    if wrong:
        raise ValueError(f"{', '.join(wrong)}: options of the instruction suites only")
    return Protocol(
        lr=float(args.lr),
        batch_size=int(args.batch_size),
        epochs=int(args.epochs),
        max_length=args.max_length,
        select=args.select,
        max_train=args.max_train,
        max_eval=args.max_eval,
    )


def _print_results(run_dir: str, args: argparse.Namespace, results: dict[str, Any]) -> None:
    tasks = results["tasks"]
    now = set(args.tasks or tasks)
    print(f"{run_dir}: {args.suite} average {results['average']:.4f} over {len(tasks)} task(s)")
    for task, r in tasks.items():
        majority = "" if r["majority"] is None else f" (majority class {r['majority']:.4f})"
        dropped = {k: v for k, v in (r.get("dropped") or {}).items() if v}
        skipped = (
            " [skipped malformed rows: " + ", ".join(f"{v} {k}" for k, v in dropped.items()) + "]"
            if dropped
            else ""
        )
        earlier = "" if task in now else " (stored earlier)"
        print(
            f"  {task:<18} {r['main_metric']} {r['mean']:.4f} ± {r['std']:.4f}"
            f"{majority}{skipped}{earlier}"
        )
