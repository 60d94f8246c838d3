"""`budgetlm shapes [NAME ...]`: model presets with parameters and FLOPs per token."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "shapes",
        help="table of model presets with parameters and FLOPs/token",
        description="Model shape presets. Scale Efficiently variants are parsed "
        "from names, e.g. t5-v1_0-se-small-nl16, t5-v1_0-se-base-dm1024 (aliases: t5-se-...).",
    )
    p.add_argument("names", nargs="*", help="presets or variants to show (default: all presets)")
    p.set_defaults(func=cmd_shapes)


def cmd_shapes(args: argparse.Namespace) -> int:
    from budgetlm.models import format_preset_table

    print(format_preset_table(args.names or None))
    return 0
