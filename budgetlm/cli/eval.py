"""`budgetlm eval RUN_DIR|CHECKPOINT`: held-out loss of a run's newest checkpoint, as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="held-out loss of a run or checkpoint",
        description="Held-out loss (fixed split, fixed masks) of a run directory's "
        "newest checkpoint, or of a given checkpoint directory.",
    )
    p.add_argument("path", help="run directory or checkpoint directory")
    p.add_argument("--batches", type=int, help="number of held-out batches (default: the run's)")
    p.add_argument(
        "--split",
        choices=["test", "tune", "val", "train"],
        help="split to evaluate on (default: the run's own train.eval_split; val is test)",
    )
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from budgetlm.train.saved_run import evaluate_checkpoint

    metrics = evaluate_checkpoint(Path(args.path), batches=args.batches, split=args.split)
    print(json.dumps(metrics, indent=1))
    return 0
