"""The `budgetlm` command. Each subcommand is documented by `budgetlm <command> --help`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

EXIT_USAGE = 2  # bad config or input: nothing was written
EXIT_INTERRUPTED = 130


def user_errors() -> tuple[type[BaseException], ...]:
    from budgetlm.budget.clock import BudgetError
    from budgetlm.budget.rst import TableError
    from budgetlm.compare.experiment import ExperimentError
    from budgetlm.compare.report import ReportError
    from budgetlm.config import ConfigError
    from budgetlm.data.shards import ShardError
    from budgetlm.finetune.tasks import TaskError
    from budgetlm.train.checkpoint import CheckpointError
    from budgetlm.train.session import RunExists

    return (
        ExperimentError,
        ReportError,
        ConfigError,
        BudgetError,
        TableError,
        ShardError,
        CheckpointError,
        RunExists,
        TaskError,
        FileNotFoundError,
    )


# -- train --------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc:
        return _launch_torchrun(args)
    from budgetlm.config import load_config
    from budgetlm.train.session import finished_summary, open_run

    config, overrides = _split_config_arg(args.config, args.overrides)
    cfg = load_config(config, overrides)
    if args.quiet:
        cfg.train.progress_bar = False
    if args.resume == "auto" and (done := finished_summary(cfg)) is not None:
        print(f"run already finished: {done['run_dir']}")
        _print_result(done)
        return 0
    trainer = open_run(cfg, resume=args.resume)
    main_rank = trainer.dist.is_main
    if main_rank:
        print(f"run directory: {trainer.run_dir}", file=sys.stderr)
    try:
        summary = trainer.run(stop_after=args.stop_after)
        # Every rank done before any tears its connections down: a rank that destroys its
        # process group while another still finishes (rank 0 writes the summary) can abort the
        # other's gloo threads at exit ("terminate called without an active exception").
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
            f"budgetlm train {' '.join(sys.argv[2:])} --resume auto",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    _print_result(summary)
    return 0


def _launch_torchrun(args: argparse.Namespace) -> int:
    """`budgetlm train --nproc N ...` = torchrun on this node with N processes, each running
    the same `budgetlm train` without --nproc."""
    import subprocess

    if args.nproc < 1:
        raise SystemExit("--nproc must be at least 1")
    rest = ["train", *([args.config] if args.config else []), *args.overrides]
    if args.resume:
        rest += ["--resume", args.resume]
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


def _split_config_arg(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """The config file is optional: a first argument with '=' is already an override."""
    if config is not None and "=" in config:
        return None, [config, *overrides]
    return config, overrides


def _print_result(summary: dict) -> None:
    loss = summary.get("final_val_loss")
    print(f"run directory: {summary['run_dir']}")
    print(
        f"status: {summary['status']} after {summary['steps']} steps "
        f"({summary['budget']['text']} budget, {summary['epochs']} epochs)"
    )
    if loss is not None:
        print(f"final held-out loss: {loss:.4f}")


# -- prepare ------------------------------------------------------------------------------------


def cmd_prepare(args: argparse.Namespace) -> int:
    if args.corpus is None:
        from budgetlm.config import load_config
        from budgetlm.train.session import resolve_data

        config, overrides = _split_config_arg(args.config, args.overrides)
        data = resolve_data(load_config(config, overrides))
        path, meta = data.dataset.path, data.dataset.meta
    else:
        from budgetlm.data import load_prepared, prepare_dataset

        if args.config or args.overrides:
            raise SystemExit("give either --corpus ... or a config, not both")
        path = prepare_dataset(
            corpus=args.corpus,
            tokenizer=args.tokenizer,
            vocab_size=args.vocab_size,
            out_dir=Path(args.out) if args.out else None,
            val_fraction=args.val_fraction,
            max_bytes=args.max_bytes,
        )
        meta = load_prepared(path).meta
    print(f"prepared dataset: {path}")
    print(json.dumps({k: meta[k] for k in meta if k not in ("key",)}, indent=1, default=str))
    return 0


# -- calibrate ----------------------------------------------------------------------------------


def cmd_calibrate(args: argparse.Namespace) -> int:
    from budgetlm.budget.calibrate import calibrate_config
    from budgetlm.budget.rst import CostTable, TableError
    from budgetlm.config import load_config

    out = Path(args.out)
    table = None
    refused: list[str] = []
    if out.is_file():
        table = CostTable.load(out)
    for config in args.configs:
        config_path, overrides = _split_config_arg(config, args.set)
        cfg = load_config(config_path, overrides)
        entry, machine = calibrate_config(
            cfg,
            batch_sizes=args.batch_sizes,
            optimizers=args.optimizers,
            repeats=args.repeats,
            warmup=args.warmup,
            progress=not args.quiet,
            tolerance=args.tolerance,
        )
        if table is None:
            table = CostTable(machine, tolerance=args.tolerance)
        elif table.machine != machine:
            raise TableError(
                f"{out} was measured on {table.machine}, this machine is {machine}: "
                "one table describes one reference machine; write a new file"
            )
        try:
            table.add(entry)  # fits and checks; refuses a bad entry with the offending points
        except TableError as e:
            # Keep the measurements (minutes of a reference machine) for a look or a re-check
            # at another --tolerance; the other configs are still measured.
            kept = out.with_name(f"{out.stem}.refused-{len(refused) + 1}.json")
            kept.write_text(json.dumps(dataclasses.asdict(entry), indent=1) + "\n")
            print(f"{e}\n  measurements kept in {kept}", file=sys.stderr)
            refused.append(entry.label)
            continue
        worst = max(abs(r) for rs in entry.residuals.values() for r in rs)
        print(
            f"{entry.label}: {len(entry.points)} points, worst fit residual {worst:.1%}, "
            f"optimizer step {entry.optimizer_seconds}"
        )
    if table is not None and table.entries:
        table.save(out)
        print(f"wrote {out} ({len(table.entries)} shapes, hash {table.hash[:12]})")
    if refused:
        print(f"refused: {', '.join(refused)}", file=sys.stderr)
        return 1
    return 0


# -- eval ---------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from budgetlm.train.session import evaluate_checkpoint

    metrics = evaluate_checkpoint(Path(args.path), batches=args.batches, split=args.split)
    print(json.dumps(metrics, indent=1))
    return 0


# -- shapes -------------------------------------------------------------------------------------


def cmd_shapes(args: argparse.Namespace) -> int:
    from budgetlm.models import format_preset_table

    print(format_preset_table(args.names or None))
    return 0


# -- wiring -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="budgetlm",
        description="Pre-train transformer LMs under a fixed compute budget and compare methods.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train one run under its budget",
        description="Train a model under a budget. Overrides use dotted keys, "
        "e.g. budget=300s optim.lr=1e-3 model.n_layers=6.",
    )
    p.add_argument("config", nargs="?", help="YAML config (optional: defaults train gpt-tiny)")
    p.add_argument("overrides", nargs="*", help="key.sub=value settings applied after the file")
    p.add_argument(
        "--resume",
        metavar="auto|CHECKPOINT",
        help="continue from the newest complete checkpoint of this run (auto) "
        "or from a given checkpoint directory",
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

    p = sub.add_parser(
        "prepare",
        help="tokenize a corpus into checksummed token shards",
        description="Train a tokenizer and write token shards (cached by content "
        "hash). Either name a corpus, or give a config to prepare its data.",
    )
    p.add_argument("config", nargs="?", help="YAML config whose data section to prepare")
    p.add_argument("overrides", nargs="*", help="key.sub=value settings for the config")
    p.add_argument("--corpus", help="fixture | bundled | PATH (.txt/.jsonl/dir) | hf:NAME[:CONFIG]")
    p.add_argument("--tokenizer", default="bpe", choices=["bpe", "wordpiece", "unigram", "gpt2"])
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--val-fraction", type=float, default=0.02)
    p.add_argument("--max-bytes", type=int, help="read at most this much text")
    p.add_argument("--out", help="output directory (default: the cache, by content hash)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "calibrate",
        help="measure an RST cost table on this machine",
        description="Time forward and training passes of each config's model over a grid of "
        "micro-batch sizes and active depths, and each optimizer's step; fit the cost model, "
        "check it, and write (or extend) a versioned JSON table. See docs/rst.md.",
    )
    p.add_argument("configs", nargs="+", help="YAML configs whose model shapes to measure")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every config"
    )
    p.add_argument("--out", required=True, help="table file to write (extended if it exists)")
    p.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        help="micro-batch sizes (default: the micro-batch, its half and quarter)",
    )
    p.add_argument("--optimizers", nargs="+", help="optimizers to time (default: config's, adamw)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per point (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repeats before each point")
    p.add_argument(
        "--tolerance", type=float, default=0.25, help="largest relative residual from the fit"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "eval",
        help="held-out loss of a run or checkpoint",
        description="Held-out loss (fixed split, fixed masks) of a run directory's "
        "newest checkpoint, or of a given checkpoint directory.",
    )
    p.add_argument("path", help="run directory or checkpoint directory")
    p.add_argument("--batches", type=int, help="number of held-out batches (default: the run's)")
    p.add_argument("--split", default="val", choices=["val", "train"])
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "shapes",
        help="table of model presets with parameters and FLOPs/token",
        description="Model shape presets. Scale Efficiently variants are parsed "
        "from names, e.g. t5-se-small-nl16, t5-se-base-dm1024.",
    )
    p.add_argument("names", nargs="*", help="presets or variants to show (default: all presets)")
    p.set_defaults(func=cmd_shapes)

    # Commands of the methods, each in its own module.
    from budgetlm import compare_cli, finetune_cli, growth_cli, rho_cli, scaling_cli

    compare_cli.register(sub)
    finetune_cli.register(sub)
    growth_cli.register(sub)
    scaling_cli.register(sub)
    rho_cli.register(sub)
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
