"""The offline instruction suite: Natural Instructions (v1) tasks from the BIG-bench sdist.

BIG-bench's `natural_instructions` task ships the 61 subtasks of Natural Instructions v1
(Mishra et al. 2022), SNI's predecessor, each a `task.json` whose "description" is the
crowdsourcing definition ("Definition: ... Things to Avoid: ... Emphasis/Caution: ...") and
whose examples have lists of free-text "target"s (every acceptable output). The sdist is the
one the offline classification suite already uses (`budgetlm.finetune.offline`: downloaded once
into `$BUDGETLM_CACHE/bigbench/`, checked against its sha256); only the task files below are
extracted, into `$BUDGETLM_CACHE/bigbench/natural_instructions/<subtask>.json`.

Which tasks: the generative ones, where the output is free text. Left out are classification
subtasks (at most 13 distinct outputs: 018-022, 027, 043, 046, 047, 050, 052, 056, 057),
mostly yes/no 007 (yes./no. are 87% of its outputs), answers that are sentence numbers or
option letters (049, 058), and one-to-two-word extractive answers (mean under two words:
002, 028, 033, 039, 041, 042, 061).

Split by source dataset, so that no held-out task shares passages with a training task: every
task built on QASC and on ROPES is held out, all other sources (Quoref, MC-TACO, CosmosQA,
DROP, Winogrande, Essential Terms, MultiRC and the miscellaneous paraphrasing task) train.
`check_no_contamination` then also finds no held-out input verbatim among training inputs.

| split | subtask | examples |
|---|---|---|
| held out | 036 qasc_topic_word_to_generate_related_fact | 928 |
| held out | 037 qasc_generate_related_fact | 6,500 |
| held out | 038 qasc_combined_fact | 6,500 |
| held out | 040 qasc_question_generation | 6,500 |
| held out | 059 ropes_story_generation | 521 |
| held out | 060 ropes_question_generation | 1,613 |
| train | 001 quoref_question_generation | 4,225 |
| train | 003-006, 008-017 mctaco question/answer/wrong-answer generation (14) | 4,698 |
| train | 023-025 cosmosqa question/answer/incorrect-answer generation (3) | 19,500 |
| train | 026 drop_question_generation | 6,107 |
| train | 029-032, 034, 035 winogrande sentence/question writing (6) | 35,000 |
| train | 044 essential_terms_identifying_essential_words | 2,238 (one has no target) |
| train | 045 miscellaneous_sentence_paraphrasing | 193 |
| train | 048, 051, 053, 054, 055 multirc generation (5) | 10,800 |

32 training tasks (82,760 examples) and 6 held-out tasks (22,562 examples) before capping;
`load_instruction_suite` caps them to `max_instances_per_task` / `max_instances_per_eval_task`
(100 each by default: 3,156 training instances, as 053 has only 56, and 600 held-out ones).

The tasks have no few-shot examples, so each task's first `POSITIVE_EXAMPLES` examples (in the
file's order, with their first target) are its positive examples and are not among its
instances. The definition is the "description" without its leading "Definition: ".
BIG-bench's data is Apache-2.0 licensed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from budgetlm.finetune import offline as bb
from budgetlm.finetune.instructions.data import (
    Instance,
    InstructionSuite,
    InstructionTask,
    PromptSettings,
    read_task_json,
)
from budgetlm.finetune.tasks import TaskError, TaskFileError

SUBTASK_ROOT = "natural_instructions"  # under bigbench/benchmark_tasks/ and in the cache
POSITIVE_EXAMPLES = 2
HELD_OUT_SOURCES = ("qasc", "ropes")

TRAIN_TASKS = (
    "subtask001_quoref_question_generation",
    "subtask003_mctaco_question_generation_event_duration",
    "subtask004_mctaco_answer_generation_event_duration",
    "subtask005_mctaco_wrong_answer_generation_event_duration",
    "subtask006_mctaco_question_generation_transient_stationary",
    "subtask008_mctaco_wrong_answer_generation_transient_stationary",
    "subtask009_mctaco_question_generation_event_ordering",
    "subtask010_mctaco_answer_generation_event_ordering",
    "subtask011_mctaco_wrong_answer_generation_event_ordering",
    "subtask012_mctaco_question_generation_absolute_timepoint",
    "subtask013_mctaco_answer_generation_absolute_timepoint",
    "subtask014_mctaco_wrong_answer_generation_absolute_timepoint",
    "subtask015_mctaco_question_generation_frequency",
    "subtask016_mctaco_answer_generation_frequency",
    "subtask017_mctaco_wrong_answer_generation_frequency",
    "subtask023_cosmosqa_question_generation",
    "subtask024_cosmosqa_answer_generation",
    "subtask025_cosmosqa_incorrect_answer_generation",
    "subtask026_drop_question_generation",
    "subtask029_winogrande_full_object",
    "subtask030_winogrande_full_person",
    "subtask031_winogrande_question_generation_object",
    "subtask032_winogrande_question_generation_person",
    "subtask034_winogrande_question_modification_object",
    "subtask035_winogrande_question_modification_person",
    "subtask044_essential_terms_identifying_essential_words",
    "subtask045_miscellaneous_sentence_paraphrasing",
    "subtask048_multirc_question_generation",
    "subtask051_multirc_correct_answer_single_sentence",
    "subtask053_multirc_correct_bad_question",
    "subtask054_multirc_write_correct_answer",
    "subtask055_multirc_write_incorrect_answer",
)
TEST_TASKS = (
    "subtask036_qasc_topic_word_to_generate_related_fact",
    "subtask037_qasc_generate_related_fact",
    "subtask038_qasc_combined_fact",
    "subtask040_qasc_question_generation",
    "subtask059_ropes_story_generation",
    "subtask060_ropes_question_generation",
)
ALL_TASKS = TRAIN_TASKS + TEST_TASKS


def source_dataset(task: str) -> str:
    """The source dataset a subtask was built from: "subtask036_qasc_..." -> "qasc"."""
    parts = task.split("_")
    return parts[1] if len(parts) > 1 else task


def cache_dir(cache_root: Path | None = None) -> Path:
    return bb.bigbench_dir(cache_root) / SUBTASK_ROOT


def ensure_cached(cache_root: Path | None = None) -> Path:
    """The folder of the suite's task files, extracted from the BIG-bench sdist if missing."""
    directory = cache_dir(cache_root)
    if all((directory / f"{t}.json").is_file() for t in ALL_TASKS):
        return directory
    try:
        sdist = bb.fetch_bigbench_sdist(bb.bigbench_dir(cache_root))
        paths = {t: f"{SUBTASK_ROOT}/{t}" for t in ALL_TASKS}
        bb.extract_bigbench_tasks(sdist, directory, ALL_TASKS, paths=paths)
    except bb.OfflineDataMissing as e:
        raise TaskError(f"the offline instruction suite needs the BIG-bench sdist: {e}") from e
    return directory


def _text(value: Any, what: str, path: Path) -> str:
    if not isinstance(value, str):
        raise TaskError(f"{path}: {what} is not a string")
    return value


def parse_task(raw: Any, name: str, path: Path) -> InstructionTask:
    """A BIG-bench Natural Instructions task.json as an `InstructionTask`."""
    if not isinstance(raw, dict) or not isinstance(raw.get("examples"), list):
        raise TaskError(f"{path}: not a BIG-bench task file (no 'examples' list)")
    definition = _text(raw.get("description"), "'description'", path).strip()
    definition = definition.removeprefix("Definition:").strip()
    pairs = []
    for i, ex in enumerate(raw["examples"]):
        targets = ex.get("target") if isinstance(ex, dict) else None
        targets = [targets] if isinstance(targets, str) else targets
        if not isinstance(targets, list) or not targets or "input" not in ex:
            raise TaskError(f"{path}: 'examples'[{i}] needs an 'input' and a 'target'")
        what = f"'examples'[{i}]"
        outputs = tuple(_text(t, what, path) for t in targets if str(t).strip())
        if outputs:  # an example without a usable target is left out
            pairs.append((_text(ex["input"], what, path), outputs))
    if len(pairs) <= POSITIVE_EXAMPLES:
        raise TaskError(f"{path}: too few examples ({len(pairs)})")
    positives = tuple((text, outs[0]) for text, outs in pairs[:POSITIVE_EXAMPLES])
    instances = tuple(
        Instance(f"{name}-{i}", text, outs)
        for i, (text, outs) in enumerate(pairs[POSITIVE_EXAMPLES:], start=POSITIVE_EXAMPLES)
    )
    return InstructionTask(
        name, definition, positives, instances, str(path), category=source_dataset(name)
    )


def read_task(path: Path, name: str) -> InstructionTask:
    return parse_task(read_task_json(path, "offline instruction suite"), name, path)


def load_task_dir(directory: Path) -> InstructionSuite:
    """The suite from a folder of `<subtask>.json` files (the cache layout). A folder with only
    some of the tasks (a test fixture) gives those; tasks are split by source dataset."""
    if not directory.is_dir():
        raise TaskFileError(f"{directory}: no such folder of Natural Instructions task files")
    present = [t for t in ALL_TASKS if (directory / f"{t}.json").is_file()]
    if not present:
        raise TaskFileError(
            f"{directory}: none of the offline instruction suite's task files is there "
            f"(e.g. {ALL_TASKS[0]}.json)"
        )
    tasks = [read_task(directory / f"{t}.json", t) for t in present]
    return InstructionSuite(
        "instructions",
        tuple(t for t in tasks if t.category not in HELD_OUT_SOURCES),
        tuple(t for t in tasks if t.category in HELD_OUT_SOURCES),
        str(directory),
    )


def load_offline_instructions(
    data_dir: str | Path | None, settings: PromptSettings, cache_root: Path | None = None
) -> InstructionSuite:
    """The offline suite from `data_dir` (a folder of task files) or from the BIG-bench cache."""
    directory = Path(data_dir) if data_dir is not None else ensure_cached(cache_root)
    return load_task_dir(directory)
