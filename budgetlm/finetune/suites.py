"""Suites: named lists of tasks and where their data comes from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from budgetlm.finetune.instructions.protocol import INSTRUCTION_SUITES
from budgetlm.finetune.tasks import TaskData, TaskError

SUITES = ("offline", "glue", "superglue", "instructions", "sni")
# INSTRUCTION_SUITES: text-to-text suites scored with ROUGE-L (budgetlm.finetune.instructions):
# one model is fine-tuned on their training tasks and scored on held-out tasks, both read from
# the data, so they have no fixed task list and take no `tasks`.


def suite_tasks(suite: str) -> list[str]:
    if suite == "offline":
        from budgetlm.finetune.offline import OFFLINE_TASKS

        return list(OFFLINE_TASKS)
    if suite == "glue":
        from budgetlm.finetune.glue import GLUE_TASKS

        return list(GLUE_TASKS)
    if suite == "superglue":
        from budgetlm.finetune.superglue import SUPERGLUE_TASKS

        return list(SUPERGLUE_TASKS)
    if suite in INSTRUCTION_SUITES:
        return []
    raise TaskError(f"unknown suite {suite!r} (known: {', '.join(SUITES)})")


def task_loader(suite: str, data_dir: str | Path | None = None) -> Callable[[str], TaskData]:
    """A function task -> TaskData. GLUE/SuperGLUE read `data_dir` (the official layout) when
    given, else the Hugging Face hub or its local cache."""
    suite_tasks(suite)  # validates the name
    if suite in INSTRUCTION_SUITES:
        raise TaskError(
            f"suite {suite!r} is fine-tuned as a whole (budgetlm.finetune.instructions), not "
            "task by task"
        )
    if suite == "offline":
        from budgetlm.finetune.offline import load_offline

        return load_offline
    if suite == "glue":
        from budgetlm.finetune import glue

        return (lambda t: glue.load_glue_dir(data_dir, t)) if data_dir else glue.load_glue_hub
    from budgetlm.finetune import superglue

    if data_dir:
        return lambda t: superglue.load_superglue_dir(data_dir, t)
    return superglue.load_superglue_hub
