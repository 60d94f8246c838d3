"""Efficient-training methods: each a pure function plus a thin `Method` hook (budgetlm/api.py).

Methods are named in a run config as `method: layer_drop` (combine with `+`:
`method: layer_drop+selective_backprop`) and configured under `methods.<name>.<option>`. Each
method module is imported only when a run names it (the names live in budgetlm/registry.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from budgetlm.api import Method, RunContext, StepPlan
from budgetlm.config import ConfigError, build_dataclass
from budgetlm.registry import METHODS, method_class, parse_method_spec


def build_methods(
    spec: str | None, options: Mapping[str, Mapping[str, Any]], context: RunContext
) -> list[Method]:
    """Instantiate the methods a config names, with their validated options."""
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
