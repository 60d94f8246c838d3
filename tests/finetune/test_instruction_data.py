"""The data side of instruction fine-tuning: SNI and offline loaders, prompts, caps, checks."""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
import types
from dataclasses import replace
from pathlib import Path

import pytest

from budgetlm.errors import UserError
from budgetlm.finetune.instructions import offline, sni
from budgetlm.finetune.instructions.data import (
    Instance,
    InstructionSuite,
    InstructionTask,
    PromptSettings,
    build_prompt,
    cap_instances,
    check_no_contamination,
    count_positive_examples,
)
from budgetlm.finetune.instructions.suites import load_instruction_suite
from budgetlm.finetune.tasks import DroppedRowsWarning, TaskError

FIXTURES = Path(__file__).parent / "fixtures"
SNI_DIR = FIXTURES / "sni"
NI_DIR = FIXTURES / "bigbench_ni"
SNI_TRAIN = [
    "task901_plurals_noun_plural",
    "task902_antonyms_word_opposite",
    "task903_capitals_question_answering",
    "task904_weather_sentence_rewriting",
]
SNI_TEST = ["task905_recipes_title_generation", "task906_stories_summarization"]


@pytest.fixture
def sni_copy(tmp_path: Path) -> Path:
    root = tmp_path / "sni"
    shutil.copytree(SNI_DIR, root)
    return root


def _task(name: str, inputs: list[str]) -> InstructionTask:
    instances = tuple(Instance(f"{name}-{i}", text, ("out",)) for i, text in enumerate(inputs))
    return InstructionTask(name, "Do it", (), instances, "memory")


# -- SNI, local layout --------------------------------------------------------------------------


def test_sni_loader_reads_the_fixture_and_applies_the_split():
    suite = load_instruction_suite("sni", SNI_DIR, PromptSettings())
    assert suite.name == "sni"
    assert [t.name for t in suite.train] == SNI_TRAIN
    assert [t.name for t in suite.test] == SNI_TEST
    plurals = suite.train[0]
    assert plurals.definition == "Given a singular English noun, write its plural form"
    assert plurals.category == "Text Completion"
    assert len(plurals.positive_examples) == 3 and plurals.positive_examples[0] == ("cat", "cats")
    assert len(plurals.instances) == 6
    people = next(i for i in plurals.instances if i.input == "person")
    assert people.outputs == ("people", "persons") and people.id == "task901-05"
    assert plurals.source.endswith("task901_plurals_noun_plural.json")


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_prompts_show_exactly_k_positive_examples(k):
    suite = load_instruction_suite("sni", SNI_DIR, PromptSettings())
    task = suite.train[0]
    inst = next(i for i in task.instances if i.input == "dog")
    prompt = build_prompt(task, inst, PromptSettings(num_pos_examples=k))
    assert count_positive_examples(prompt) == k
    assert prompt.count("Positive Example") == k
    examples = ["Input: cat.", "Input: box.", "Input: child."]
    assert [e in prompt for e in examples] == [i < k for i in range(3)]
    assert prompt.startswith(
        "Definition: Given a singular English noun, write its plural form.\n\n"
    )
    assert prompt.endswith("Now complete the following example -\nInput: dog.\nOutput: ")
    assert "dogs" not in prompt  # the answer is never in the prompt


def test_prompt_layout_and_the_definition_only_when_asked():
    task = load_instruction_suite("sni", SNI_DIR, PromptSettings()).train[1]
    inst = task.instances[0]
    with_all = build_prompt(task, inst, PromptSettings(num_pos_examples=1))
    assert with_all == (
        "Definition: Write a word that means the opposite of the given word.\n\n"
        " Positive Example 1 -\nInput: hot.\n Output: cold.\n\n"
        f"Now complete the following example -\nInput: {inst.input}.\nOutput: "
    )
    bare = build_prompt(task, inst, PromptSettings(add_task_definition=False, num_pos_examples=0))
    assert "Definition" not in bare and "opposite" not in bare
    assert bare == f"Now complete the following example -\nInput: {inst.input}.\nOutput: "


def test_positive_examples_that_do_not_fit_are_left_out():
    task = load_instruction_suite("sni", SNI_DIR, PromptSettings()).train[0]
    short = build_prompt(task, task.instances[0], PromptSettings(num_pos_examples=3))
    budget = len(short) - 40  # room for fewer than three examples
    fitted = build_prompt(
        task, task.instances[0], PromptSettings(num_pos_examples=3), fits=lambda p: len(p) <= budget
    )
    assert count_positive_examples(fitted) == 2
    assert fitted.endswith("Output: ")


def test_eval_tasks_keep_sni_s_first_instances_then_cap(sni_copy):
    path = sni_copy / "tasks" / "task905_recipes_title_generation.json"
    raw = json.loads(path.read_text())
    raw["Instances"] *= 30  # 150 instances: only the first 100 are SNI's evaluation set
    for i, inst in enumerate(raw["Instances"]):
        inst = dict(inst, id=f"task905-{i:03d}")
        raw["Instances"][i] = inst
    path.write_text(json.dumps(raw))
    suite = load_instruction_suite("sni", sni_copy, PromptSettings(max_instances_per_eval_task=-1))
    ids = {i.id for i in suite.test[0].instances}
    assert len(ids) == 100 and max(ids) == "task905-099"
    capped = load_instruction_suite("sni", sni_copy, PromptSettings(max_instances_per_eval_task=7))
    assert len(capped.test[0].instances) == 7


def test_training_tasks_are_capped(sni_copy):
    suite = load_instruction_suite("sni", SNI_DIR, PromptSettings(max_instances_per_task=2))
    assert all(len(t.instances) == 2 for t in suite.train)
    assert [len(t.instances) for t in suite.test] == [5, 3]


# -- capping ------------------------------------------------------------------------------------


def test_capping_is_deterministic_and_independent_of_file_order(sni_copy):
    suite = load_instruction_suite("sni", SNI_DIR, PromptSettings(max_instances_per_task=-1))
    task = suite.train[0]
    shuffled = replace(task, instances=tuple(reversed(task.instances)))
    picked = cap_instances(task, 3, seed=0)
    assert len(picked) == 3
    assert cap_instances(task, 3, seed=0) == picked
    assert cap_instances(shuffled, 3, seed=0) == picked
    assert set(cap_instances(task, 3, seed=0)) <= set(task.instances)
    assert cap_instances(task, 100, seed=0) == cap_instances(shuffled, None, seed=0)
    others = {cap_instances(task, 3, seed=s) for s in range(1, 8)}
    assert any(set(o) != set(picked) for o in others)  # the seed matters

    # the same holds through the loader, with the task file's instances reversed
    path = sni_copy / "tasks" / f"{task.name}.json"
    raw = json.loads(path.read_text())
    raw["Instances"].reverse()
    path.write_text(json.dumps(raw))
    settings = PromptSettings(max_instances_per_task=3)
    a = load_instruction_suite("sni", SNI_DIR, settings).train[0].instances
    b = load_instruction_suite("sni", sni_copy, settings).train[0].instances
    assert a == b == picked


# -- contamination ------------------------------------------------------------------------------


def test_the_real_splits_pass_the_contamination_check():
    check_no_contamination(load_instruction_suite("sni", SNI_DIR, PromptSettings()))
    check_no_contamination(load_instruction_suite("instructions", NI_DIR, PromptSettings()))


def test_a_held_out_task_among_training_tasks_is_refused(sni_copy):
    with open(sni_copy / "splits" / "default" / "train_tasks.txt", "a") as f:
        f.write(SNI_TEST[1] + "\n")
    with pytest.raises(TaskError, match="task906_stories_summarization.*also training"):
        load_instruction_suite("sni", sni_copy, PromptSettings())


def test_a_held_out_input_seen_in_training_is_refused():
    train = _task("a", ["one two", "three"])
    test = _task("b", ["four", "  one   two "])  # the same text up to whitespace
    suite = InstructionSuite("s", (train,), (test,), "memory")
    with pytest.raises(TaskError, match=r"'b-1' \(b\) also appears in training task a"):
        check_no_contamination(suite)
    check_no_contamination(replace(suite, test=(_task("b", ["four", "one two three"]),)))


def test_contamination_is_a_user_error():
    task = _task("a", ["x"])
    with pytest.raises(UserError):
        check_no_contamination(InstructionSuite("s", (task,), (task,), "memory"))


# -- SNI, bad input -----------------------------------------------------------------------------


def test_a_missing_split_file_is_named(sni_copy):
    (sni_copy / "splits" / "default" / "test_tasks.txt").unlink()
    with pytest.raises(TaskError, match=r"test_tasks\.txt: SNI split file not found"):
        load_instruction_suite("sni", sni_copy, PromptSettings())


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(TaskError, match=r"nowhere: no such SNI folder"):
        load_instruction_suite("sni", tmp_path / "nowhere", PromptSettings())


def test_a_task_named_in_a_split_but_missing_is_named(sni_copy):
    (sni_copy / "tasks" / "task903_capitals_question_answering.json").unlink()
    with pytest.raises(TaskError, match=r"task903_capitals_question_answering\.json: .*not found"):
        load_instruction_suite("sni", sni_copy, PromptSettings())


def test_malformed_task_json_is_named(sni_copy):
    path = sni_copy / "tasks" / "task902_antonyms_word_opposite.json"
    path.write_text(path.read_text()[:-40])
    with pytest.raises(TaskError, match=r"task902_antonyms_word_opposite\.json: malformed JSON"):
        load_instruction_suite("sni", sni_copy, PromptSettings())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda raw: raw.pop("Instances"), "no 'Instances' field"),
        (lambda raw: raw.pop("Definition"), "no 'Definition' field"),
        (lambda raw: raw["Instances"][1].pop("output"), r"'Instances'\[1\] needs"),
        (lambda raw: raw["Instances"][0].update(output=[]), "non-empty list"),
        (lambda raw: raw["Positive Examples"][0].pop("input"), r"'Positive Examples'\[0\]"),
        (lambda raw: raw.update(Instances=[]), "no instances"),
    ],
)
def test_task_files_with_missing_fields_are_named(sni_copy, edit, message):
    path = sni_copy / "tasks" / "task904_weather_sentence_rewriting.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(TaskError, match=r"task904_weather_sentence_rewriting\.json: .*" + message):
        load_instruction_suite("sni", sni_copy, PromptSettings())


def test_an_unknown_suite_is_refused():
    with pytest.raises(TaskError, match="unknown instruction suite 'glue'"):
        load_instruction_suite("glue", None, PromptSettings())


# -- SNI, the hub copy --------------------------------------------------------------------------


class FakeSplit(list):
    """Just what the loader uses of a `datasets.Dataset`: rows and column names."""

    column_names = ["task_name", "id", "definition", "inputs", "targets"]


def _rows(task: str, definition: str, items: list[tuple[str, str, list[str]]]) -> list[dict]:
    return [
        {"task_name": task, "id": i, "definition": definition, "inputs": text, "targets": t}
        for i, text, targets in items
        for t in targets
    ]


def _fake_datasets(monkeypatch, splits) -> list:
    calls = []

    def load_dataset(name, *args, **kwargs):
        calls.append(name)
        return splits

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_the_hub_copy_is_grouped_into_tasks(monkeypatch):
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    train = FakeSplit(
        _rows("task1_a", "Copy the word", [("t1-0", "cat", ["cat"]), ("t1-1", "dog", ["dog"])])
        + _rows("task2_b", "Reverse it", [("t2-0", "ab", ["ba"]), ("t2-1", "xy", ["yx"])])
    )
    test = FakeSplit(_rows("task3_c", "Pluralise", [("t3-0", "mouse", ["mice", "mouses"])]))
    calls = _fake_datasets(monkeypatch, {"train": train, "test": test})
    suite = load_instruction_suite("sni", None, PromptSettings())
    assert calls == [sni.HUB_DATASET]
    assert [t.name for t in suite.train] == ["task1_a", "task2_b"]
    (held_out,) = suite.test
    assert held_out.definition == "Pluralise" and held_out.positive_examples == ()
    assert held_out.instances == (Instance("t3-0", "mouse", ("mice", "mouses")),)
    prompt = build_prompt(held_out, held_out.instances[0], PromptSettings())
    assert count_positive_examples(prompt) == 0 and prompt.startswith("Definition: Pluralise.")
    assert suite.source == f"hf:{sni.HUB_DATASET}"


def test_the_hub_is_never_touched_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = _fake_datasets(monkeypatch, {})
    with pytest.raises(TaskError, match="pass a local SNI folder"):
        load_instruction_suite("sni", None, PromptSettings())
    assert calls == []


def test_the_hub_is_never_touched_when_a_folder_is_given(monkeypatch):
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    calls = _fake_datasets(monkeypatch, {})
    load_instruction_suite("sni", SNI_DIR, PromptSettings())
    assert calls == []


def test_an_unreachable_hub_says_to_pass_a_folder(monkeypatch):
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)

    def load_dataset(name, *args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(TaskError, match="no network.*pass a local SNI folder"):
        load_instruction_suite("sni", None, PromptSettings())


def test_hub_rows_without_the_expected_columns_are_refused(monkeypatch):
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)

    class Bare(list):
        column_names = ["inputs", "targets"]

    _fake_datasets(monkeypatch, {"train": Bare(), "test": Bare()})
    with pytest.raises(TaskError, match="missing column"):
        load_instruction_suite("sni", None, PromptSettings())


# -- the offline suite --------------------------------------------------------------------------


def test_the_offline_suite_splits_by_source_dataset():
    suite = load_instruction_suite("instructions", NI_DIR, PromptSettings())
    assert suite.name == "instructions"
    assert [t.name for t in suite.train] == [
        "subtask023_cosmosqa_question_generation",
        "subtask045_miscellaneous_sentence_paraphrasing",
    ]
    assert [t.name for t in suite.test] == [
        "subtask036_qasc_topic_word_to_generate_related_fact",
        "subtask060_ropes_question_generation",
    ]
    train_sources = {offline.source_dataset(t.name) for t in suite.train}
    test_sources = {offline.source_dataset(t.name) for t in suite.test}
    assert test_sources == set(offline.HELD_OUT_SOURCES)
    assert not train_sources & test_sources
    # every task of the full suite is on the side of its source
    assert {offline.source_dataset(t) for t in offline.TEST_TASKS} == {"qasc", "ropes"}
    assert not {offline.source_dataset(t) for t in offline.TRAIN_TASKS} & {"qasc", "ropes"}


def test_offline_tasks_take_their_first_examples_as_positive_examples():
    raw = json.loads(
        (NI_DIR / "subtask036_qasc_topic_word_to_generate_related_fact.json").read_text()
    )
    task = next(
        t
        for t in load_instruction_suite("instructions", NI_DIR, PromptSettings()).test
        if t.name.startswith("subtask036")
    )
    assert task.definition.startswith("In this task, you need to write a topic word")
    assert task.positive_examples == tuple(
        (ex["input"], ex["target"][0]) for ex in raw["examples"][: offline.POSITIVE_EXAMPLES]
    )
    shown = {text for text, _ in task.positive_examples}
    assert len(task.instances) == len(raw["examples"]) - offline.POSITIVE_EXAMPLES
    assert not shown & {i.input for i in task.instances}
    assert all(len(i.outputs) >= 1 for i in task.instances)
    prompt = build_prompt(task, task.instances[0], PromptSettings())
    assert count_positive_examples(prompt) == 2
    assert prompt.startswith("Definition: In this task")


def test_offline_bad_task_files_are_named(tmp_path):
    directory = tmp_path / "ni"
    shutil.copytree(NI_DIR, directory)
    path = directory / "subtask060_ropes_question_generation.json"
    path.write_text("{not json")
    with pytest.raises(TaskError, match=r"subtask060_ropes_question_generation\.json: malformed"):
        load_instruction_suite("instructions", directory, PromptSettings())
    path.write_text(json.dumps({"description": "Definition: x", "examples": [{"input": "a"}]}))
    with pytest.raises(TaskError, match=r"subtask060_ropes_question_generation\.json: .*target"):
        load_instruction_suite("instructions", directory, PromptSettings())
    with pytest.raises(TaskError, match="none of the offline instruction suite's task files"):
        load_instruction_suite("instructions", tmp_path, PromptSettings())


def test_the_offline_suite_is_extracted_from_the_bigbench_sdist(tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETLM_CACHE", str(tmp_path / "cache"))
    sdist_dir = tmp_path / "cache" / "bigbench"
    sdist_dir.mkdir(parents=True)
    with tarfile.open(sdist_dir / "bigbench-1.0.0.tar.gz", "w:gz") as archive:
        for task in offline.ALL_TASKS:
            source = NI_DIR / "subtask023_cosmosqa_question_generation.json"
            for name in (task, "other_" + task):  # and files that must not be extracted
                folder = "natural_instructions" if name == task else "elsewhere"
                archive.add(
                    source, f"bigbench-1.0.0/bigbench/benchmark_tasks/{folder}/{name}/task.json"
                )
    suite = offline.load_offline_instructions(None, PromptSettings())
    assert len(suite.train) == len(offline.TRAIN_TASKS)
    assert len(suite.test) == len(offline.TEST_TASKS)
    cached = sorted(p.name for p in offline.cache_dir().iterdir())
    assert cached == sorted(f"{t}.json" for t in offline.ALL_TASKS)


def test_offline_without_the_sdist_is_a_task_error(tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BUDGETLM_BIGBENCH_URL", (tmp_path / "absent.tar.gz").as_uri())
    with pytest.raises(TaskError, match="needs the BIG-bench sdist"):
        offline.load_offline_instructions(None, PromptSettings())


def test_the_loader_drops_training_copies_of_held_out_inputs(sni_copy):
    path = sni_copy / "tasks" / "task904_weather_sentence_rewriting.json"
    raw = json.loads(path.read_text())
    title = "Fry eggs in butter and serve them on toast."  # a held-out input (task905)
    raw["Instances"].append({"id": "task904-99", "input": f" {title}", "output": ["x"]})
    raw["Positive Examples"].append({"input": title, "output": "x", "explanation": ""})
    path.write_text(json.dumps(raw))
    with pytest.warns(DroppedRowsWarning, match="dropped 1 training instance"):
        suite = load_instruction_suite("sni", sni_copy, PromptSettings())
    assert suite.decontaminated == 1
    weather = suite.train[3]
    assert len(weather.instances) == 3 and "task904-99" not in {i.id for i in weather.instances}
    assert title not in {text for text, _ in weather.positive_examples}
    check_no_contamination(suite)
