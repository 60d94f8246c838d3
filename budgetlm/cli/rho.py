"""`budgetlm rho prepare CONFIG [overrides]`: train the irreducible-loss model, write its table.

The work itself is in budgetlm/train/irreducible.py; this module only parses and reports.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from budgetlm.cli.common import EXIT_INTERRUPTED, split_config_arg


def cmd_rho_prepare(args: argparse.Namespace) -> int:
    from budgetlm.config import load_config
    from budgetlm.methods.rho_loss import load_il_table
    from budgetlm.train.irreducible import ILRunStopped, prepare_il_table

    config, overrides = split_config_arg(args.config, list(args.overrides))
    cfg = load_config(config, overrides)
    if args.quiet:
        cfg.train.progress_bar = False
    try:
        directory = prepare_il_table(cfg, progress=not args.quiet, force=args.force)
    except ILRunStopped as e:
        print(f"budgetlm rho prepare: {e}; run it again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    table = load_il_table(directory)
    cost = table.meta["il_cost"]
    print(f"irreducible-loss table: {directory}")
    print(
        f"IL model: {cost['train_steps']} steps, held-out loss {table.meta.get('il_val_loss')}, "
        f"{cost['total_flops']:.3g} FLOPs with scoring (not charged to RHO-loss runs)"
    )
    print(
        f"examples scored: {table.meta['holdout']['n_train']} "
        f"(held out for the IL model: {table.meta['holdout']['n_held_out']})"
    )
    return 0


def register(subparsers: Any) -> None:
    """Add `rho prepare` to the `budgetlm` command's subparsers."""
    p = subparsers.add_parser(
        "rho",
        help="RHO-loss: train the irreducible-loss model and write its table",
        description="Tools for method=rho_loss.",
    )
    sub = p.add_subparsers(dest="rho_command", required=True, metavar="SUBCOMMAND")
    q = sub.add_parser(
        "prepare",
        help="train the IL model on the hold-out split and score every training example",
        description="Give the config (and overrides) of the RHO-loss run. The IL model trains "
        "with that config (methods.rho_loss.il.* overrides it) on the hold-out split "
        "(methods.rho_loss.holdout_fraction of the training windows, by a hash of their id); "
        "its table goes to methods.rho_loss.table or <run.out_dir>/rho/il-<key>/.",
    )
    q.add_argument("config", nargs="?", help="YAML config of the RHO-loss run")
    q.add_argument("overrides", nargs="*", help="key.sub=value settings applied after the file")
    q.add_argument("--force", action="store_true", help="retrain the IL model even if up to date")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_rho_prepare)
