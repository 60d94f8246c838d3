"""A finished (or saved) run's model, restored for evaluation, fine-tuning, export or generation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from budgetlm.config import Config
from budgetlm.models import build_model
from budgetlm.train.checkpoint import CheckpointError, newest_to_load
from budgetlm.train.resume import checkpoint_shape
from budgetlm.train.run_data import DataBundle, heldout_batches, resolve_data
from budgetlm.train.runtime import autocast_for, resolve_device


@dataclass
class LoadedRun:
    """A run's model restored from one of its checkpoints, with the run's config and data."""

    cfg: Config
    data: DataBundle
    model: torch.nn.Module
    checkpoint: Path


def load_run_model(path: Path, device: torch.device | None = None) -> LoadedRun:
    """The model of a run directory's newest checkpoint (or of a given checkpoint inside a run),
    at the shape it was saved with: a run whose model grew is restored grown."""
    from budgetlm.config import load_config
    from budgetlm.train.checkpoint import load_checkpoint

    if (path / "checkpoints").is_dir():
        run_dir, checkpoint = path, newest_to_load(path)
    else:
        run_dir, checkpoint = path.parent.parent, path
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{path}: not a run directory or a checkpoint inside one")
    cfg = load_config(run_dir / "config.yaml")
    data = resolve_data(cfg, progress=False)
    model = build_model(checkpoint_shape(checkpoint) or data.shape)
    model.load_state_dict(load_checkpoint(checkpoint)["model"])
    if device is not None:
        model = model.to(device)
    return LoadedRun(cfg, data, model, checkpoint)


def evaluate_checkpoint(
    path: Path, *, batches: int | None = None, split: str | None = None
) -> dict[str, Any]:
    """Held-out loss of a checkpoint (or a run directory's newest one) on its run's data: on
    `split` (`test`, `tune`, `val` = test, or `train`), by default the split the run itself
    was evaluated on (`train.eval_split`)."""
    from budgetlm.train.evaluate import heldout_loss

    run = load_run_model(path)
    cfg = run.cfg
    device = resolve_device(cfg.train.device)
    model = run.model.to(device)
    split = split or cfg.train.eval_split
    held = heldout_batches(cfg, run.data, split, batches)
    metrics = heldout_loss(model, held, device, autocast_for(cfg.train.precision, device)())
    return {"checkpoint": str(run.checkpoint), "split": split, **metrics}
