"""`budgetlm export RUN_DIR --out DIR`: a run's model as a Hugging Face transformers directory."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a run's model as a Hugging Face transformers model directory",
        description="Export a run's newest checkpoint: GPT -> GPT2LMHeadModel, T5 v1.1 -> "
        "T5ForConditionalGeneration (same logits), with its tokenizer.json. budgetlm's BERT "
        "(cramming: pre-LayerNorm) has no faithful transformers class and is refused.",
    )
    p.add_argument("run_dir", help="a run directory")
    p.add_argument("--out", required=True, help="the model directory to write")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from budgetlm.finetune.run import load_backbone
    from budgetlm.interop.hf_export import ExportError, export_hf

    model, tokenizer = load_backbone(Path(args.run_dir))
    try:
        out = export_hf(model, args.out, tokenizer)
    except ExportError as e:
        raise SystemExit(f"budgetlm export: error: {e}") from e
    print(f"exported {model.shape.family} to {out}")
    return 0
