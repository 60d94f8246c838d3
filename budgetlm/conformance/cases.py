"""Which checks apply to a method or an optimizer: the cases, generated from the registry.

A case is one check of one subject, on one model family (and, for combinations, with one other
method). Every registered method and optimizer gets the same list, so a new one is tested by
adding it to the registry (or installing it), as Composer does for its algorithms:

    method      options, trains[family], charges[family], resumes[family], state,
                composes[other, family] for every method neither side refuses,
                refuses[other] for every method either side refuses
    optimizer   options, trains[family], charges[family], resumes[family], refuses[method]

`families` are the ones the subject declares (`Method.families`), narrowed to those asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from budgetlm.conformance.subjects import (
    FAMILIES,
    Subject,
    registered_subjects,
    resolve,
)
from budgetlm.registry import PluginError, method_names

METHOD_CHECKS = ("options", "trains", "charges", "resumes", "state", "composes", "refuses")
OPTIMIZER_CHECKS = ("options", "trains", "charges", "resumes", "refuses")


@dataclass(frozen=True)
class Case:
    """One check of one subject. `overrides` are the user's key=value settings for its runs
    (e.g. `methods.my_method.alpha=0.1`), applied after the suite's tiny-run settings."""

    subject: Subject
    check: str
    family: str | None = None
    partner: str | None = None  # the other method of `composes` / `refuses`
    overrides: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = ",".join(x for x in (self.partner, self.family) if x)
        return f"{self.subject.name}/{self.check}" + (f"[{where}]" if where else "")


def conformance_cases(
    names: Sequence[str] | None = None,
    *,
    families: Iterable[str] | None = None,
    overrides: Iterable[str] = (),
    partners: Iterable[str] | None = None,
) -> list[Case]:
    """The cases of the named methods and optimizers (all registered ones when `names` is None):
    short names, import paths (`pkg.mod:Object`) or plug-in distributions (see subjects.py).

    `families` narrows the model families tried (default: all the subject supports);
    `overrides` are key=value settings for every run (`methods.<name>.<option>=...`,
    `optim.options.<option>=...`), each applied only to the runs it concerns. `partners` are
    the methods a method is combined with (default: every registered method, and the methods
    named here).
    """
    subjects = registered_subjects() if names is None else resolve(list(names))
    wanted = tuple(FAMILIES if families is None else families)
    unknown = sorted(set(wanted) - set(FAMILIES))
    if unknown:
        raise PluginError(f"unknown model families {unknown}; use {list(FAMILIES)}")
    named = [s.name for s in subjects if s.kind == "method"]
    others = method_names() if partners is None else list(partners)
    pool = list(dict.fromkeys([*others, *named]))
    cases: list[Case] = []
    for subject in subjects:
        cases += _subject_cases(subject, wanted, pool, tuple(overrides))
    return cases


def _subject_cases(
    subject: Subject, wanted: tuple[str, ...], partners: list[str], overrides: tuple[str, ...]
) -> list[Case]:
    families = [f for f in subject.families() if f in wanted]
    cases = [Case(subject, "options", overrides=overrides)]
    for family in families:
        for check in ("trains", "charges", "resumes"):
            cases.append(Case(subject, check, family, overrides=overrides))
    if subject.kind == "optimizer":
        for other in subject.incompatible():
            cases.append(Case(subject, "refuses", None, other, overrides))
        return cases
    if families:
        cases.append(Case(subject, "state", families[0], overrides=overrides))
    for other in partners:
        pair = _pairing(subject, other, families)
        if pair is not None:
            check, family = pair
            cases.append(Case(subject, check, family, other, overrides))
    return cases


def _pairing(subject: Subject, other: str, families: list[str]) -> tuple[str, str | None] | None:
    """("composes", family) when neither method refuses the other and they share a family;
    ("refuses", None) when either lists the other in `incompatible`; None when there is
    nothing to check (the same method under another name, no family in common)."""
    mine = subject.method_class()
    try:
        theirs = Subject("method", other).method_class()
    except PluginError:
        # A registered method that does not load: combining with it fails, and says why.
        return ("composes", families[0]) if families else None
    if theirs is mine or other == subject.name or theirs.name == mine.name:
        return None
    refused = set(mine.incompatible) & {other, theirs.name} or set(theirs.incompatible) & {
        subject.name,
        mine.name,
    }
    if refused:
        return ("refuses", None)
    shared = [f for f in families if f in getattr(theirs, "families", FAMILIES)]
    return ("composes", shared[0]) if shared else None
