"""The data model of instruction suites, prompts and the contamination check.

Interface shared by the loaders (sni.py, offline.py) and the fine-tuning side (train.py,
score.py). Prompts follow Tk-Instruct / nanoT5's SNI recipe (docs/finetune.md cites the values).
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from budgetlm.finetune.tasks import TaskError, TaskFileError


@dataclass(frozen=True)
class Instance:
    """One example of a task: its input and every acceptable output (ROUGE-L takes the best)."""

    id: str
    input: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class InstructionTask:
    """A task: what it asks (`definition`), worked examples, and its instances."""

    name: str
    definition: str
    positive_examples: tuple[tuple[str, str], ...]  # (input, output) pairs shown in prompts
    instances: tuple[Instance, ...]
    source: str  # where it was read from (a file, an sdist member, a hub dataset)
    category: str | None = None


@dataclass(frozen=True)
class PromptSettings:
    """How prompts and targets are built and capped (defaults: nanoT5's SNI fine-tuning)."""

    add_task_definition: bool = True
    num_pos_examples: int = 2
    max_source_len: int = 1024  # tokens of the encoder input
    max_target_len: int = 128  # tokens of the target
    max_instances_per_task: int = 100  # training tasks
    max_instances_per_eval_task: int = 100  # held-out tasks


@dataclass(frozen=True)
class InstructionSuite:
    """Training tasks and held-out tasks, disjoint by task (`check_no_contamination`)."""

    name: str
    train: tuple[InstructionTask, ...]
    test: tuple[InstructionTask, ...]
    source: str
    # training instances dropped because their input is a held-out input (`decontaminate`)
    decontaminated: int = 0


# -- prompts ------------------------------------------------------------------------------------

# The text of a prompt, as Tk-Instruct's SNI collator lays it out and nanoT5 uses it
# (nanoT5/utils/copied_utils.py, `DataCollatorForNI`; docs/finetune.md): the definition, then
# the positive examples, then the instance, ending with "Output: " so that the model writes it.
DEFINITION_HEAD = "Definition: "
EXAMPLE_HEAD = " Positive Example {i} -\n"
QUERY_HEAD = "Now complete the following example -\n"
OUTPUT_CUE = "Output: "


def _sentence(text: str) -> str:
    """Stripped, with a full stop added unless it already ends in punctuation (Tk-Instruct)."""
    text = text.strip()
    return text if not text or text[-1] in string.punctuation else text + "."


def build_prompt(
    task: InstructionTask,
    instance: Instance,
    settings: PromptSettings,
    fits: Callable[[str], bool] | None = None,
) -> str:
    """The encoder input for `instance`: definition (if asked), up to `num_pos_examples`
    positive examples, then the instance's input and the output cue.

    `fits`, when given, says whether a prompt is short enough (e.g. at most `max_source_len`
    tokens); a positive example that would make it too long is left out with all that follow,
    as Tk-Instruct does. The prompt itself is never cut here: the tokenizer truncates it.
    """
    head = ""
    if settings.add_task_definition and task.definition.strip():
        head = DEFINITION_HEAD + _sentence(task.definition) + "\n\n"
    query = f"{QUERY_HEAD}Input: {_sentence(instance.input)}\n{OUTPUT_CUE}"
    examples = ""
    for i, (source, target) in enumerate(task.positive_examples[: settings.num_pos_examples]):
        example = (
            EXAMPLE_HEAD.format(i=i + 1)
            + f"Input: {_sentence(source)}\n Output: {_sentence(target)}\n\n"
        )
        if fits is not None and not fits(head + examples + example + query):
            break
        examples += example
    return head + examples + query


def count_positive_examples(prompt: str) -> int:
    """How many positive examples a prompt built by `build_prompt` shows (for tests, logs)."""
    return len(re.findall(r"(?m)^ Positive Example \d+ -$", prompt))


# -- capping ------------------------------------------------------------------------------------


def _instance_key(task_name: str, instance: Instance, seed: int) -> bytes:
    text = f"{seed}\0{task_name}\0{instance.id}\0{instance.input}".encode()
    return hashlib.sha256(text).digest()


def cap_instances(task: InstructionTask, n: int | None, seed: int = 0) -> tuple[Instance, ...]:
    """At most `n` of the task's instances, chosen and ordered by a seeded hash of each
    instance's id (and input, for duplicate ids): the same whatever the order of the file.
    `n` None or negative keeps every instance (still in hash order)."""
    ordered = sorted(task.instances, key=lambda inst: _instance_key(task.name, inst, seed))
    return tuple(ordered if n is None or n < 0 else ordered[:n])


def capped(task: InstructionTask, n: int | None, seed: int = 0) -> InstructionTask:
    """`task` with its instances capped by `cap_instances`."""
    return replace(task, instances=cap_instances(task, n, seed))


# -- contamination ------------------------------------------------------------------------------


def _text_hash(text: str) -> bytes:
    return hashlib.blake2b(" ".join(text.split()).encode(), digest_size=16).digest()


def check_disjoint_tasks(suite: InstructionSuite) -> None:
    """Raise `TaskError` when a held-out task is also a training task (by name)."""
    train_names = {t.name for t in suite.train}
    shared = sorted(t.name for t in suite.test if t.name in train_names)
    if shared:
        raise TaskError(
            f"{suite.name}: held-out task(s) {', '.join(shared)} are also training tasks "
            f"({suite.source})"
        )


def check_no_contamination(suite: InstructionSuite) -> None:
    """Raise `TaskError` when a held-out task is also a training task (by name), or when a
    held-out instance's input appears verbatim (up to whitespace) among the training
    instances' inputs or positive examples. Costs one 16-byte hash per training input."""
    check_disjoint_tasks(suite)
    seen: dict[bytes, str] = {}
    for task in suite.train:
        for inst in task.instances:
            seen.setdefault(_text_hash(inst.input), task.name)
        for source, _ in task.positive_examples:
            seen.setdefault(_text_hash(source), task.name)
    for task in suite.test:
        for inst in task.instances:
            where = seen.get(_text_hash(inst.input))
            if where is not None:
                raise TaskError(
                    f"{suite.name}: the input of held-out instance {inst.id!r} ({task.name}) "
                    f"also appears in training task {where} ({suite.source})"
                )


def decontaminate(suite: InstructionSuite) -> InstructionSuite:
    """Drop the training instances and positive examples whose input is (up to whitespace)
    the input of a held-out instance, counting the instances in `decontaminated`; a training
    task left without instances is dropped. SNI's official split is by task, not by source
    dataset, so a few held-out inputs (a CoLA sentence, a MultiRC passage and question) can
    recur in training tasks built on the same data; dropping those training copies keeps the
    held-out set as published and `check_no_contamination` true."""
    held_out = {_text_hash(inst.input) for task in suite.test for inst in task.instances}
    train, dropped = [], 0
    for task in suite.train:
        keep = tuple(i for i in task.instances if _text_hash(i.input) not in held_out)
        shown = tuple(p for p in task.positive_examples if _text_hash(p[0]) not in held_out)
        dropped += len(task.instances) - len(keep)
        if keep:
            train.append(replace(task, instances=keep, positive_examples=shown))
    return replace(suite, train=tuple(train), decontaminated=suite.decontaminated + dropped)


# -- suites -------------------------------------------------------------------------------------


def read_task_json(path: Path, what: str) -> dict:
    """A task file's JSON object; a missing, unreadable or malformed file is one TaskError
    naming it (`what` says whose task file it is)."""
    if not path.is_file():
        raise TaskFileError(f"{path}: {what} task file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"{path}: cannot read the task file ({e})") from e
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}: malformed JSON ({e})") from e
