"""Super-Natural Instructions (SNI, Wang et al. 2022), as nanoT5 and Tk-Instruct use it.

Two sources:

- SNI's own layout from a local folder (a clone of github.com/allenai/natural-instructions):
  `DIR/tasks/<task>.json` (fields "Definition" (list of strings), "Positive Examples" (list of
  {input, output, explanation}), "Instances" (list of {id, input, output: list of strings}),
  "Categories", ...) and the official split `DIR/splits/default/train_tasks.txt` and
  `test_tasks.txt` (one task name a line). This is what nanoT5 reads (its `ft.yaml`:
  `data_dir: ./data/splits/default`, `task_dir: ./data/tasks`).
- The hub copy `Muennighoff/natural-instructions` (only when no folder is given and the hub is
  reachable): one row per (instance, reference output) with columns task_name, id,
  definition (the first string of "Definition"), inputs, targets; split "train" holds the
  training tasks of the default split, "test" the held-out ones. It has no positive examples,
  so its prompts show the definition only: prefer a local clone to follow nanoT5 exactly.

Held-out tasks are scored on SNI's official evaluation instances, the first
`SNI_EVAL_INSTANCES` (100) of each task file (SNI reorders test tasks so that these are
label-balanced; Tk-Instruct and nanoT5 read them the same way), then capped to
`max_instances_per_eval_task` by `cap_instances`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from budgetlm.finetune.instructions.data import (
    Instance,
    InstructionSuite,
    InstructionTask,
    PromptSettings,
    read_task_json,
)
from budgetlm.finetune.tasks import TaskError, TaskFileError

HUB_DATASET = "Muennighoff/natural-instructions"
SPLIT_DIR = Path("splits") / "default"
TASK_DIR = Path("tasks")
SNI_EVAL_INSTANCES = 100


def load_sni(data_dir: str | Path | None, settings: PromptSettings) -> InstructionSuite:
    """SNI from a local folder in SNI's layout, or from the hub when `data_dir` is None."""
    if data_dir is None:
        return load_sni_hub()
    return load_sni_dir(Path(data_dir))


# -- SNI's own layout ---------------------------------------------------------------------------


def read_split(path: Path) -> list[str]:
    """Task names of a split file, one a line (blank lines and `#` comments skipped)."""
    if not path.is_file():
        raise TaskFileError(
            f"{path}: SNI split file not found (expected SNI's layout: {_layout()})"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"{path}: cannot read the split file ({e})") from e
    names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not names:
        raise TaskError(f"{path}: the split file names no task")
    return names


def _layout() -> str:
    return f"DIR/{TASK_DIR}/<task>.json, DIR/{SPLIT_DIR}/train_tasks.txt and test_tasks.txt"


def _field(raw: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if key not in raw:
        raise TaskError(f"{path}: no {key!r} field (not an SNI task file?)")
    value = raw[key]
    if not isinstance(value, kind):
        raise TaskError(f"{path}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _text(value: Any, what: str, path: Path) -> str:
    if not isinstance(value, str):
        raise TaskError(f"{path}: {what} is a {type(value).__name__}, not a string")
    return value


def _outputs(value: Any, what: str, path: Path) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values:
        raise TaskError(f"{path}: {what} must be a non-empty list of strings")
    return tuple(_text(v, what, path) for v in values)


def parse_task(raw: Any, name: str, path: Path, *, head: int | None = None) -> InstructionTask:
    """An SNI task file's content as an `InstructionTask` (`head`: keep the first instances)."""
    if not isinstance(raw, dict):
        raise TaskError(f"{path}: an SNI task file holds a JSON object, not {type(raw).__name__}")
    definition = _field(raw, "Definition", (list, str), path)
    if isinstance(definition, list):
        if not definition:
            raise TaskError(f"{path}: 'Definition' is empty")
        definition = definition[0]
    definition = _text(definition, "'Definition'", path)
    positives = []
    for i, ex in enumerate(_field(raw, "Positive Examples", list, path)):
        if not isinstance(ex, dict) or "input" not in ex or "output" not in ex:
            raise TaskError(f"{path}: 'Positive Examples'[{i}] needs 'input' and 'output'")
        what = f"'Positive Examples'[{i}]"
        positives.append((_text(ex["input"], what, path), _outputs(ex["output"], what, path)[0]))
    raw_instances = _field(raw, "Instances", list, path)
    instances = []
    for i, inst in enumerate(raw_instances[:head] if head is not None else raw_instances):
        what = f"'Instances'[{i}]"
        if not isinstance(inst, dict) or not {"id", "input", "output"} <= inst.keys():
            raise TaskError(f"{path}: {what} needs 'id', 'input' and 'output'")
        instances.append(
            Instance(
                str(inst["id"]),
                _text(inst["input"], what, path),
                _outputs(inst["output"], f"{what} 'output'", path),
            )
        )
    if not instances:
        raise TaskError(f"{path}: the task has no instances")
    categories = raw.get("Categories")
    category = categories[0] if isinstance(categories, list) and categories else None
    return InstructionTask(
        name, definition, tuple(positives), tuple(instances), str(path), category=category
    )


def read_task(path: Path, name: str, *, head: int | None = None) -> InstructionTask:
    return parse_task(read_task_json(path, "SNI"), name, path, head=head)


def load_sni_dir(root: Path) -> InstructionSuite:
    """SNI's official default split, read from a clone of allenai/natural-instructions."""
    if not root.is_dir():
        raise TaskFileError(f"{root}: no such SNI folder (expected SNI's layout: {_layout()})")
    train_names = read_split(root / SPLIT_DIR / "train_tasks.txt")
    test_names = read_split(root / SPLIT_DIR / "test_tasks.txt")
    train = tuple(read_task(root / TASK_DIR / f"{n}.json", n) for n in _unique(train_names))
    test = tuple(
        read_task(root / TASK_DIR / f"{n}.json", n, head=SNI_EVAL_INSTANCES)
        for n in _unique(test_names)
    )
    return InstructionSuite("sni", train, test, str(root))


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


# -- the hub copy -------------------------------------------------------------------------------


def _hub_offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(f, "").strip().lower() in ("1", "true", "yes", "on") for f in flags)


def load_sni_hub(dataset: str = HUB_DATASET) -> InstructionSuite:
    """SNI from the hub copy (`datasets.load_dataset(dataset)`, splits "train" and "test")."""
    advice = (
        "pass a local SNI folder (git clone https://github.com/allenai/natural-instructions; "
        f"layout {_layout()})"
    )
    if _hub_offline():
        raise TaskError(f"SNI from the hub ({dataset}) is not reachable offline: {advice}")
    try:
        import datasets
    except ImportError as e:
        raise TaskError(f"SNI from the hub needs the 'datasets' package: {advice}") from e
    try:
        splits = datasets.load_dataset(dataset)
    except Exception as e:  # network, missing dataset, cache: all mean "use a local folder"
        raise TaskError(f"could not load {dataset} from the hub ({e}): {advice}") from e
    source = f"hf:{dataset}"
    if "train" not in splits or "test" not in splits:
        raise TaskError(f"{source}: expected splits 'train' and 'test', found {list(splits)}")
    return InstructionSuite(
        "sni",
        hub_tasks(splits["train"], source, head=None),
        hub_tasks(splits["test"], source, head=SNI_EVAL_INSTANCES),
        source,
    )


HUB_COLUMNS = ("task_name", "id", "definition", "inputs", "targets")


def hub_tasks(rows: Any, source: str, *, head: int | None) -> tuple[InstructionTask, ...]:
    """Group the hub's rows (one per instance and reference) into tasks; an instance with
    several references comes as several rows with the same id, in the file's order."""
    missing = [c for c in HUB_COLUMNS if c not in rows.column_names]
    if missing:
        raise TaskError(f"{source}: missing column(s) {missing} (found {rows.column_names})")
    definitions: dict[str, str] = {}
    grouped: dict[str, dict[str, tuple[str, list[str]]]] = {}
    for row in rows:
        task = row["task_name"]
        definitions.setdefault(task, row["definition"])
        instances = grouped.setdefault(task, {})
        if row["id"] not in instances:
            instances[row["id"]] = (row["inputs"], [])
        instances[row["id"]][1].append(row["targets"])
    tasks = []
    for task, instances in grouped.items():
        items = list(instances.items())[:head] if head is not None else instances.items()
        tasks.append(
            InstructionTask(
                task,
                definitions[task],
                (),
                tuple(Instance(i, text, tuple(outs)) for i, (text, outs) in items),
                f"{source}:{task}",
            )
        )
    return tuple(tasks)
