"""Opening a run's trackers (their names: budgetlm/registry.py; their checks: config.py)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from budgetlm.config import Config, ConfigError
from budgetlm.registry import TRACKERS
from budgetlm.train.tracking.base import RunIdentity, Tracker
from budgetlm.train.tracking.fanout import TrackerSet
from budgetlm.train.tracking.records import flatten


def open_trackers(cfg: Config, run_dir: Path, resumed_at: int = 0) -> TrackerSet | None:
    """Start the trackers of `train.loggers` and give them the config; None when there are
    none. A missing library is a ConfigError, raised before any tracker starts."""
    names = cfg.train.loggers
    if not names:
        return None
    for name in names:
        _require(name)
    run = RunIdentity(
        name=tracker_run_name(cfg, run_dir),
        run_dir=run_dir,
        out_dir=Path(cfg.run.out_dir),
        tags={str(k): str(v) for k, v in cfg.run.tags.items()},
        resumed_at=resumed_at,
        settings=cfg.train,
    )
    trackers: list[Tracker] = []
    for name in names:
        spec = TRACKERS[name]
        module = importlib.import_module(f"budgetlm.train.tracking.{spec.module}")
        try:
            trackers.append(getattr(module, spec.cls)(run))
        except Exception as e:  # a tracker that cannot start must not stop the training
            print(
                f"warning: the {name} tracker could not start and is off for this run "
                f"(metrics.jsonl has everything): {type(e).__name__}: {e}",
                file=sys.stderr,
            )
    fanout = TrackerSet(trackers)
    fanout.log_config(flatten(cfg.to_dict()))
    return fanout


def tracker_run_name(cfg: Config, run_dir: Path) -> str:
    """The run directory's name; a compare cell's is its run name (`<experiment>/<arm>/
    <budget>/seed<k>`), its directory being just `seed<k>`."""
    if "experiment" in cfg.run.tags and cfg.run.name:
        return cfg.run.name
    return run_dir.name


def _require(name: str) -> None:
    spec = TRACKERS[name]
    try:
        importlib.import_module(spec.library)
    except ImportError as e:
        raise ConfigError(
            f"train.loggers: {name} is not installed ({e}); pip install 'budgetlm[{spec.extra}]'"
        ) from e
