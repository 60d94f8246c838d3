"""Bit-exact resume across processes, and the checkpoint safety rules around it."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from budgetlm.cli import main
from budgetlm.train.metrics import read_metrics

from .helpers import resume_run_args as _args


def _cli(*args):
    """A fresh process, as a user (or a scheduler restarting a job) would run it. Its thread
    count is pinned: bit-exactness across processes must not depend on how busy the machine is."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_DYNAMIC": "FALSE"}
    out = subprocess.run(
        [sys.executable, "-m", "budgetlm", "train", "--quiet", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,  # a hang guard, not a speed test
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _final_weights(run_dir):
    last = sorted((run_dir / "checkpoints").iterdir())[-1]
    return load_file(last / "model.safetensors"), load_file(last / "optimizer.safetensors")


def _losses(run_dir):
    return [
        (m["event"], m["step"], m.get("loss"), m.get("val_loss"), m.get("lr", 0))
        for m in read_metrics(run_dir / "metrics.jsonl")
    ]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_resume_in_a_fresh_process_is_bit_exact(family, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _cli(*_args(family, straight))
    _cli(*_args(family, resumed), "--stop-after", "6")
    assert not (resumed / "summary.json").exists()
    _cli(*_args(family, resumed), "--resume", "auto")
    (wa, oa), (wb, ob) = _final_weights(straight), _final_weights(resumed)
    assert wa.keys() == wb.keys() and oa.keys() == ob.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k
    assert _losses(straight) == _losses(resumed)


@pytest.mark.slow
def test_resume_skips_an_incomplete_and_a_corrupt_checkpoint(tmp_path, capsys):
    straight, run = tmp_path / "straight", tmp_path / "run"
    _cli(*_args("gpt", straight))
    _cli(*_args("gpt", run), "--stop-after", "7")  # checkpoints at steps 3, 6 and 7
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000003", "step_000006", "step_000007"]
    (ckpts / "step_000007" / "manifest.json").unlink()  # died while writing step 7
    data = bytearray((ckpts / "step_000006" / "optimizer.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x10
    (ckpts / "step_000006" / "optimizer.safetensors").write_bytes(bytes(data))
    # Both are skipped, each named with what is wrong; resuming from step 3 in a fresh process
    # still reproduces the straight run exactly (more cases: test_checkpoint_fallback.py).
    err = _cli(*_args("gpt", run), "--resume", "auto").stderr
    assert "step_000007: no manifest.json" in err
    assert "step_000006/optimizer.safetensors: checksum mismatch" in err
    assert "resumed from step_000003" in err
    (wa, _), (wb, _) = _final_weights(straight), _final_weights(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_with_a_changed_config_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_args("gpt", run), "--stop-after", "3", "--quiet"]) == 0
    code = main(["train", *_args("gpt", run, "optim.lr=0.5"), "--resume", "auto", "--quiet"])
    assert code == 2
    assert "optim.lr" in capsys.readouterr().err
    code = main(["train", *_args("gpt", run), "--quiet"])  # no --resume: refuse to overwrite
    assert code == 2
    assert "--resume auto" in capsys.readouterr().err


def test_config_typo_fails_before_writing_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "optim.lrr=1e-3", "data.corpus=fixture"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'optim.lrr'; did you mean 'optim.lr'?" in err
    assert list(tmp_path.iterdir()) == []


def test_finished_run_is_not_retrained(tmp_path, capsys):
    run = tmp_path / "run"
    args = [*_args("gpt", run, "budget=2steps"), "--quiet"]
    assert main(["train", *args]) == 0
    capsys.readouterr()
    assert main(["train", *args, "--resume", "auto"]) == 0
    assert "already finished" in capsys.readouterr().out
