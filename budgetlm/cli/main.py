"""The `budgetlm` command: one module per subcommand, each adding itself to the parser.

Building the parser imports only the command modules, which import nothing heavy at module level:
`budgetlm --help`, `--version`, a typo or `budgetlm report` never load torch. Each command imports
what it needs when it runs. Errors a user can fix (`budgetlm.errors.UserError`) print one line
and exit with status 2; see `budgetlm.errors` for every exit code.
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from budgetlm.errors import exit_code_for, user_errors

# The order `budgetlm --help` lists them in: the everyday commands first.
COMMANDS = (
    "train",
    "generate",
    "compare",
    "report",
    "finetune",
    "export",
    "prepare",
    "calibrate",
    "check-plugin",
    "eval",
    "shapes",
    "grow",
    "scaling",
    "rho",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless that says nothing (None, False, an
    empty list) or the help already speaks of its default. Descriptions and epilogs keep their
    line breaks (each line is wrapped on its own), so an epilog can hold a small table."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if not _shows_default(action) or "default" in help_text.lower():
            return action.help
        return f"{help_text} (default: %(default)s)".strip()

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines() or [""]:
            # A wrapped table row continues under its second column (after a 2-space gap).
            row = re.match(r"\s*\S.*?\s{2,}(?=\S)", line)
            own = line[: len(line) - len(line.lstrip())]
            hang = " " * len(row.group()) if row else own
            filled = textwrap.fill(
                line.strip(), width, initial_indent=indent + own, subsequent_indent=indent + hang
            )
            lines.append(filled or indent)
        return "\n".join(lines)


def _shows_default(action: argparse.Action) -> bool:
    """Whether an action's default is worth printing: not for positionals that need a value,
    nor None, False (a flag), an empty list or string."""
    if not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)):
        return False
    default = action.default
    return not (
        default is None or default is False or default is argparse.SUPPRESS or default in ([], "")
    )


def _use_formatter(parser: argparse.ArgumentParser) -> None:
    """Give `parser` and every subcommand's parser below it the one help formatter, so no
    command module has to ask for it."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if action.help is None and _shows_default(action):
            action.help = "(default: %(default)s)"  # argparse prints nothing for help=None
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                _use_formatter(sub)


def version_text() -> str:
    """`budgetlm <version>`, plus the git revision when running from a checkout."""
    from importlib import metadata

    try:
        version = metadata.version("budgetlm")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        from budgetlm import __version__ as version
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return f"budgetlm {version}"
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=2,
        )
    except (OSError, subprocess.TimeoutExpired):
        return f"budgetlm {version}"
    revision = rev.stdout.strip()
    if rev.returncode != 0 or not revision:
        return f"budgetlm {version}"
    return f"budgetlm {version} (git {revision})"


class _VersionAction(argparse.Action):
    """`--version`: the text is computed only when asked (it may call git)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="budgetlm",
        description="Pre-train transformer LMs under a fixed compute budget and compare methods.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"budgetlm.cli.{name.replace('-', '_')}").register(sub)
    _use_formatter(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except user_errors() as e:
        print(f"budgetlm {args.command}: error: {e}", file=sys.stderr)
        return exit_code_for(e)


if __name__ == "__main__":
    sys.exit(main())
