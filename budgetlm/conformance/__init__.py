"""The conformance suite: the same checks for every method and optimizer, built-in or plug-in.

For a method: `options` (an Options dataclass whose defaults build; the options given are
accepted; a misspelt option is refused with a did-you-mean), `trains` (a few steps on each
model family it declares, finite losses), `charges` (every forward the run makes is charged to
the budget, at its sequence length and active layers), `resumes` (a run stopped and resumed
before, at and after each of its events ends bit-identical to an uninterrupted one: weights,
optimizer state, method state, logged losses), `state` (state_dict() round-trips into a
fresh instance), `composes` (with every method neither side refuses: trains and charges) and
`refuses` (a combination it refuses is a clean ConfigError). For an optimizer: `options`, `trains`,
`charges` (its companion method's passes, e.g. Sophia's Hessian pass, included), `resumes`
(mid-run and around the steps its companion acts) and `refuses`.

The cases are generated from the registry, so a new method is tested by registering it. Runs
are tiny (2 layers, d_model 32, 12 steps on the fixture corpus, CPU): seconds per subject.

From the command line:

    budgetlm check-plugin my_pkg.my_module:MyMethod [--family gpt] [--set methods.my.x=1]

In a plug-in's own tests (pytest), one test per check:

    import pytest
    from budgetlm.conformance import conformance_cases, run_case

    @pytest.mark.parametrize("case", conformance_cases(["my_pkg.mod:MyMethod"]), ids=str)
    def test_conformance(case):
        result = run_case(case)
        assert result.passed, result.message

A method that needs something prepared before it can run (RHO-loss's irreducible-loss table)
defines `conformance_setup(settings, workspace) -> list[str]` (prepare.py).

Modules: cases.py (which checks apply, from the registry), subjects.py (names to methods and
optimizers), runs.py (tiny configs, running, resuming), charges.py (forwards run vs charged),
options.py and checks.py (the checks), equality.py (bit-exact comparison), report.py (results).
"""

from __future__ import annotations

from budgetlm.conformance.cases import Case, conformance_cases
from budgetlm.conformance.checks import CHECKS, run_case
from budgetlm.conformance.report import CheckFailed, CheckResult, format_result, summary_line
from budgetlm.conformance.runs import Workspace
from budgetlm.conformance.subjects import Subject, resolve

__all__ = [
    "CHECKS",
    "Case",
    "CheckFailed",
    "CheckResult",
    "Subject",
    "Workspace",
    "conformance_cases",
    "format_result",
    "resolve",
    "run_case",
    "summary_line",
]
