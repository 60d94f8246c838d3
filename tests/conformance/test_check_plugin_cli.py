"""`budgetlm check-plugin`: a line per check as it runs, a summary, and the exit status (0 all
passed, 1 a check failed, 2 bad input, never a traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from budgetlm.cli import main


def _run(capsys, *argv):
    code = main(["check-plugin", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_good_plug_in_passes_with_exit_0(plugins, capsys):
    code, out, err = _run(capsys, "faulty_plugins:PlainSGD", "--family", "gpt")
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0] == "optimizer faulty_plugins:PlainSGD:"
    checks = [line.split()[1] for line in lines[1:-1]]
    assert checks == [
        "faulty_plugins:PlainSGD/options",
        "faulty_plugins:PlainSGD/trains[gpt]",
        "faulty_plugins:PlainSGD/charges[gpt]",
        "faulty_plugins:PlainSGD/resumes[gpt]",
        "faulty_plugins:PlainSGD/refuses[rho_loss]",
    ]
    assert all(line.lstrip().startswith("✓") for line in lines[1:-1])
    assert lines[-1].startswith("5 checks: 5 passed, 0 failed in ")


def test_a_faulty_plug_in_fails_with_exit_1_naming_the_check(plugins, capsys):
    code, out, _ = _run(capsys, "faulty_plugins:SloppyCompanionSGD", "--family", "gpt", "--quiet")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("  ✗ faulty_plugins:SloppyCompanionSGD/charges[gpt]  ")
    assert "16 block-rows were back-propagated but the train passes charged cover 8" in lines[0]
    assert "failed (faulty_plugins:SloppyCompanionSGD/charges[gpt])" in lines[-1]
    assert not any("✓" in line for line in lines)  # --quiet: failures and the summary only


def test_a_typo_given_with_set_fails_the_options_check(plugins, capsys):
    code, out, _ = _run(
        capsys,
        "faulty_plugins:PlainSGD",
        "--family",
        "gpt",
        "--set",
        "optim.options.nesterv=true",
        "--quiet",
    )
    assert code == 1
    assert "✗ faulty_plugins:PlainSGD/options" in out
    assert "did you mean 'optim.options.nesterov'" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["layer_dorp"], "unknown method or optimizer 'layer_dorp'; did you mean 'layer_drop'?"),
        (["faulty_plugins:Tempred"], "has no 'Tempred'; did you mean 'Tempered'?"),
        ([], "name a method or an optimizer to check (or give --all)"),
        (["layer_drop", "--set", "theta_bar"], "--set 'theta_bar' must look like key.sub=value"),
    ],
)
def test_bad_input_exits_2_with_a_message(plugins, capsys, argv, message):
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert out == ""


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from budgetlm.cli import main\n"
        "try:\n    main(['check-plugin', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('loaded', 'budgetlm.cli.check_plugin' in sys.modules)\n"
        "print('torch', sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard, not a speed test
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "budgetlm check-plugin" in run.stdout
    assert "loaded True" in run.stdout and "torch []" in run.stdout
