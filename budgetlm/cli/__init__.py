"""The command line: `budgetlm COMMAND ...`; `budgetlm.cli.main` builds the parser."""

from budgetlm.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
