"""The names of the efficient-training methods, optimizers and experiment trackers, and where
each is implemented: the built-ins below, plus plug-ins from outside the package.

A plug-in is named either by import path (`method: my_pkg.my_module:MyMethod`,
`optim.name: my_pkg.opt:MyOpt`) or, when an installed distribution registers it under the entry
point groups `budgetlm.methods` / `budgetlm.optimizers`, by its short name (docs/your-method.md).
A registered name that clashes with a built-in is refused when it is used: which of the two a
config meant would otherwise depend on what happens to be installed.

A light module (no torch, nothing of `methods/`, `optim/` or `train/` imported): the config
validates `method=`, `optim.name=` and `train.loggers=` here without importing them, and the
builders import only the modules a run names (a plug-in's module included).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import pkgutil
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from budgetlm.errors import UserError

if TYPE_CHECKING:
    from budgetlm.api import Method

METHOD_GROUP = "budgetlm.methods"
OPTIMIZER_GROUP = "budgetlm.optimizers"

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


class PluginError(UserError, ValueError):
    """A plug-in that cannot be used as named: a bad import path, a module that does not import,
    a name registered twice, an object of the wrong kind. The CLI reports it as a user error."""


_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_import_path(name: str) -> bool:
    """`pkg.module:Object` names a plug-in by where it lives rather than by a registered name."""
    return ":" in name


def _registered(group: str, builtins: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Entry points of `group`: ({name: target}, {clashing name: the distribution}). A name that
    is also a built-in's is kept apart, to be refused when it is used."""
    found: dict[str, str] = {}
    clashes: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=group):
        dist = ep.dist.name if ep.dist is not None else "an installed package"
        if ep.name in builtins:
            clashes[ep.name] = dist
        else:
            found[ep.name] = ep.value
    return found, clashes


def method_names() -> list[str]:
    """Every method usable by short name: the built-ins, then the registered plug-ins."""
    return [*METHODS, *sorted(_registered(METHOD_GROUP, METHODS)[0])]


def optimizer_names() -> list[str]:
    """Every optimizer usable by short name: the built-ins, then the registered plug-ins."""
    return [*OPTIMIZERS, *sorted(_registered(OPTIMIZER_GROUP, OPTIMIZERS)[0])]


def _check_name(kind: str, name: str, known: list[str], clashes: dict[str, str]) -> None:
    if is_import_path(name):
        if not _IMPORT_PATH.match(name):
            raise PluginError(
                f"{kind} {name!r} is not an import path of the form package.module:Object"
            )
        return
    if name in clashes:
        raise PluginError(
            f"{kind} {name!r} is a built-in and is also registered by {clashes[name]} "
            f"(entry point group {METHOD_GROUP if kind == 'method' else OPTIMIZER_GROUP}): "
            "refused, since which one runs would depend on what is installed; rename the "
            "plug-in's entry point or name it by its import path"
        )
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PluginError(f"unknown {kind} {name!r}{hint} (known: {sorted(known)})")


def check_optimizer_name(name: str) -> None:
    """Refuse an optimizer name that is neither a built-in, a registered plug-in nor an
    import path, without importing anything."""
    _check_name("optimizer", name, optimizer_names(), _registered(OPTIMIZER_GROUP, OPTIMIZERS)[1])


def parse_method_spec(spec: str | None) -> list[str]:
    """'layer_drop+selective_backprop' -> ['layer_drop', 'selective_backprop'] ('none' -> []).

    Each name is a built-in, a registered plug-in or an import path (`pkg.mod:Class`); nothing is
    imported here.
    """
    if spec is None or spec.strip() in ("", "none", "baseline"):
        return []
    names = [n.strip() for n in spec.split("+")]
    if len(set(names)) != len(names):
        raise ValueError(f"method {spec!r} names a method twice")
    known = method_names()
    clashes = _registered(METHOD_GROUP, METHODS)[1]
    for name in names:
        _check_name("method", name, known, clashes)
    return names


def _load(kind: str, name: str, target: str) -> Any:
    """Import `module` or `module:attr.path` for the plug-in `name`."""
    module, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module)
    except ModuleNotFoundError as e:
        where = "" if name == target else f" ({target})"
        missing = e.name or ""
        if module == missing or module.startswith(f"{missing}."):
            hint = _module_hint(module, missing, attr)
            raise PluginError(
                f"{kind} {name!r}{where}: cannot import module {module!r} ({e})"
                f"{hint or '; is the package installed in this environment?'}"
            ) from e
        if module.startswith("budgetlm."):
            raise  # a built-in's dependency: not the user's import path
        # The plug-in's module is there but needs a package that is not installed.
        raise PluginError(
            f"{kind} {name!r}{where}: importing {module!r} failed: {e} (a package it needs "
            "is not installed)"
        ) from e
    for part in filter(None, attr.split(".")):
        if not hasattr(obj, part):
            public = [a for a in dir(obj) if not a.startswith("_")]
            close = difflib.get_close_matches(part, public, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PluginError(f"{kind} {name!r}: {module!r} has no {part!r}{hint}")
        obj = getattr(obj, part)
    return obj


def _module_hint(module: str, missing: str, attr: str) -> str:
    """'; did you mean ...?' for an import path whose module `missing` (a part of `module`) does
    not exist, from the modules next to it: the parent package's, or the top-level ones."""
    parent, _, leaf = missing.rpartition(".")
    if parent:
        package = sys.modules.get(parent)
        candidates = [m.name for m in pkgutil.iter_modules(getattr(package, "__path__", []))]
    else:
        candidates = [m.name for m in pkgutil.iter_modules()]
    # Among every installed top-level module a loose match is noise ('pkg' -> 'pkgutil'): a
    # stricter cutoff there than among a package's own modules.
    close = difflib.get_close_matches(leaf, candidates, n=1, cutoff=0.6 if parent else 0.8)
    if not close:
        return ""
    fixed = f"{parent}.{close[0]}" if parent else close[0]
    return f"; did you mean '{fixed}{module[len(missing) :]}:{attr}'?"


def plugin_object(name: str) -> Any:
    """The object an import path names, for a caller that does not know yet whether it is a
    method or an optimizer (`budgetlm check-plugin`); refused like any other import path."""
    if not _IMPORT_PATH.match(name):
        raise PluginError(f"{name!r} is not an import path of the form package.module:Object")
    return _load("plug-in", name, name)


def method_target(name: str) -> str:
    """Where the method `name` lives, as "module:Class"."""
    if is_import_path(name):
        return name
    if name in METHODS:
        return METHODS[name]
    registered = _registered(METHOD_GROUP, METHODS)[0]
    if name in registered:
        return registered[name]
    parse_method_spec(name)  # raises with a did-you-mean
    raise PluginError(f"unknown method {name!r}")


def method_class(name: str) -> type[Method]:
    """The class implementing a method, built-in or plug-in (imports its module)."""
    from budgetlm.api import Method

    target = method_target(name)
    try:
        cls = _load("method", name, target)
    except PluginError:
        if name in METHODS:
            raise PluginError(f"method {name!r} is not implemented yet") from None
        raise
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise PluginError(f"method {name!r}: {target} is not a subclass of budgetlm.api.Method")
    if name not in METHODS and cls.name in METHODS and METHODS[cls.name] != target:
        raise PluginError(
            f"method {name!r}: its name {cls.name!r} is a built-in method's; give the class "
            "another `name` (its options and checkpointed state are keyed by it)"
        )
    for attr in ("Options", "from_options"):
        if not hasattr(cls, attr):
            raise PluginError(f"method {name!r}: {target} has no {attr!r} (docs/your-method.md)")
    return cls


def optimizer_provider(name: str) -> Any:
    """What builds the optimizer `name`: None for the factory's own (AdamW, AdamW-RMS), else an
    object with `build(model, *, lr, betas, eps, weight_decay, device, options)` and optionally
    `method_for(optimizer, context)`: a built-in's module, or a plug-in (a
    budgetlm.api.OptimizerPlugin subclass, or any module or object with `build`)."""
    if name in OPTIMIZERS:
        module = OPTIMIZERS[name]
        if module is None:
            return None
        try:
            return _load("optimizer", name, module)
        except PluginError:
            raise PluginError(f"optimizer {name!r} is not implemented yet") from None
    if is_import_path(name):
        check_optimizer_name(name)
        target = name
    else:
        registered = _registered(OPTIMIZER_GROUP, OPTIMIZERS)[0]
        if name not in registered:
            check_optimizer_name(name)  # raises with a did-you-mean
        target = registered[name]
    provider = _load("optimizer", name, target)
    if not callable(getattr(provider, "build", None)):
        raise PluginError(
            f"optimizer {name!r}: {target} has no build(model, *, lr, betas, eps, weight_decay, "
            "device, options) (docs/your-method.md)"
        )
    return provider
