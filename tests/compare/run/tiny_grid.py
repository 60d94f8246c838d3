"""What the grid and executor tests share: the tiny GPT cells (milliseconds per step, for
mechanics), the loss columns two runs of a grid must agree on, and waiting for a cell's events."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from pathlib import Path
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


PAUSE_HOOK = Path(__file__).resolve().with_name("pause_hook")
HANG_GUARD = 600  # seconds: a guard against a hang, never a speed test
LOSS_COLUMNS = ("arm", "n", "loss_mean", "loss_std", "diff_vs_baseline", "p_value", "verdict")


def summary_table(out: Path) -> list[tuple]:
    """The loss columns of a grid's summary.csv: what two runs of one grid must agree on."""
    with open(out / "summary.csv") as f:
        return [tuple(r[k] for k in LOSS_COLUMNS) for r in csv.DictReader(f)]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = HANG_GUARD) -> None:
    """Wait for an event; the timeout guards against a hang and is never a speed test."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def paused_env(run_dir: Path, marker: Path) -> dict[str, str]:
    """The cell pauses after its first complete checkpoint until SIGTERM (pause_hook/)."""
    path = os.pathsep.join(filter(None, [str(PAUSE_HOOK), os.environ.get("PYTHONPATH")]))
    return {
        "PYTHONPATH": path,
        "BUDGETLM_TEST_PAUSE_AT": str(run_dir / "checkpoints"),
        "BUDGETLM_TEST_PAUSE_MARKER": str(marker),
    }
