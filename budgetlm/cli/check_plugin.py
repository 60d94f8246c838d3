"""`budgetlm check-plugin NAME...`: run the conformance suite (budgetlm/conformance/) on methods
and optimizers, built-in or plug-in, and say which checks pass.

Exit status: 0 when every check passes, 1 when one fails, 2 for a name that is no method,
optimizer, import path or plug-in package (with a did-you-mean) or other bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

FAMILIES = ("gpt", "bert", "t5")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check-plugin",
        help="run the conformance suite on methods and optimizers (plug-ins or built-ins)",
        description="Check that methods and optimizers keep the contract of the training loop: "
        "their options are validated (did-you-mean on typos), they train on every model family "
        "they declare, every pass they run is charged to the budget, a run stopped and resumed "
        "around their events ends bit-identical to an uninterrupted one, their state round-trips "
        "through state_dict(), and they compose with (or cleanly refuse) every other method. "
        "Each check runs tiny models for a few steps on the CPU.",
        epilog="NAME is a built-in or registered name (layer_drop, sophia), an import path "
        "(my_pkg.my_module:MyMethod: a method if it subclasses budgetlm.api.Method, an optimizer "
        "otherwise), or an installed package whose entry points register plug-ins (all of them "
        "are checked).\n"
        "Exit status: 0 all checks passed, 1 a check failed, 2 bad input.\n"
        "In a plug-in's own tests: budgetlm.conformance.conformance_cases and run_case.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="methods and optimizers to check")
    p.add_argument(
        "--all", action="store_true", help="check every registered method and optimizer too"
    )
    p.add_argument(
        "--family",
        action="append",
        choices=FAMILIES,
        help="model family to train (repeatable; default: every family the subject supports)",
    )
    p.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="settings for the runs, e.g. methods.my_method.alpha=0.1 or optim.options.rho=0.02",
    )
    p.add_argument("--quiet", action="store_true", help="print only failed checks and the summary")
    p.set_defaults(func=cmd_check_plugin)


def cmd_check_plugin(args: argparse.Namespace) -> int:
    from budgetlm.cli.common import EXIT_FAILED, EXIT_OK
    from budgetlm.config import ConfigError
    from budgetlm.conformance import (
        Workspace,
        conformance_cases,
        format_result,
        run_case,
        summary_line,
    )
    from budgetlm.registry import method_names, optimizer_names

    names = list(args.names)
    if args.all:
        names += [*method_names(), *optimizer_names()]
    if not names:
        raise ConfigError("name a method or an optimizer to check (or give --all)")
    for item in args.set:
        if "=" not in item or not item.partition("=")[0].strip():
            raise ConfigError(f"--set {item!r} must look like key.sub=value")
    cases = conformance_cases(names, families=args.family, overrides=args.set)
    if not cases:
        raise ConfigError(f"nothing to check for {names} on families {args.family}")
    started = time.perf_counter()
    results = []
    workspace = Workspace()
    subject = None
    try:
        for case in cases:
            if case.subject != subject and not args.quiet:
                subject = case.subject
                print(f"{subject.kind} {subject.name}:", flush=True)
            result = run_case(case, workspace)
            results.append(result)
            if not (args.quiet and result.passed):
                print(format_result(result, sys.stdout, indent="  "), flush=True)
    finally:
        workspace.close()
    print(summary_line(results, time.perf_counter() - started), flush=True)
    return EXIT_OK if all(r.passed for r in results) else EXIT_FAILED
