"""The parser every command shares: --version, defaults in --help, no torch to print help."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys

import pytest

from budgetlm.budget.clock import BUDGET_FORMATS, Budget
from budgetlm.cli import build_parser, main


def _parsers(parser: argparse.ArgumentParser, name: str = "budgetlm"):
    """Every parser under `parser`, with its command line."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def _help(*argv: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(r"budgetlm \S+( \(git [0-9a-f]+\))?", out), out
    assert out.split()[1] == importlib.metadata.version("budgetlm")


def test_every_parser_uses_the_one_formatter():
    for name, parser in _parsers(build_parser()):
        assert parser.formatter_class.__name__ == "HelpFormatter", name


def test_help_shows_defaults_but_not_empty_ones(capsys):
    text = _help("generate", capsys=capsys)
    assert "(default: 40)" in text and "(default: 1)" in text
    for name, parser in _parsers(build_parser()):
        text = parser.format_help()
        for noise in ("(default: None)", "(default: False)", "(default: [])"):
            assert noise not in text, (name, noise)
        assert not re.search(r"default.*\(default:", text), name  # said once, not twice


def test_options_without_help_text_show_their_default(capsys):
    assert "(default: 4e-05)" in _help("finetune", capsys=capsys)  # --lr has no help text


def test_train_help_lists_budget_formats_that_parse(capsys):
    text = _help("train", capsys=capsys)
    table = text.split("budgets (", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    listed = []
    for line in table:
        if re.match(r"  \S", line):  # a row, not a wrapped description
            examples = re.split(r"\s{2,}", line.strip())[0]
            listed += examples.split(", ")
    assert listed == [e for examples, _ in BUDGET_FORMATS for e in examples]
    units = {Budget.parse(example).unit for example in listed}
    assert units == {"rst", "steps", "tokens", "flops", "seconds"}


def test_train_help_lists_the_methods_and_optimizers_installed(capsys):
    from budgetlm.registry import METHODS, OPTIMIZERS

    text = " ".join(_help("train", capsys=capsys).split("methods (", 1)[1].split())
    for name in [*METHODS, *OPTIMIZERS]:
        assert name in text
    assert "budgetlm check-plugin" in text


@pytest.mark.parametrize(
    "argv", [["--help"], ["--version"], ["train", "--help"], ["generate", "--help"]]
)
def test_help_and_version_do_not_import_torch(argv):
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "budgetlm", *argv],
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard, not a speed test
    )
    assert out.returncode == 0, out.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()]
    assert imported and "budgetlm.cli.main" in imported
    heavy = [m for m in imported if m.split(".")[0] == "torch"]
    assert not heavy, heavy[:5]


def test_an_unknown_corpus_is_a_message_and_exit_2_not_a_traceback(capsys):
    from budgetlm.cli import main

    assert main(["prepare", "--corpus", "shakespeer"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'shakespeare'" in err.lower() and "Traceback" not in err


def test_importing_the_package_turns_off_mkl_dynamic_threads_unless_set():
    """Bit-exact resume must not depend on machine load (MKL would shrink its thread count)."""
    import os
    import subprocess
    import sys

    code = "import budgetlm.compare.run.cell, os; print(os.environ['MKL_DYNAMIC'])"
    env = {k: v for k, v in os.environ.items() if k != "MKL_DYNAMIC"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.stdout.strip() == "FALSE"
    env["MKL_DYNAMIC"] = "TRUE"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.stdout.strip() == "TRUE"
