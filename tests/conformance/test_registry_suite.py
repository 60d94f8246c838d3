"""The conformance suite on every built-in method and optimizer, one test per case: the cases
come from the registry (budgetlm/registry.py), so a new built-in is covered by adding it there.

Methods are combined with the built-in methods only, so what else is installed in the
environment cannot fail these tests (`budgetlm check-plugin --all` covers installed plug-ins).
The GPT runs are the fast set; repeating every check on BERT and T5 is marked slow.
"""

from __future__ import annotations

import pytest

from budgetlm.conformance import conformance_cases, run_case
from budgetlm.registry import METHODS, OPTIMIZERS

CASES = conformance_cases([*METHODS, *OPTIMIZERS], partners=list(METHODS))


def _param(case):
    slow = case.family not in (None, "gpt")
    return pytest.param(case, marks=[pytest.mark.slow] if slow else [], id=str(case))


def test_every_builtin_has_every_check():
    """The generation itself: each built-in gets each of its checks, on every family."""
    checks = {(c.subject.name, c.check, c.family) for c in CASES}
    for name in METHODS:
        for family in ("gpt", "bert", "t5"):
            for check in ("trains", "charges", "resumes"):
                assert (name, check, family) in checks
        assert (name, "options", None) in checks and (name, "state", "gpt") in checks
    for name in OPTIMIZERS:
        assert {(name, c, "t5") for c in ("trains", "charges", "resumes")} <= checks
    pairs = {(c.subject.name, c.partner, c.check) for c in CASES if c.partner}
    assert ("layer_stacking", "layer_drop", "refuses") in pairs
    assert ("layer_drop", "layer_stacking", "refuses") in pairs  # either side refusing counts
    assert ("layer_drop", "selective_backprop", "composes") in pairs
    assert ("rho_loss", "selective_backprop", "refuses") in pairs


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_builtin_passes(case):
    result = run_case(case)
    assert result.passed, f"{case}: {result.message}"
