"""Weights & Biases: a W&B run per run directory, files under RUN_DIR/wandb.

Offline (the default without an API key) nothing leaves the machine; `wandb sync
RUN_DIR/wandb/offline-run-*` uploads a run later.
"""

from __future__ import annotations

import netrc
import os
import secrets
from typing import Any
from urllib.parse import urlparse

from budgetlm.config import TrainConfig
from budgetlm.train.tracking import ids
from budgetlm.train.tracking.base import RunIdentity


class WandbTracker:
    name = "wandb"

    def __init__(self, run: RunIdentity) -> None:
        import wandb

        settings = run.settings
        saved = ids.remembered(run.run_dir, self.name) if run.resumed_at else {}
        run_id = saved.get("id") or secrets.token_hex(6)
        self._run = wandb.init(
            project=settings.wandb_project or os.environ.get("WANDB_PROJECT") or "budgetlm",
            entity=settings.wandb_entity,  # None: $WANDB_ENTITY or the account's default
            group=run.experiment,  # None: $WANDB_RUN_GROUP, if set
            name=run.name,
            tags=[f"{key}:{value}" for key, value in run.tags.items()],
            dir=str(run.run_dir),
            mode=wandb_mode(settings),
            id=run_id,
            resume="allow",  # a resumed attempt continues the same W&B run
        )
        ids.remember(run.run_dir, self.name, {"id": run_id})
        # Steps below this were logged by an attempt that died after its checkpoint: W&B keeps
        # those (identical, as resume is exact) and would warn about every one sent again.
        self._first_step = int(getattr(self._run, "starting_step", 0) or 0)
        self._status: str | None = None

    def log_config(self, config: dict[str, Any]) -> None:
        self._run.config.update(config, allow_val_change=True)  # resume may change log_every

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step >= self._first_step:
            self._run.log(metrics, step=step)

    def log_summary(self, summary: dict[str, float | str]) -> None:
        self._run.summary.update(summary)
        self._status = str(summary.get("status"))

    def close(self) -> None:
        # No summary: the attempt crashed (or diverged); W&B shows the run as failed.
        self._run.finish(exit_code=0 if self._status is not None else 1)


def wandb_mode(settings: TrainConfig) -> str | None:
    """train.wandb_mode; else $WANDB_MODE (None: wandb reads it); else online only when an API
    key is configured, so that a run without one never waits on a login prompt or the network."""
    if settings.wandb_mode:
        return settings.wandb_mode
    if os.environ.get("WANDB_MODE"):
        return None
    return "online" if _has_api_key() else "offline"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:  # where `wandb login` keeps the key
        return netrc.netrc().authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False
