"""The tiny GPT cells of the grid and executor tests: milliseconds per step, for mechanics."""

from __future__ import annotations

from typing import Any


def small_gpt(eval_every: float = 0.5, checkpoint_every: float = 0.25) -> dict[str, Any]:
    """The inline `config:` of a tiny experiment on the fixture corpus."""
    return {
        "model": {
            "preset": "gpt-tiny",
            "n_layers": 2,
            "d_model": 32,
            "n_heads": 2,
            "d_kv": 16,
            "d_ff": 64,
            "seq_len": 32,
        },
        "data": {"corpus": "fixture", "vocab_size": 2048, "val_fraction": 0.05},
        "optim": {"name": "adamw", "lr": 3e-3},
        "schedule": {"name": "warmup_linear"},
        "train": {
            "batch_size": 8,
            "eval_batches": 2,
            "eval_every": eval_every,
            "checkpoint_every": checkpoint_every,
            "threads": 1,
        },
    }


# Two arms, one tuned and one at its configured LR: the executors' grid.
ARMS = [
    {"name": "baseline"},
    {"name": "lion", "optim": "lion", "set": {"optim.lr": 3e-4}, "tune": False},
]
