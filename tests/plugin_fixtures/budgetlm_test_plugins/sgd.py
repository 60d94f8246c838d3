"""A plug-in optimizer: torch's SGD with momentum, weight decay on matrices only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from budgetlm.api import OptimizerPlugin
from budgetlm.optim.factory import param_groups


@dataclass(frozen=True)
class SGDOptions:
    momentum: float = 0.9
    """the momentum coefficient"""
    nesterov: bool = False
    """Nesterov momentum"""


class MomentumSGD(OptimizerPlugin):
    name = "momentum_sgd"
    Options = SGDOptions

    @classmethod
    def build(
        cls,
        model: torch.nn.Module,
        *,
        lr: float,
        betas: tuple[float, float] | None,
        eps: float | None,
        weight_decay: float,
        device: Any,
        options: SGDOptions,
    ) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            param_groups(model, weight_decay),
            lr=lr,
            momentum=options.momentum,
            nesterov=options.nesterov,
        )


class NoLayerDropSGD(MomentumSGD):
    """The same optimizer, declared incompatible with layer dropping."""

    name = "no_layer_drop_sgd"
    incompatible = ("layer_drop",)
