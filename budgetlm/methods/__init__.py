"""Efficient-training methods: each a pure function plus a thin `Method` hook (see base.py).

Methods are named in a run config as `method: layer_drop` (combine with `+`:
`method: layer_drop+selective_backprop`) and configured under `methods.<name>.<option>`. Each
method module is imported only when a run names it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from budgetlm.methods.base import Method, StepPlan

# name -> "module:Class". A Method class has `name`, an `Options` dataclass and
# `from_options(options, context)`; `incompatible` lists methods it must not be combined with.
METHODS: dict[str, str] = {
    "layer_stacking": "budgetlm.methods.layer_stacking:LayerStacking",
    "layer_drop": "budgetlm.methods.layer_dropping:LayerDrop",
    "staged": "budgetlm.methods.growth:StagedGrowth",
    "selective_backprop": "budgetlm.methods.selective_backprop:SelectiveBackprop",
    "rho_loss": "budgetlm.methods.rho_loss:RhoLoss",
}


@dataclass(frozen=True)
class RunContext:
    """What a method may know about the run when it is built."""

    shape: Any  # budgetlm.models.ModelShape
    config: Any  # budgetlm.config.Config
    run_dir: Any = None  # pathlib.Path


def parse_method_spec(spec: str | None) -> list[str]:
    """'layer_drop+selective_backprop' -> ['layer_drop', 'selective_backprop'] ('none' -> [])."""
    if spec is None or spec.strip() in ("", "none", "baseline"):
        return []
    names = [n.strip() for n in spec.split("+")]
    if len(set(names)) != len(names):
        raise ValueError(f"method {spec!r} names a method twice")
    for name in names:
        if name not in METHODS:
            import difflib

            close = difflib.get_close_matches(name, list(METHODS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown method {name!r}{hint} (known: {sorted(METHODS)})")
    return names


def method_class(name: str) -> type[Method]:
    module, _, cls = METHODS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise ValueError(f"method {name!r} is not implemented yet") from e
        raise


def build_methods(
    spec: str | None, options: Mapping[str, Mapping[str, Any]], context: RunContext
) -> list[Method]:
    """Instantiate the methods a config names, with their validated options."""
    from budgetlm.config import ConfigError, build_dataclass

    names = parse_method_spec(spec)
    unused = set(options) - set(names)
    if unused:
        raise ConfigError(
            f"options given under methods.{sorted(unused)[0]} but method={spec!r} does not use it"
        )
    classes = {name: method_class(name) for name in names}
    for name, cls in classes.items():
        clash = set(getattr(cls, "incompatible", ())) & set(names)
        if clash:
            raise ConfigError(f"method {name!r} cannot be combined with {sorted(clash)}")
    built = []
    for name, cls in classes.items():
        opts = build_dataclass(cls.Options, dict(options.get(name, {})), f"methods.{name}.")
        built.append(cls.from_options(opts, context))
    return built


__all__ = ["METHODS", "Method", "RunContext", "StepPlan", "build_methods", "parse_method_spec"]
