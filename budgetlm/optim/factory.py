"""Build the optimizer named in the config, with weight decay only on matrices.

Optimizers beyond AdamW live in their own modules, imported when a run names them. Such a module
provides `build(model, *, lr, betas, eps, weight_decay, device, options) -> Optimizer` (it
validates its own `options`, from `optim.options` in the config) and may provide
`method_for(optimizer, context) -> Method | None` for work the loop must run and charge on its
behalf (Sophia's Hessian passes). A plug-in (budgetlm.api.OptimizerPlugin, named by import path
or entry point: budgetlm/registry.py) provides the same two, and an `Options` dataclass that
`optim.options` is validated against here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import torch
from torch import nn

from budgetlm.optim.adamw_scale import AdamWScale
from budgetlm.registry import PluginError, optimizer_provider

ADAMW_BETAS = (0.9, 0.98)  # cramming / No Train No Gain
ADAMW_EPS = 1e-8


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices and embeddings; never biases or norm gains (cramming recipe).

    Tied parameters appear once: `model.parameters()` already de-duplicates them.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def optimizer_module(name: str) -> ModuleType | Any | None:
    """What builds optimizer `name` (None: AdamW or AdamW-RMS, built here); see
    `registry.optimizer_provider`."""
    return optimizer_provider(name)


def plugin_options(name: str, provider: Any, options: Mapping[str, Any] | None) -> Any:
    """A plug-in's `optim.options` as its `Options` dataclass (unknown keys refused with a
    did-you-mean); the dict as given for a provider without one (the built-ins' modules)."""
    from budgetlm.config import ConfigError, build_dataclass

    cls = getattr(provider, "Options", None)
    if cls is None:
        return dict(options or {})
    try:
        return build_dataclass(cls, dict(options or {}), "optim.options.")
    except ConfigError as e:
        raise PluginError(f"optimizer {name!r}: {e}") from e


# Devices with torch's fused AdamW kernel (others take the default path).
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def build_optimizer(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    betas: tuple[float, float] | None,
    eps: float | None,
    weight_decay: float,
    device: torch.device | str = "cpu",
    options: Mapping[str, Any] | None = None,
) -> torch.optim.Optimizer:
    """Build by name; betas/eps None mean the optimizer's own defaults (papers' values)."""
    module = optimizer_module(name)
    if module is not None:
        return module.build(
            model,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            device=device,
            options=plugin_options(name, module, options),
        )
    if options:
        raise ValueError(f"optimizer {name!r} takes no optim.options, got {sorted(options)}")
    groups = param_groups(model, weight_decay)
    betas = betas or ADAMW_BETAS
    eps = ADAMW_EPS if eps is None else eps
    if name == "adamw":
        # The fused kernel, on CPU too: torch's default there is the per-tensor loop with a
        # host read of each parameter's step count (3.3-4.7 ms a step on gpt-tiny against 0.82 ms
        # fused: bench/optimizer_step.py, bench/results/README.md; RST tables price what runs).
        fused = torch.device(device).type in FUSED_ADAMW_DEVICES
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)
    return AdamWScale(groups, lr=lr, betas=betas, eps=eps)


def optimizer_from_config(
    optim: Any, model: nn.Module, device: torch.device | str = "cpu"
) -> torch.optim.Optimizer:
    """Build the optimizer of a run config's `optim` section (a budgetlm.config.OptimConfig)."""
    return build_optimizer(
        optim.name,
        model,
        lr=optim.lr,
        betas=optim.betas,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        device=device,
        options=optim.options,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate (groups may carry an `lr_scale`, e.g. for Muon's AdamW)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
