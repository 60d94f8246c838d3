"""`budgetlm grow`: grow a saved checkpoint (width or depth x k) into a new run directory.

    budgetlm grow runs/gpt-tiny-1a2b3c4d --width 2
    budgetlm grow runs/gpt-tiny-1a2b3c4d/checkpoints/step_000200 --depth 2 --variant identity
    budgetlm train runs/gpt-tiny-1a2b3c4d-width2/config.yaml --resume auto

The work itself is in budgetlm/train/grow_checkpoint.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# Spelled out here (a test checks they match budgetlm.methods.growth_operators) so that building
# the parser does not import torch.
DEPTH_VARIANTS = ("identity", "copy")
DEPTH_MODES = ("interleave", "append")


def register(subparsers: Any) -> None:
    """Add the `grow` command to the `budgetlm` argument parser."""
    p = subparsers.add_parser(
        "grow",
        help="grow a checkpoint's model (width or depth x k) into a new run directory",
        description="Grow a saved checkpoint with the growth operators of staged training: "
        "--width K multiplies d_model, heads and d_ff (loss-preserving for learned, rotary and "
        "relative positions); --depth K multiplies every stack's depth (--variant identity "
        "preserves the loss, copy does not). Optimizer moments are transformed with the model.",
    )
    p.add_argument("checkpoint", help="a checkpoint directory, or a run directory (its newest)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--width", type=int, metavar="K", help="multiply the width by K (e.g. 2)")
    how.add_argument("--depth", type=int, metavar="K", help="multiply the depth by K (e.g. 2)")
    p.add_argument("--variant", choices=DEPTH_VARIANTS, default="identity", help="depth growth")
    p.add_argument("--mode", choices=DEPTH_MODES, default="interleave", help="depth growth")
    p.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="width growth: relative std of noise off the diagonal blocks (0 = exact copy)",
    )
    p.add_argument("--out", help="new run directory (default: <run>-width2 / <run>-depth2)")
    p.set_defaults(func=cmd_grow)


def cmd_grow(args: argparse.Namespace) -> int:
    op, factor = ("width", args.width) if args.width is not None else ("depth", args.depth)
    from budgetlm.train.grow_checkpoint import grow_checkpoint

    result = grow_checkpoint(
        Path(args.checkpoint),
        op,
        factor,
        variant=args.variant,
        mode=args.mode,
        noise=args.noise,
        out=Path(args.out) if args.out else None,
    )
    print(f"grown {op} x{factor}: {result['from']} -> {result['to']}")
    print(f"parameters: {result['params_before']:,} -> {result['params_after']:,}")
    if op == "width" and args.noise == 0 and not result["dropout"]:
        print(
            "note: an exact copy stays a copy while training without dropout; "
            "pass --noise 0.01 to let the halves diverge"
        )
    print(f"checkpoint: {result['checkpoint']}")
    print(f"continue with: budgetlm train {result['run_dir']}/config.yaml --resume auto")
    return 0
