"""`python -m budgetlm` (what torchrun launches) is the `budgetlm` command."""

import sys

from budgetlm.cli import main

sys.exit(main())
