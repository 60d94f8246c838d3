"""Efficient-training methods: each a pure function plus a thin `Method` hook (budgetlm/api.py).

Methods are named in a run config as `method: layer_drop` (combine with `+`:
`method: layer_drop+selective_backprop`) and configured under `methods.<name>.<option>`. Each
method module is imported only when a run names it (the names live in budgetlm/registry.py).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from budgetlm.api import Method, RunContext, StepPlan
from budgetlm.config import ConfigError, build_dataclass
from budgetlm.registry import METHODS, method_class, parse_method_spec


def build_methods(
    spec: str | None, options: Mapping[str, Mapping[str, Any]], context: RunContext
) -> list[Method]:
    """Instantiate the methods a config names (built-ins and plug-ins), with validated options."""
    return [cls.from_options(opts, context) for cls, opts in configured_methods(spec, options)]


def configured_methods(
    spec: str | None, options: Mapping[str, Mapping[str, Any]]
) -> list[tuple[type[Method], Any]]:
    """Each method a config names with its validated `Options`, in the spec's order.

    A plug-in named by import path takes its options under `methods.<its name>` (the class's
    `name`; the import path itself is accepted too, e.g. as a YAML key).
    """
    classes = method_classes(spec)
    keys = {spec_name: option_keys(spec_name, cls) for spec_name, cls in classes.items()}
    used = [k for ks in keys.values() for k in ks]
    unused = set(options) - set(used)
    if unused:
        first = sorted(unused)[0]
        close = difflib.get_close_matches(first, used, n=1)
        hint = f"; did you mean methods.{close[0]}?" if close else ""
        raise ConfigError(
            f"options given under methods.{first} but method={spec!r} does not use it{hint}"
        )
    built = []
    for spec_name, cls in classes.items():
        given = [k for k in keys[spec_name] if k in options]
        if len(given) > 1:
            raise ConfigError(f"options of method {spec_name!r} given twice: under {given}")
        raw = dict(options[given[0]]) if given else {}
        built.append((cls, build_dataclass(cls.Options, raw, f"methods.{cls.name}.")))
    return built


def method_classes(spec: str | None) -> dict[str, type[Method]]:
    """The classes a method spec names, keyed as written; refuses two methods with the same
    `name` (their state would share a checkpoint key) and combinations a method refuses."""
    classes = {name: method_class(name) for name in parse_method_spec(spec)}
    seen: dict[str, str] = {}
    for spec_name, cls in classes.items():
        if cls.name in seen:
            raise ConfigError(
                f"methods {seen[cls.name]!r} and {spec_name!r} are both named {cls.name!r}: "
                "their options and checkpointed state would be mixed up"
            )
        seen[cls.name] = spec_name
    names = set(classes) | set(seen)
    for spec_name, cls in classes.items():
        clash = set(cls.incompatible) & (names - {spec_name, cls.name})
        if clash:
            raise ConfigError(f"method {spec_name!r} cannot be combined with {sorted(clash)}")
    return classes


def option_keys(spec_name: str, cls: type[Method]) -> list[str]:
    """Where a method's options may be given under `methods.`: its name, or as written."""
    return list(dict.fromkeys([cls.name, spec_name]))


__all__ = [
    "METHODS",
    "Method",
    "RunContext",
    "StepPlan",
    "build_methods",
    "configured_methods",
    "method_classes",
    "option_keys",
    "parse_method_spec",
]
