"""Docs that must not drift from the code."""

import dataclasses
import re
from pathlib import Path

from budgetlm.cli import build_parser
from budgetlm.config import Config

ROOT = Path(__file__).resolve().parent.parent


def _keys(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _keys(value, f"{f.name}.")
        else:
            yield prefix + f.name


def test_every_config_key_is_documented():
    doc = (ROOT / "docs" / "config.md").read_text()
    documented = set(re.findall(r"^\| `([\w.]+)` \|", doc, re.M))
    assert set(_keys(Config())) <= documented, set(_keys(Config())) - documented


def test_config_page_is_generated_from_the_code():
    from budgetlm.config_docs import COMMAND, PAGE, render

    assert PAGE == ROOT / "docs" / "config.md"
    assert PAGE.read_text() == render(), f"docs/config.md is out of date: run `{COMMAND}`"


def test_every_config_field_has_a_description():
    from budgetlm.config_docs import undocumented

    missing = undocumented()
    assert not missing, f"add a docstring under these fields in budgetlm/config.py: {missing}"


def test_field_docstrings_are_read_from_the_source():
    from budgetlm.config import TrainConfig
    from budgetlm.config_docs import field_docs

    intro, docs = field_docs(TrainConfig)
    assert intro.startswith("Batch, device and precision")
    assert docs["batch_size"].startswith("sequences per optimizer step")
    assert set(docs) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_every_command_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:
        assert f"### `budgetlm {name}" in readme, name
    assert "make demo" in readme[:800] and "make test" in readme[:800]


def test_every_experiment_key_is_documented():
    from budgetlm.compare.run.experiment import ARM_KEYS, EXPERIMENT_KEYS, STATS_KEYS

    doc = (ROOT / "docs" / "compare.md").read_text()
    table = set(re.findall(r"^\| `(\w+)` \|", doc, re.M))
    assert set(EXPERIMENT_KEYS) <= table, set(EXPERIMENT_KEYS) - table
    for key in (*ARM_KEYS, *STATS_KEYS):
        assert f"`{key}`" in doc, key


def test_the_exit_code_table_matches_the_constants():
    from budgetlm import errors

    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    text = (ROOT / "docs" / "training.md").read_text()
    table = text[text.index("## Exit codes") :]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.M)}
    assert documented == codes
    for error in (errors.DivergedError, errors.RunBusy, errors.StorageError, errors.UserError):
        assert error.exit_code in codes
