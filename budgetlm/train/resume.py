"""Finding and checking the checkpoint a run resumes from; never starting over silently.

A resumed run must continue the same experiment: the same config (but for settings that only
change how it is watched, `RESUME_SAFE`), the same dataset and the same RST price list.

`--resume auto` takes the newest checkpoint that verifies (every file against its manifest) and
names each newer one it skipped and why (a warning: printed, in metrics.jsonl and in the
summary). A run folder with history (records in metrics.jsonl, or checkpoint folders, even
broken ones) is never started from scratch unless asked with `restart` (`--restart`), which
moves the old files aside into `previous/<time>/` rather than deleting them; without it a fresh
start is refused with a message that says what was found and what to do.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from budgetlm.config import Config, ConfigError, resume_drift
from budgetlm.errors import UserError
from budgetlm.models import ModelShape
from budgetlm.train.checkpoint import (
    CheckpointError,
    checkpoint_dirs,
    decode_tree,
    is_valid,
    storage_guard,
    verify_checkpoint,
)
from budgetlm.train.metrics import count_records

# What a run writes into its folder: what `--restart` moves aside. Anything else (a grid's
# cell.yaml, the lock file) stays where it is.
RUN_OUTPUTS = (
    "metrics.jsonl",
    "checkpoints",
    "summary.json",
    "meta.json",
    "config.yaml",
    "trackers.json",
    "tensorboard",
    "finetune",
)
PREVIOUS_DIR = "previous"


class RunExists(UserError, RuntimeError):
    """The run directory already holds a run that this start would throw away."""


@dataclass
class History:
    """What a run folder holds of earlier attempts."""

    run_dir: Path
    records: int = 0
    last_step: int | None = None
    checkpoints: list[Path] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.records > 0 or bool(self.checkpoints)

    def describe(self) -> str:
        parts = []
        if self.records:
            up_to = f", up to step {self.last_step}" if self.last_step is not None else ""
            parts.append(f"metrics.jsonl with {self.records} records{up_to}")
        if self.checkpoints:
            names = ", ".join(p.name for p in self.checkpoints)
            parts.append(f"{len(self.checkpoints)} checkpoint folder(s) ({names})")
        return " and ".join(parts) or "nothing"


def run_history(run_dir: Path) -> History:
    records, last = count_records(run_dir / "metrics.jsonl")
    return History(run_dir, records, last, checkpoint_dirs(run_dir / "checkpoints"))


def nothing_to_resume(run_dir: Path) -> bool:
    """True when the folder has history but no checkpoint that verifies: an attempt killed
    before its first complete checkpoint (a grid cell then starts over, its files moved aside)."""
    history = run_history(run_dir)
    return bool(history) and not any(is_valid(p) for p in history.checkpoints)


@dataclass
class ResumePoint:
    """Where a run starts: a checkpoint (None: from scratch), and what was skipped on the way."""

    checkpoint: Path | None
    warnings: list[str] = field(default_factory=list)


def _restart_hint(run_dir: Path) -> str:
    return f"--restart (the old files move to {run_dir / PREVIOUS_DIR}/<time>/)"


def resume_point(run_dir: Path, cfg: Config, resume: str | None) -> ResumePoint:
    """The checkpoint to continue from (None: a fresh start), after checking that the config
    still describes the run. Refuses to start from scratch over a run folder with history."""
    point = _find_resume_point(run_dir, resume)
    if point.checkpoint is not None:
        _check_resumable(run_dir, cfg)
    return point


def restart_run(run_dir: Path) -> Path | None:
    """Move the run's files (RUN_OUTPUTS) into `previous/<time>/`; return that folder (None when
    there was nothing to move). Only under the run lock."""
    found = [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if not found:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = run_dir / PREVIOUS_DIR / stamp
    n = 1
    while dest.exists():
        n += 1
        dest = run_dir / PREVIOUS_DIR / f"{stamp}-{n}"
    with storage_guard(dest, "the previous run into"):
        dest.mkdir(parents=True)
        for path in found:
            os.replace(path, dest / path.name)  # same file system: a rename, no copy
    return dest


def check_same_experiment(
    checkpoint: Path, saved: dict[str, Any], current: dict[str, Any], cfg: Config
) -> None:
    """The checkpoint's dataset and RST table are this run's (its saved metadata vs now)."""
    if saved.get("dataset_key") != current["dataset_key"]:
        raise CheckpointError(
            f"{checkpoint} was trained on dataset {saved.get('dataset_key')}, "
            f"this config prepares {current['dataset_key']}"
        )
    if saved.get("rst_table") != current["rst_table"] and not cfg.rst.allow_table_change:
        raise CheckpointError(
            f"{checkpoint} was charged with RST table {saved.get('rst_table')}, this run "
            f"prices with {current['rst_table']}; resuming would mix two clocks. "
            "Set rst.allow_table_change=true to continue anyway"
        )


def checkpoint_shape(checkpoint: Path | None) -> ModelShape | None:
    if checkpoint is None:
        return None
    trainer = json.loads((checkpoint / "trainer.json").read_text())
    shape = decode_tree(trainer, {}).get("shape")
    return ModelShape(**shape) if shape else None


def _find_resume_point(run_dir: Path, resume: str | None) -> ResumePoint:
    if resume is not None and resume != "auto":
        path = Path(resume)
        if not path.is_dir():
            raise CheckpointError(f"--resume {resume}: no such checkpoint directory")
        return ResumePoint(path)
    history = run_history(run_dir)
    if resume is None:
        if history:
            raise RunExists(
                f"{run_dir} already holds a run ({history.describe()}). Continue it with "
                f"--resume auto, or start it over with {_restart_hint(run_dir)}; or set "
                "run.name (or run.dir) for a new run"
            )
        return ResumePoint(None)
    skipped: list[str] = []
    for path in reversed(history.checkpoints):
        try:
            verify_checkpoint(path)
        except (CheckpointError, OSError) as e:
            skipped.append(str(e))
            continue
        warnings = [
            f"--resume auto skipped a checkpoint that does not verify: {why}; "
            f"resumed from {path.name}"
            for why in skipped
        ]
        return ResumePoint(path, warnings)
    if history:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise RunExists(
            f"--resume auto: {run_dir} holds {history.describe()} but no checkpoint that "
            f"verifies{why}. Start it over with {_restart_hint(run_dir)}, or continue from a "
            "checkpoint you restore with --resume CHECKPOINT"
        )
    return ResumePoint(None)


def _check_resumable(run_dir: Path, cfg: Config) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text())
    changed = resume_drift(saved, cfg.to_dict())
    if changed:
        raise ConfigError(
            f"cannot resume {run_dir}: the config changed in {changed}; "
            "start a new run (run.name=...) or undo those changes"
        )
