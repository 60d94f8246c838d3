"""Plug-ins from outside budgetlm, for tests/test_registry.py and tests/test_plugins.py.

The tests put `tests/plugin_fixtures` on `sys.path` and name these by import path
(`budgetlm_test_plugins.counter:StepCounter`) or register them under entry points of a test
distribution (`tests/plugin_fixtures/helpers.py:install_distribution`).
"""
