"""`budgetlm train CONFIG [key=value ...]`: train one run until its budget is spent."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from budgetlm.budget.clock import BUDGET_FORMATS
from budgetlm.cli.common import EXIT_INTERRUPTED, split_config_arg


def budget_epilog() -> str:
    width = max(len(", ".join(examples)) for examples, _ in BUDGET_FORMATS)
    rows = [f"  {', '.join(examples):<{width}}  {meaning}" for examples, meaning in BUDGET_FORMATS]
    return "budgets (budget=..., quoted when it has a space):\n" + "\n".join(rows)


def plugins_epilog() -> str:
    """The methods and optimizers this environment has: built-ins, then registered plug-ins."""
    from budgetlm.registry import METHODS, OPTIMIZERS, method_names, optimizer_names

    def listed(names: list[str], builtins: dict[str, object]) -> str:
        return ", ".join(n if n in builtins else f"{n} (plug-in)" for n in names)

    return (
        "methods (method=..., combine with +; or a plug-in's import path pkg.module:Class):\n"
        f"  {listed(method_names(), METHODS)}\n"
        "optimizers (optim.name=...; or pkg.module:Object):\n"
        f"  {listed(optimizer_names(), OPTIMIZERS)}\n"
        "writing your own: docs/your-method.md; check it with `budgetlm check-plugin NAME`"
    )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one run under its budget",
        description="Train a model under a budget. Overrides use dotted keys, "
        "e.g. budget=300s optim.lr=1e-3 model.n_layers=6 (every key: docs/config.md).",
        epilog=f"{budget_epilog()}\n\n{plugins_epilog()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="YAML config (optional: defaults train gpt-tiny)")
    p.add_argument("overrides", nargs="*", help="key.sub=value settings applied after the file")
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        metavar="auto|CHECKPOINT",
        help="continue from the newest checkpoint of this run that verifies (auto: newer "
        "broken ones are skipped with a warning; no checkpoint and no history: a fresh start) "
        "or from a given checkpoint directory",
    )
    start.add_argument(
        "--restart",
        action="store_true",
        help="start this run over although its folder holds an earlier run: the old "
        "metrics.jsonl, checkpoints, summary and metadata move to RUN_DIR/previous/<time>/ "
        "(nothing is deleted; remove that folder to free its space). Without it, a run "
        "folder with history is never started from scratch",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="checkpoint and stop after N steps of this session (resume later)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train on N processes of this machine through torchrun (docs/distributed.md)",
    )
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc:
        return _launch_torchrun(args)
    from budgetlm.config import load_config
    from budgetlm.train.session import finished_summary, open_run

    config, overrides = split_config_arg(args.config, args.overrides)
    cfg = load_config(config, overrides)
    if args.quiet:
        cfg.train.progress_bar = False
    if args.resume == "auto" and (done := finished_summary(cfg)) is not None:
        print(f"run already finished: {done['run_dir']}")
        _print_result(done)
        return 0
    trainer = open_run(cfg, resume=args.resume, restart=args.restart)
    main_rank = trainer.dist.is_main
    try:  # the trainer holds the run folder's lock until its log is closed
        if main_rank:
            from budgetlm.train.plan_summary import format_plan, summarize_plan

            print(f"run directory: {trainer.run_dir}", file=sys.stderr)
            for line in format_plan(summarize_plan(trainer)):
                print(line, file=sys.stderr)
        summary = trainer.run(stop_after=args.stop_after)
        # Every rank done before any tears its connections down: a rank that destroys its
        # process group while another still finishes can abort the other's gloo threads at exit
        # ("terminate called without an active exception"). So the log is closed first (on
        # rank 0 that also releases the run lock: a rename, a read and a thread to stop), and
        # only then do the ranks meet.
        if trainer.log is not None:
            trainer.log.close()
        trainer.dist.barrier()
    finally:
        if trainer.log is not None:
            trainer.log.close()
        if trainer.dist.active:
            import torch.distributed

            torch.distributed.destroy_process_group()
    if not main_rank:
        return EXIT_INTERRUPTED if summary["status"] == "interrupted" else 0
    if summary["status"] == "interrupted":
        print(
            f"interrupted at step {summary['steps']}; checkpoint saved. Continue with: "
            f"budgetlm train {' '.join(_without_start_flags(sys.argv[2:]))} --resume auto",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    _print_result(summary)
    return 0


def _without_start_flags(argv: list[str]) -> list[str]:
    """The command line less --restart and --resume (the suggestion adds --resume auto)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif arg != "--restart" and not arg.startswith("--resume="):
            out.append(arg)
    return out


def _launch_torchrun(args: argparse.Namespace) -> int:
    """`budgetlm train --nproc N ...` = torchrun on this node with N processes, each running
    the same `budgetlm train` without --nproc."""
    import subprocess

    if args.nproc < 1:
        raise SystemExit("--nproc must be at least 1")
    rest = ["train", *([args.config] if args.config else []), *args.overrides]
    if args.resume:
        rest += ["--resume", args.resume]
    if args.restart:
        rest.append("--restart")
    if args.stop_after is not None:
        rest += ["--stop-after", str(args.stop_after)]
    if args.quiet:
        rest.append("--quiet")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
        "-m",
        "budgetlm",
        *rest,
    ]
    return subprocess.call(command)


def _print_result(summary: dict) -> None:
    loss = summary.get("final_val_loss")
    print(f"run directory: {summary['run_dir']}")
    print(
        f"status: {summary['status']} after {summary['steps']} steps "
        f"({summary['budget']['text']} budget, {summary['epochs']} epochs)"
    )
    if loss is not None:
        print(f"final held-out loss: {loss:.4f}")
