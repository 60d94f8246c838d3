"""budgetlm: pre-train transformer LMs under a fixed compute budget and compare methods fairly."""

__version__ = "0.1.0"
