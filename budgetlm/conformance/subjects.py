"""What the suite checks: a method or an optimizer, found by the name a user gives.

A name is a built-in or registered short name (`layer_drop`, `sophia`), an import path
(`my_pkg.module:Object`: a method if the object subclasses `budgetlm.api.Method`, an optimizer
otherwise), or an installed distribution or top-level package whose entry points (groups
`budgetlm.methods`, `budgetlm.optimizers`) register plug-ins: then every one of them. Names
that match nothing are refused with a did-you-mean, as a config would refuse them.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import re
from dataclasses import dataclass
from typing import Any

from budgetlm.errors import UserError
from budgetlm.registry import (
    METHOD_GROUP,
    OPTIMIZER_GROUP,
    is_import_path,
    method_class,
    method_names,
    optimizer_names,
    optimizer_provider,
    plugin_object,
)

FAMILIES = ("gpt", "bert", "t5")


class UnknownName(UserError, ValueError):
    """A name that is no method, optimizer, import path or plug-in distribution."""


@dataclass(frozen=True)
class Subject:
    """A method or an optimizer under test, by the name a config gives it (`method=NAME`,
    `optim.name=NAME`): a short name or an import path."""

    kind: str  # "method" | "optimizer"
    name: str

    def __str__(self) -> str:
        return self.name

    def method_class(self) -> Any:
        """The `Method` subclass (a method subject only; imports its module)."""
        return method_class(self.name)

    def provider(self) -> Any:
        """What builds the optimizer (None for AdamW/AdamW-RMS; an optimizer subject only)."""
        return optimizer_provider(self.name)

    def families(self) -> tuple[str, ...]:
        """The model families it declares support for (all three unless it says otherwise)."""
        owner = self.method_class() if self.kind == "method" else self.provider()
        declared = getattr(owner, "families", FAMILIES) if owner is not None else FAMILIES
        return tuple(f for f in FAMILIES if f in declared)

    def incompatible(self) -> tuple[str, ...]:
        """Methods it refuses to run with."""
        owner = self.method_class() if self.kind == "method" else self.provider()
        return tuple(getattr(owner, "incompatible", ()) or ()) if owner is not None else ()


def registered_subjects() -> list[Subject]:
    """Every method and optimizer the registry knows: built-ins, then registered plug-ins."""
    return [
        *(Subject("method", n) for n in method_names()),
        *(Subject("optimizer", n) for n in optimizer_names()),
    ]


def resolve(names: list[str]) -> list[Subject]:
    """The subjects the names stand for, in order, each once."""
    found: list[Subject] = []
    for name in names:
        for subject in _resolve_one(name.strip()):
            if subject not in found:
                found.append(subject)
    return found


def _resolve_one(name: str) -> list[Subject]:
    if is_import_path(name):
        return [_by_import_path(name)]
    known = [
        *(Subject("method", n) for n in method_names() if n == name),
        *(Subject("optimizer", n) for n in optimizer_names() if n == name),
    ]
    if known:
        return known
    from_package = _package_subjects(name)
    if from_package:
        return from_package
    candidates = [*method_names(), *optimizer_names(), *_plugin_distributions()]
    close = difflib.get_close_matches(name, candidates, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownName(
        f"unknown method or optimizer {name!r}{hint} (give a built-in or registered name, an "
        f"import path package.module:Object, or an installed package that registers "
        f"{METHOD_GROUP} or {OPTIMIZER_GROUP} entry points; known: "
        f"{sorted([*method_names(), *optimizer_names()])})"
    )


def _by_import_path(name: str) -> Subject:
    """A method when the object is a `Method` subclass, else an optimizer; the registry's own
    loaders then check it as a run would (and say what is wrong with it)."""
    from budgetlm.api import Method

    obj = plugin_object(name)
    if isinstance(obj, type) and issubclass(obj, Method):
        method_class(name)
        return Subject("method", name)
    optimizer_provider(name)
    return Subject("optimizer", name)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=group))


def _plugin_distributions() -> list[str]:
    """Names of the installed distributions that register budgetlm plug-ins."""
    names = {
        ep.dist.name
        for group in (METHOD_GROUP, OPTIMIZER_GROUP)
        for ep in _entry_points(group)
        if ep.dist is not None
    }
    return sorted(names)


def _package_subjects(name: str) -> list[Subject]:
    """Every plug-in that a distribution (or a top-level package) named `name` registers."""
    wanted = _normalise(name)
    found = []
    for kind, group in (("method", METHOD_GROUP), ("optimizer", OPTIMIZER_GROUP)):
        for ep in _entry_points(group):
            dist = _normalise(ep.dist.name) if ep.dist is not None else None
            top = _normalise(ep.value.split(":")[0].split(".")[0])
            if wanted in (dist, top):
                found.append(Subject(kind, ep.name))
    return found
