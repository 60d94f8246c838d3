"""`budgetlm finetune RUN_DIR --suite NAME` (docs/finetune.md)."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    from budgetlm.finetune.protocol import Protocol

    d = Protocol()
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
        help="results folder for a transformers model (default runs/hf-NAME) or with "
        "--random-init (default runs/random-init-NAME)",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="the control: fine-tune the run's architecture from random weights instead "
        "(one initialisation per fine-tuning seed), same protocol; results go to --out",
    )
    p.add_argument("--suite", default="offline", choices=["offline", "glue", "superglue"])
    p.add_argument("--tasks", nargs="+", help="a subset of the suite's tasks")
    p.add_argument("--data-dir", help="GLUE/SuperGLUE files in the official layout")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="fine-tuning seeds")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument(
        "--select",
        choices=["final", "max"],
        default=d.select,
        help="report the final epoch (default) or the best one (optimistic)",
    )
    p.add_argument("--max-train", type=int, help="cap training examples per task")
    p.add_argument("--max-eval", type=int, help="cap validation examples per task")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    from budgetlm.finetune.control import finetune_random_init
    from budgetlm.finetune.protocol import Protocol
    from budgetlm.finetune.run import finetune_run

    try:
        protocol = Protocol(
            lr=args.lr,
            batch_size=args.batch_size,
            epochs=args.epochs,
            max_length=args.max_length,
            select=args.select,
            max_train=args.max_train,
            max_eval=args.max_eval,
        )
    except ValueError as e:
        raise SystemExit(f"budgetlm finetune: error: {e}") from e
    for run_dir in args.run_dirs:
        run = finetune_run
        if args.random_init:
            run = partial(
                finetune_random_init,
                out_dir=args.out or Path("runs") / f"random-init-{Path(run_dir).resolve().name}",
            )
        elif args.out:
            run = partial(finetune_run, out_dir=args.out)
        results = run(
            run_dir,
            args.suite,
            tasks=args.tasks,
            seeds=args.seeds,
            protocol=protocol,
            data_dir=args.data_dir,
            device=args.device,
            progress=not args.quiet,
        )
        print(f"{run_dir}: {args.suite} average {results['average']:.4f}")
        for task, r in results["tasks"].items():
            majority = "" if r["majority"] is None else f" (majority class {r['majority']:.4f})"
            print(f"  {task:<18} {r['main_metric']} {r['mean']:.4f} ± {r['std']:.4f}{majority}")
    return 0
