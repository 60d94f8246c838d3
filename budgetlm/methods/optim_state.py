"""Per-parameter optimizer state moved with the model: what stacking and growth copy or reset.

Works for every optimizer in budgetlm, whatever its state holds (Adam moments, Lion momentum,
Sophia's Hessian EMA, Muon's momentum buffer): tensors are cloned, scalars copied.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def clone_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of one parameter's optimizer state (tensors cloned, scalars copied)."""
    return {k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in state.items()}


def copy_param_state(
    optimizer: torch.optim.Optimizer, src: nn.Parameter, dst: nn.Parameter
) -> None:
    """Give `dst` a copy of `src`'s optimizer state, or no state if `src` has none.

    Everything is copied, the scalar `step` included: the moments were accumulated over that
    many steps, and the bias correction (1 - beta^step) must match them.
    """
    state = optimizer.state.get(src)
    if state:
        optimizer.state[dst] = clone_state(state)
    else:
        optimizer.state.pop(dst, None)


def reset_param_state(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> None:
    """Forget `param`'s optimizer state; the optimizer initialises it afresh at its next step."""
    optimizer.state.pop(param, None)
