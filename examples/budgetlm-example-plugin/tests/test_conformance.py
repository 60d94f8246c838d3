"""budgetlm's conformance suite on both plug-ins (what `budgetlm check-plugin
budgetlm-example-plugin` runs): options, training on every family each supports, every forward
charged, bit-exact resume around their events, state round trip, composition and refusals."""

import pytest

from budgetlm.conformance import conformance_cases, run_case


@pytest.mark.parametrize("case", conformance_cases(["seq_warmup", "schedule_free_adamw"]), ids=str)
def test_conformance(case):
    result = run_case(case)
    assert result.passed, result.message
