"""`budgetlm report` imports no torch (import circles: tests/test_layers.py covers the package)."""

from __future__ import annotations

import subprocess
import sys

from ..planted import planted_grid


def test_building_and_writing_a_report_imports_neither_torch_nor_pyplot(tmp_path):
    out = tmp_path / "grid"
    planted_grid(out)
    code = (
        "import sys\n"
        "from budgetlm.cli import main\n"
        "assert main(['report', sys.argv[1]]) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' "
        "or m == 'matplotlib.pyplot'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True
    )
    loaded = done.stdout.strip().splitlines()[-1]  # after the CLI's list of written files
    assert loaded == "[]", loaded[:300]
    assert (out / "report.html").is_file()
