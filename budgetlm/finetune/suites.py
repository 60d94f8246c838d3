"""Suites: named lists of tasks and where their data comes from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from budgetlm.finetune.tasks import TaskData, TaskError

SUITES = ("offline", "glue", "superglue")


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
    raise TaskError(f"unknown suite {suite!r} (known: {', '.join(SUITES)})")


def task_loader(suite: str, data_dir: str | Path | None = None) -> Callable[[str], TaskData]:
    """A function task -> TaskData. GLUE/SuperGLUE read `data_dir` (the official layout) when
    given, else the Hugging Face hub or its local cache."""
    suite_tasks(suite)  # validates the name
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
