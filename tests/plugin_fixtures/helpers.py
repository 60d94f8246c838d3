"""Make the plug-ins of `budgetlm_test_plugins` importable, and register them as an installed
distribution would: a `*.dist-info` folder (METADATA, entry_points.txt) in a folder on
`sys.path`, which `importlib.metadata` finds like any installed package's."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent
METHOD = "budgetlm_test_plugins.counter:StepCounter"
OPTIMIZER = "budgetlm_test_plugins.sgd:MomentumSGD"


def importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """`budgetlm_test_plugins` importable for this test (sys.path restored after it)."""
    monkeypatch.syspath_prepend(str(FIXTURES))


def install_distribution(
    monkeypatch: pytest.MonkeyPatch,
    site: Path,
    name: str,
    *,
    methods: dict[str, str] | None = None,
    optimizers: dict[str, str] | None = None,
) -> None:
    """Register distribution `name` with entry points {name: "module:Object"} in the groups
    `budgetlm.methods` / `budgetlm.optimizers`, for this test only."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = []
    for group, entries in (("budgetlm.methods", methods), ("budgetlm.optimizers", optimizers)):
        if entries:
            lines += [f"[{group}]", *(f"{k} = {v}" for k, v in entries.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines))
    monkeypatch.syspath_prepend(str(site))
