"""Which instruction suite, loaded, capped and checked: the one entry point of the loaders.

Apart from data.py (the data model, prompts, capping, the checks) so that the loaders, which
import data.py, are imported by nothing data.py imports.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

from budgetlm.finetune.instructions import offline, sni
from budgetlm.finetune.instructions.data import (
    InstructionSuite,
    PromptSettings,
    capped,
    check_disjoint_tasks,
    check_no_contamination,
    decontaminate,
)
from budgetlm.finetune.instructions.protocol import INSTRUCTION_SUITES
from budgetlm.finetune.tasks import DroppedRowsWarning, TaskError


def load_instruction_suite(
    name: str, data_dir: str | Path | None, settings: PromptSettings
) -> InstructionSuite:
    """Load, cap and check a suite: "sni" (Super-Natural Instructions from `data_dir` in SNI's
    layout, or the hub copy when `data_dir` is None) or "instructions" (the offline suite
    from BIG-bench; `data_dir` a folder of its task files, else the BIG-bench cache).

    Held-out tasks keep at most `max_instances_per_eval_task` instances (`cap_instances`,
    seed 0); training instances whose input is one of those held-out inputs are dropped
    (`decontaminate`, warned about as a `DroppedRowsWarning`), then training tasks keep at
    most `max_instances_per_task`. The result passed `check_no_contamination`."""
    if name == "sni":
        suite = sni.load_sni(data_dir, settings)
    elif name == "instructions":
        suite = offline.load_offline_instructions(data_dir, settings)
    else:
        raise TaskError(
            f"unknown instruction suite {name!r} (known: {', '.join(INSTRUCTION_SUITES)})"
        )
    check_disjoint_tasks(suite)  # before `decontaminate`, which would empty such a task
    suite = replace(
        suite, test=tuple(capped(t, settings.max_instances_per_eval_task) for t in suite.test)
    )
    suite = decontaminate(suite)
    if suite.decontaminated:
        warnings.warn(
            f"{suite.name}: dropped {suite.decontaminated} training instance(s) whose input is "
            "also a held-out input",
            DroppedRowsWarning,
            stacklevel=2,
        )
    suite = replace(
        suite, train=tuple(capped(t, settings.max_instances_per_task) for t in suite.train)
    )
    if not suite.train or not suite.test:
        raise TaskError(f"{suite.name}: no training or no held-out tasks ({suite.source})")
    check_no_contamination(suite)
    return suite
