"""Command lines for tiny runs on the fixture corpus (the settings of tests/train/helpers.py)."""

from __future__ import annotations

from pathlib import Path

from ..train.helpers import tiny_overrides


def train_args(family: str, run_dir: Path, *overrides: str) -> list[str]:
    """`budgetlm train` arguments of a milliseconds-per-step run of `family` in `run_dir`."""
    return ["train", "--quiet", *tiny_overrides(family, run_dir), *overrides]
