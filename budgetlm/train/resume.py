"""Finding and checking the checkpoint a run resumes from.

A resumed run must continue the same experiment: the same config (but for settings that only
change how it is watched, `RESUME_SAFE`), the same dataset and the same RST price list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from budgetlm.config import RESUME_SAFE, Config, ConfigError, config_diff
from budgetlm.errors import UserError
from budgetlm.models import ModelShape
from budgetlm.train.checkpoint import CheckpointError, complete_checkpoints, decode_tree


class RunExists(UserError, RuntimeError):
    """The run directory already holds a run and no --resume was given."""


def resume_point(run_dir: Path, cfg: Config, resume: str | None) -> Path | None:
    """The checkpoint to continue from (None: a fresh start), after checking that the config
    still describes the run; refuses to start over a run that has checkpoints."""
    checkpoint = _find_resume_point(run_dir, resume)
    if checkpoint is not None:
        _check_resumable(run_dir, cfg)
    elif (run_dir / "checkpoints").is_dir() and complete_checkpoints(run_dir / "checkpoints"):
        raise RunExists(
            f"{run_dir} already holds a run; continue it with --resume auto, or set run.name "
            "(or run.dir) for a new one"
        )
    return checkpoint


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


def _find_resume_point(run_dir: Path, resume: str | None) -> Path | None:
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_dir():
            raise CheckpointError(f"--resume {resume}: no such checkpoint directory")
        return path
    found = complete_checkpoints(run_dir / "checkpoints")
    return found[-1] if found else None


def _check_resumable(run_dir: Path, cfg: Config) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text())
    changed = [
        k
        for k in config_diff(saved, cfg.to_dict())
        if k not in RESUME_SAFE and not k.startswith("run.")
    ]
    if changed:
        raise ConfigError(
            f"cannot resume {run_dir}: the config changed in {changed}; "
            "start a new run (run.name=...) or undo those changes"
        )
