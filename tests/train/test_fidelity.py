"""`budgetlm calibrate --check TABLE CONFIG...`: RST/wall per run, each method relative to its
round's baseline, t intervals and the exit code, from planted (rst, wall) per run; and one real
end-to-end run (slow) that checks only that it completes and reports its rows."""

import json
import statistics

import pytest
from scipy import stats

from budgetlm.cli import main
from budgetlm.train import fidelity
from budgetlm.train.fidelity import Arm, RunResult, check_fidelity, mean_ci

CONFIG = "configs/gpt-tiny.yaml"
# The machine's speed drifts between rounds: every arm of a round moves alike.
DRIFT = [1.10, 0.90, 1.00]
# Each method's RST/wall relative to the baseline of its round, per round.
PLANTED = {"layer_drop": [0.02, 0.01, 0.03], "optim:lion": [0.09, 0.11, 0.10]}


class Planted:
    """A run function that plants rst/wall = drift of the round x (1 + the method's error)."""

    def __init__(self, planted=PLANTED):
        self.planted = planted
        self.arms: list[Arm] = []

    def __call__(self, arm: Arm) -> RunResult:
        self.arms.append(arm)
        if arm.round < 0:  # the warm-up: a baseline far off, which must count nowhere
            return RunResult(rst_s=1.0, wall_s=10.0, steps=5)
        rounds = arm.round
        ratio = DRIFT[rounds] * (
            1 + (0.0 if arm.method == "baseline" else self.planted[arm.method][rounds])
        )
        return RunResult(rst_s=10.0 * ratio, wall_s=10.0, steps=5)


def test_relative_errors_cancel_drift_and_carry_t_intervals():
    run = Planted()
    report = check_fidelity(
        "cpu-reference",
        [(CONFIG, [])],
        methods=["layer_drop", "optim:lion"],
        repeats=3,
        run=run,
        progress=lambda line: None,
    )
    assert [a.method for a in run.arms] == ["baseline"] + [
        "baseline",
        "layer_drop",
        "optim:lion",
    ] * 3
    assert [a.round for a in run.arms] == [-1, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len({a.run_dir for a in run.arms}) == 10
    rows = {(r["round"], r["method"]): r for r in report.rows}
    for method, errors in PLANTED.items():
        for round_, error in enumerate(errors):
            assert rows[round_, method]["vs_baseline"] == pytest.approx(error, abs=1e-12)
    errors = {e["method"]: e for e in report.errors}
    base = [d - 1 for d in DRIFT]
    assert errors["baseline"]["kind"] == "absolute"
    assert errors["baseline"]["mean"] == pytest.approx(statistics.fmean(base))
    for method, planted in PLANTED.items():
        half = stats.t.ppf(0.975, 2) * statistics.stdev(planted) / 3**0.5
        e = errors[method]
        assert e["kind"] == "relative" and e["n"] == 3
        assert e["mean"] == pytest.approx(statistics.fmean(planted), abs=1e-12)
        assert e["ci_low"] == pytest.approx(e["mean"] - half, abs=1e-12)
        assert e["ci_high"] == pytest.approx(e["mean"] + half, abs=1e-12)
    # Lion is 10% off its baseline: outside the default ±5%.
    assert [e["method"] for e in report.outside] == ["optim:lion"]
    assert report.exit_code == 1
    assert "OUTSIDE" in report.render() and "optim:lion" in report.render().splitlines()[-1]


def test_every_method_within_the_bound_exits_0():
    report = check_fidelity(
        "cpu-reference",
        [(CONFIG, [])],
        methods=["layer_drop"],
        repeats=3,
        run=Planted(),
        progress=lambda line: None,
    )
    assert report.exit_code == 0 and not report.outside
    assert "every method within" in report.render()


def test_one_round_has_no_interval():
    assert mean_ci([0.1]) == {"n": 1, "mean": 0.1, "ci_low": None, "ci_high": None}


def test_default_methods_fit_the_family_and_skip_the_configs_own_optimizer():
    from budgetlm.config import load_config

    methods = fidelity.default_methods(load_config(CONFIG, []))
    assert "layer_drop" in methods and methods[-2:] == ["optim:lion", "optim:sophia"]
    lion = fidelity.default_methods(load_config(CONFIG, ["optim.name=lion"]))
    assert "optim:lion" not in lion and "optim:sophia" in lion


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "layer_dorp"], "did you mean 'layer_drop'"),
        (["--methods", "optim:lino"], "did you mean 'lion'"),
        (["--budget", "20steps"], "in RST"),
        (["--repeats", "0"], "at least 1"),
        (["--optimizers", "lion"], "--optimizers"),
    ],
)
def test_bad_input_exits_2_before_any_run(argv, message, monkeypatch, capsys):
    run = Planted()
    monkeypatch.setattr(fidelity, "run_arm", run)
    assert main(["calibrate", "--check", "cpu-reference", CONFIG, *argv]) == 2
    assert message in capsys.readouterr().err
    assert run.arms == []


def test_check_only_options_need_check(capsys):
    assert main(["calibrate", CONFIG, "--out", "x.json", "--max-error", "0.1"]) == 2
    assert "only with --check" in capsys.readouterr().err


def test_too_few_loop_steps_are_refused_before_any_timing(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["calibrate", CONFIG, "--out", str(out), "--loop-steps", "4"]) == 2
    assert "--loop-steps must be at least 8" in capsys.readouterr().err
    assert not out.exists()


def test_the_command_writes_the_report_and_exits_by_the_bound(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fidelity, "run_arm", Planted())
    out = tmp_path / "check.json"
    argv = [
        "calibrate",
        "--check",
        "cpu-reference",
        CONFIG,
        "--methods",
        "layer_drop",
        "optim:lion",
    ]
    assert main([*argv, "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "optim:lion" in captured.out.splitlines()[-1]
    assert len([line for line in captured.err.splitlines() if line.startswith("[")]) == 10
    report = json.loads(out.read_text())
    assert len(report["rows"]) == 9 and report["max_error"] == 0.05
    assert report["table_hash"] and report["machine"]["device"] and "--check" in report["command"]
    monkeypatch.setattr(fidelity, "run_arm", Planted())
    assert main([*argv, "--max-error", "0.15", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_a_real_check_completes_and_reports_its_rows(tmp_path):
    out = tmp_path / "check.json"
    # The shipped table's gpt-tiny shape (another depth would need a table of its own).
    tiny = [
        "train.batch_size=4",
        "data.vocab_size=2048",
        "data.val_fraction=0.05",
    ]
    code = main(
        [
            "calibrate",
            "--check",
            "cpu-reference",
            CONFIG,
            "--set",
            *tiny,
            "--methods",
            "layer_drop",
            "--repeats",
            "1",
            "--budget",
            "2s-rst",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    # Never judged on its numbers: the machine is shared, the exit code may be 0 or 1.
    assert code in (0, 1)
    report = json.loads(out.read_text())
    assert [r["method"] for r in report["rows"]] == ["baseline", "layer_drop"]
    assert all(r["steps"] > 0 and r["wall_s"] > 0 for r in report["rows"])
