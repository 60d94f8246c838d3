"""`budgetlm generate RUN_DIR --prompt TEXT`: continue a prompt with a run's newest model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate",
        help="continue a prompt with a run's model (GPT, T5)",
        description="Continue a prompt with the model of a run's newest checkpoint and print "
        "the new text. GPT continues the prompt as the start of a document; T5 fills a "
        "sentinel span appended to the prompt (what span corruption trains it to do). "
        "BERT predicts masked tokens only and is refused.",
    )
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="run directory (or a checkpoint directory inside one)"
    )
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=40, metavar="N", help="at most N ids")
    p.add_argument(
        "--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (argmax)"
    )
    p.add_argument("--top-k", type=int, metavar="K", help="sample among the K likeliest ids")
    p.add_argument("--seed", type=int, default=1, help="seeds the sampling")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from budgetlm.models.generate import CannotGenerate, check_settings, sample_loop
    from budgetlm.train.saved_run import load_run_model

    check_settings(args.max_new_tokens, args.temperature, args.top_k)  # before loading anything
    run = load_run_model(Path(args.run_dir))
    family = run.model.shape.family
    if family == "bert":
        raise CannotGenerate(
            f"{args.run_dir} holds a BERT model, trained to fill masked tokens, not to "
            "continue text; generate works for GPT and T5 runs"
        )
    model = run.model.eval()
    tokenizer = run.data.dataset.tokenizer
    step_logits, start, stop_ids = prompt_setup(model, tokenizer, args.prompt)
    with torch.no_grad():
        new = sample_loop(
            step_logits,
            start,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            seed=args.seed,
            stop_ids=stop_ids,
        )
    print(tokenizer.decode(new, skip_special_tokens=True))
    return 0


def prompt_setup(model: Any, tokenizer: Any, prompt: str) -> tuple[Any, list[int], list[int]]:
    """The next-id logits function, the ids to extend and the ids that end the continuation.

    GPT: the prompt follows a document separator, as every document does in training, and
    ends at the next one. T5: the encoder reads the prompt, a first sentinel and eos (the shape
    of a span-corruption input); the decoder starts from pad, as in training, and ends at eos
    or at the second sentinel (the first span is filled).
    """
    from budgetlm.models.generate import gpt_step_logits, t5_step_logits

    ids = tokenizer.encode(prompt)
    if model.shape.family == "gpt":
        start = [tokenizer.doc_separator_id, *ids]
        return gpt_step_logits(model), start, [tokenizer.doc_separator_id]
    sentinels = tokenizer.sentinel_ids[:2]
    room = model.shape.seq_len - len(sentinels[:1]) - 1  # the prompt's tail, if too long
    encoder_ids = [*ids[-room:], *sentinels[:1], tokenizer.eos_id]
    stop_ids = [tokenizer.eos_id, *sentinels[1:]]
    return t5_step_logits(model, encoder_ids), [tokenizer.pad_id], stop_ids
