"""The names of the efficient-training methods, optimizers and experiment trackers, and where
each is implemented.

A light module (no torch, nothing of `methods/`, `optim/` or `train/` imported): the config
validates `method=`, `optim.name=` and `train.loggers=` here without importing them, and the
builders import only the modules a run names.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from budgetlm.api import Method

# name -> "module:Class". A Method class has `name`, an `Options` dataclass and
# `from_options(options, context)`; `incompatible` lists methods it must not be combined with.
METHODS: dict[str, str] = {
    "layer_stacking": "budgetlm.methods.layer_stacking:LayerStacking",
    "layer_drop": "budgetlm.methods.layer_dropping:LayerDrop",
    "staged": "budgetlm.methods.growth:StagedGrowth",
    "selective_backprop": "budgetlm.methods.selective_backprop:SelectiveBackprop",
    "rho_loss": "budgetlm.methods.rho_loss:RhoLoss",
}


# name -> module providing build(...); None for the built-ins of budgetlm/optim/factory.py.
OPTIMIZERS: dict[str, str | None] = {
    "adamw": None,
    "adamw_rms": None,
    "lion": "budgetlm.optim.lion",
    "sophia": "budgetlm.optim.sophia",
    "muon": "budgetlm.optim.muon",
}


@dataclass(frozen=True)
class TrackerSpec:
    module: str  # budgetlm.train.tracking.<module>, imported only when the tracker is used
    cls: str
    library: str  # what must import for it to work
    extra: str  # the pip extra that installs it


# train.loggers names (docs/tracking.md); metrics.jsonl is always written besides.
TRACKERS: dict[str, TrackerSpec] = {
    "tensorboard": TrackerSpec(
        "tensorboard_tracker", "TensorBoardTracker", "torch.utils.tensorboard", "tensorboard"
    ),
    "wandb": TrackerSpec("wandb_tracker", "WandbTracker", "wandb", "wandb"),
    "mlflow": TrackerSpec("mlflow_tracker", "MlflowTracker", "mlflow", "mlflow"),
}
WANDB_MODES = ("online", "offline", "disabled")


def parse_method_spec(spec: str | None) -> list[str]:
    """'layer_drop+selective_backprop' -> ['layer_drop', 'selective_backprop'] ('none' -> [])."""
    if spec is None or spec.strip() in ("", "none", "baseline"):
        return []
    names = [n.strip() for n in spec.split("+")]
    if len(set(names)) != len(names):
        raise ValueError(f"method {spec!r} names a method twice")
    for name in names:
        if name not in METHODS:
            close = difflib.get_close_matches(name, list(METHODS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown method {name!r}{hint} (known: {sorted(METHODS)})")
    return names


def method_class(name: str) -> type[Method]:
    """The class implementing a registered method (imports its module)."""
    module, _, cls = METHODS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise ValueError(f"method {name!r} is not implemented yet") from e
        raise
