"""The planted plug-ins of faulty_plugins.py, importable as `faulty_plugins:<Class>`."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> str:
    """Put this folder on sys.path for one test; returns the module's import name."""
    monkeypatch.syspath_prepend(str(HERE))
    return "faulty_plugins"
