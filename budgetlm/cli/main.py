"""The `budgetlm` command: one module per subcommand, each adding itself to the parser.

Building the parser imports only the command modules, which import nothing heavy at module level:
`budgetlm --help`, a typo or `budgetlm report` never load torch. Each command imports what it
needs when it runs. Errors a user can fix (`budgetlm.errors.UserError`) print one line and exit
with status 2; see `budgetlm.errors` for every exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from budgetlm.errors import EXIT_USAGE, user_errors

# The order `budgetlm --help` lists them in: the everyday commands first.
COMMANDS = (
    "train",
    "compare",
    "report",
    "finetune",
    "export",
    "prepare",
    "calibrate",
    "eval",
    "shapes",
    "grow",
    "scaling",
    "rho",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="budgetlm",
        description="Pre-train transformer LMs under a fixed compute budget and compare methods.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"budgetlm.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except user_errors() as e:
        print(f"budgetlm {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
