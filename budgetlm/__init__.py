"""budgetlm: pre-train transformer LMs under a fixed compute budget and compare methods fairly."""

import os

# MKL may otherwise use fewer threads than asked when the machine is busy, which changes the
# order of its reductions: a run resumed under load would not continue bit-exactly. Set here,
# the first module of the package any process imports (the CLI, a grid cell, a torchrun rank),
# so that it precedes torch loading MKL; an explicit setting wins.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

__version__ = "0.1.0"
