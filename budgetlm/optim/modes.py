"""Optimizers whose weights for evaluation differ from the ones they train (schedule-free).

Such an optimizer has `train()` and `eval()` methods (the convention of the `schedulefree`
package): `eval()` puts the model's parameters at the point to evaluate (schedule-free: the
average), `train()` back at the point the next gradient is taken. The loop calls `eval()` around
every held-out evaluation and checkpoint, so saved weights are the ones to evaluate, fine-tune
and export; a resumed run calls `train()` after loading. Resume is bit-exact when `train()` gives
back the training point bit for bit: the lerp of the `schedulefree` package does not (an
evaluation would then perturb the run, and a checkpoint written at a step the uninterrupted run
did not save at would resume elsewhere), so an optimizer keeps the training point in its state
while in eval mode (examples/budgetlm-example-plugin: `AdamWScheduleFreeExact`).
Optimizers without the two methods are left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def has_modes(optimizer: torch.optim.Optimizer) -> bool:
    train, evaluate = getattr(optimizer, "train", None), getattr(optimizer, "eval", None)
    return callable(train) and callable(evaluate)


def to_train_mode(optimizer: torch.optim.Optimizer) -> None:
    """Put the parameters at the training point (a no-op for ordinary optimizers)."""
    if has_modes(optimizer):
        optimizer.train()


@contextlib.contextmanager
def evaluation_weights(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Inside: the parameters are the ones to evaluate or save; after: the training ones."""
    if not has_modes(optimizer):
        yield
        return
    optimizer.eval()
    try:
        yield
    finally:
        optimizer.train()
