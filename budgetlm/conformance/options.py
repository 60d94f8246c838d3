"""The options check: a subject's options are a dataclass whose defaults build, the options the
user gave are accepted, and a near miss of every real option name is refused with a
did-you-mean naming it: what `methods.<name>.<option>` or `optim.options.<option>` in a config
goes through (`budgetlm.config.build_dataclass`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from budgetlm.conformance.cases import Case
from budgetlm.conformance.report import CheckFailed
from budgetlm.conformance.runs import RunSpec, Workspace


def near_miss(name: str, taken: set[str]) -> str | None:
    """A one-key typo of `name` (a doubled middle letter, then other edits) that is not itself
    another option's name."""
    middle = len(name) // 2
    candidates = [
        name[:middle] + name[middle] + name[middle:],
        name + name[-1],
        name[:-1],
        "x" + name,
    ]
    return next((c for c in candidates if c and c != name and c not in taken), None)


def check_method_options(case: Case, ws: Workspace, spec: RunSpec) -> str:
    from budgetlm.config import ConfigError
    from budgetlm.methods import configured_methods

    cls = case.subject.method_class()
    prefix = f"methods.{cls.name}."
    options_cls = _dataclass_of(cls.Options, f"{cls.__name__}.Options")
    _defaults_build(options_cls, prefix)
    _given_options_build(ws, spec, lambda cfg: configured_methods(cfg.method, cfg.methods))

    def refusal(raw: dict[str, Any]) -> str | None:
        try:
            configured_methods(case.subject.name, {cls.name: raw})
        except ConfigError as e:
            return str(e)
        return None

    return _typos_refused(options_cls, prefix, refusal)


def check_optimizer_options(case: Case, ws: Workspace, spec: RunSpec) -> str:
    from budgetlm.optim.factory import build_optimizer, optimizer_from_config

    name = case.subject.name
    model = _tiny_model()
    prefix = "optim.options."

    def refusal(raw: dict[str, Any]) -> str | None:
        try:
            build_optimizer(
                name, model, lr=1e-3, betas=None, eps=None, weight_decay=0.0, options=raw
            )
        except ValueError as e:  # ConfigError and PluginError are ValueErrors
            return str(e)
        return None

    _given_options_build(ws, spec, lambda cfg: optimizer_from_config(cfg.optim, model))
    options_cls = optimizer_options_class(case.subject.provider())
    if options_cls is None:
        message = refusal({"unknown_option": 1})
        if message is None:
            raise CheckFailed(
                f"optimizer {name!r} has no Options dataclass and accepted an unknown option "
                "optim.options.unknown_option: give it an Options dataclass (the config then "
                "refuses misspelt options with a did-you-mean)"
            )
        return "takes no options: any option is refused"
    _defaults_build(options_cls, prefix)
    return _typos_refused(options_cls, prefix, refusal)


def optimizer_options_class(provider: Any) -> type | None:
    """A provider's `Options` dataclass; for a built-in's module, the one dataclass it defines
    whose name ends in `Options` (LionOptions, SophiaOptions, MuonOptions)."""
    if provider is None:
        return None
    declared = getattr(provider, "Options", None)
    if declared is not None:
        return declared if dataclasses.is_dataclass(declared) else None
    found = [
        obj
        for attr, obj in vars(provider).items()
        if attr.endswith("Options")
        and isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__module__ == getattr(provider, "__name__", None)
    ]
    return found[0] if len(found) == 1 else None


def _dataclass_of(options: Any, what: str) -> type:
    if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        raise CheckFailed(
            f"{what} is not a dataclass: the config validates options against its fields "
            "(budgetlm.api.NoOptions for a method without options)"
        )
    return options


def _defaults_build(options_cls: type, prefix: str) -> None:
    from budgetlm.config import ConfigError, build_dataclass

    try:
        build_dataclass(options_cls, {}, prefix)
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckFailed(
            f"its default options do not build ({e}): give every field of "
            f"{options_cls.__name__} a default"
        ) from e


def _given_options_build(ws: Workspace, spec: RunSpec, build: Any) -> None:
    """The user's settings, read as a run reads them (nothing trains)."""
    from budgetlm.config import load_config

    settings = spec.settings(ws.root / "options-check", ws.root)
    try:
        build(load_config(None, settings))
    except ValueError as e:
        given = ", ".join(spec.overrides) or "the defaults"
        raise CheckFailed(f"the options given ({given}) are refused: {e}") from e


def _typos_refused(options_cls: type, prefix: str, refusal: Any) -> str:
    names = [f.name for f in dataclasses.fields(options_cls)]
    if not names:
        message = refusal({"unknown_option": 1})
        if message is None:
            raise CheckFailed(f"an unknown option {prefix}unknown_option was accepted")
        return "takes no options: any option is refused"
    for name in names:
        typo = near_miss(name, set(names))
        if typo is None:
            continue
        message = refusal({typo: 1})
        right = f"{prefix}{name}"
        if message is None:
            raise CheckFailed(f"the misspelt option {prefix}{typo} was accepted (meant {right})")
        if "did you mean" not in message or right not in message:
            raise CheckFailed(
                f"the misspelt option {prefix}{typo} was refused without suggesting {right}: "
                f"{message}"
            )
    count = f"{len(names)} option{'s' if len(names) > 1 else ''}"
    return f"{count}; a misspelling of each is refused with a did-you-mean"


def _tiny_model() -> Any:
    from budgetlm.models import build_model, get_shape

    return build_model(get_shape("gpt-tiny", n_layers=1, d_model=32, n_heads=2, d_kv=16, d_ff=64))
