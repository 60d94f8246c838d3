"""A plug-in module whose own import fails: it needs a package that is not installed."""

import budgetlm_test_no_such_dependency  # noqa: F401

from budgetlm_test_plugins.counter import StepCounter as NeedsMissing  # noqa: F401
