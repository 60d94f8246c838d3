"""Tiny run configs for loop tests: models small enough that a step takes milliseconds."""

from __future__ import annotations

from pathlib import Path

from budgetlm.config import Config, load_config
from budgetlm.conformance.runs import TINY_MODEL

PRESET = {"gpt": "gpt-tiny", "bert": "bert-tiny", "t5": "t5-tiny"}
OPTIM = {
    "gpt": ["optim.lr=3e-3", "schedule.name=warmup_linear"],
    "bert": ["optim.lr=3e-3", "schedule.name=one_cycle"],
    "t5": [
        "optim.name=adamw_rms",
        "optim.lr=2e-2",
        "optim.weight_decay=0",
        "schedule.name=warmup_cosine",
    ],
}


# A model whose step takes milliseconds, for mechanics, not for learning: the conformance suite's
# tiny model (budgetlm/conformance/runs.py) without its dropout (these runs set their own).
SMALL = [s for s in TINY_MODEL if not s.startswith("model.dropout=")]


def tiny_overrides(family: str, run_dir: Path, small: bool = True) -> list[str]:
    """The key=value settings of a tiny run of `family` in `run_dir` on the fixture corpus."""
    base = [
        f"model.preset={PRESET[family]}",
        "data.corpus=fixture",
        "data.vocab_size=2048",
        "data.val_fraction=0.05",
        f"run.dir={run_dir}",
        "train.batch_size=8",
        "train.eval_batches=2",
        "train.progress_bar=false",
        "train.log_every=1",
    ]
    if small:  # milliseconds per step: for mechanics, not for learning
        base += SMALL
        if family == "t5":
            base += ["model.n_decoder_layers=2"]
    return [*base, *OPTIM[family]]


def tiny_config(family: str, run_dir: Path, *overrides: str, small: bool = True) -> Config:
    return load_config(None, [*tiny_overrides(family, run_dir, small), *overrides])


def resume_run_args(family: str, run_dir, *extra: str) -> list[str]:
    """Overrides of the small run the resume tests interrupt: 12 steps, a checkpoint every 3."""
    args = [
        f"model.preset={PRESET[family]}",
        "data.corpus=fixture",
        "data.vocab_size=2048",
        "data.val_fraction=0.05",
        f"run.dir={run_dir}",
        "budget=12steps",
        "train.batch_size=4",
        "train.eval_batches=2",
        "train.eval_every=0.5",
        "train.checkpoint_every=0.25",
        "train.keep_checkpoints=5",
        "train.log_every=1",
        "model.dropout=0.1",
        *SMALL,
    ]
    if family == "t5":
        args += ["model.n_decoder_layers=2", "optim.name=adamw_rms"]
    return [*args, *extra]
