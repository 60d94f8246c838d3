"""`budgetlm prepare`: train a tokenizer and write checksummed token shards (docs/data.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from budgetlm.cli.common import split_config_arg
from budgetlm.errors import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="tokenize a corpus into checksummed token shards",
        description="Train a tokenizer and write token shards (cached by content "
        "hash). Either name a corpus, or give a config to prepare its data. A dataset "
        "prepared before is verified (every file hashed) and rebuilt if corrupted.",
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


def cmd_prepare(args: argparse.Namespace) -> int:
    if args.corpus is None:
        from budgetlm.config import load_config
        from budgetlm.train.run_data import resolve_data

        config, overrides = split_config_arg(args.config, args.overrides)
        data = resolve_data(load_config(config, overrides), verify=True)
        path, meta = data.dataset.path, data.dataset.meta
    else:
        from budgetlm.data import load_prepared, prepare_dataset

        if args.config or args.overrides:
            raise UserError("give either --corpus ... or a config, not both")
        path = prepare_dataset(
            corpus=args.corpus,
            tokenizer=args.tokenizer,
            vocab_size=args.vocab_size,
            out_dir=Path(args.out) if args.out else None,
            val_fraction=args.val_fraction,
            max_bytes=args.max_bytes,
            verify=True,
        )
        meta = load_prepared(path).meta
    print(f"prepared dataset: {path}")
    print(json.dumps({k: meta[k] for k in meta if k not in ("key",)}, indent=1, default=str))
    return 0
