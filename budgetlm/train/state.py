"""TrainState: everything that changes during training, in one place that checkpoints whole.

Model weights, optimizer moments, the budget clock, the step counter, every method's state and
the RNG streams. The data position needs no state of its own: batches are a pure function of
(seed, step). Restoring a TrainState and continuing reproduces the uninterrupted run bit for bit
on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from budgetlm.api import Method
from budgetlm.budget.clock import Clock
from budgetlm.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from budgetlm.train.distributed import Dist


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    clock: Clock
    methods: list[Method] = field(default_factory=list)
    step: int = 0
    # Small facts the run wants back after a resume (last eval, tokens seen, ...).
    info: dict[str, Any] = field(default_factory=dict)
    # Runtime handles for methods, never checkpointed: the data stream (batches are a pure
    # function of (seed, step)), the device and the autocast context factory.
    data: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # This process's place in a data-parallel job (rank 0 of 1 alone): selection methods split
    # their forwards across ranks and gather the losses.
    dist: Dist = field(default_factory=Dist)
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def parts(
        self,
        meta: dict[str, Any],
        model_state: dict[str, Any] | None = None,
        optimizer_state: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The checkpoint content, one entry per file pair. A sharded (FSDP) run passes the
        full states it gathered; they are keyed by parameter name (see `load`)."""
        return {
            "model": self.model.state_dict() if model_state is None else model_state,
            "optimizer": self.optimizer.state_dict()
            if optimizer_state is None
            else optimizer_state,
            "trainer": {
                "step": self.step,
                "shape": dataclasses.asdict(self.model.shape),
                "clock": self.clock.state_dict(),
                "info": self.info,
                "meta": meta,
            },
            "rng": rng_state(),
            "methods": {m.name: m.state_dict() for m in self.methods},
        }

    def save(
        self,
        directory: Path,
        meta: dict[str, Any],
        model_state: dict[str, Any] | None = None,
        optimizer_state: dict[str, Any] | None = None,
    ) -> Path:
        return save_checkpoint(directory, self.step, self.parts(meta, model_state, optimizer_state))

    def load(
        self,
        path: Path,
        model_loaded: bool = False,
        load_optimizer: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Restore from a checkpoint directory; return the metadata it was saved with.

        A sharded run loads the model weights itself before sharding (`model_loaded`) and its
        optimizer state through `load_optimizer` (full, parameter-name-keyed state)."""
        parts = load_checkpoint(path)
        missing = {"model", "optimizer", "trainer", "rng", "methods"} - set(parts)
        if missing:
            raise CheckpointError(f"{path}: missing parts {sorted(missing)}")
        fqn_keyed = parts["trainer"]["meta"].get("optimizer_format") == "fqn"
        if fqn_keyed != (load_optimizer is not None):
            raise CheckpointError(
                f"{path}: saved by a {'sharded (fsdp)' if fqn_keyed else 'non-sharded'} run; "
                "resume it with the same train.parallel"
            )
        if not model_loaded:
            self.model.load_state_dict(parts["model"])
        if load_optimizer is not None:
            load_optimizer(parts["optimizer"])
        else:
            self.optimizer.load_state_dict(parts["optimizer"])
        trainer = parts["trainer"]
        self.step = int(trainer["step"])
        self.clock.load_state_dict(trainer["clock"])
        self.info = dict(trainer["info"])
        saved_methods = parts["methods"]
        names = sorted(m.name for m in self.methods)
        if sorted(saved_methods) != names:
            raise CheckpointError(
                f"{path}: saved with methods {sorted(saved_methods)}, this run has {names}"
            )
        for m in self.methods:
            m.load_state_dict(saved_methods[m.name])
        set_rng_state(parts["rng"])
        return dict(trainer["meta"])
