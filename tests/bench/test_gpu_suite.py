"""bench/side_by_side.py, bench/loop_overhead.py and bench/gpu_suite.sh run and write their rows.

Only the structure of the results is checked, and that the figures are positive and finite:
the machine is shared, so no test may depend on how fast it is.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"

# A stand-in with nanoGPT's interface (GPTConfig, GPT, forward(idx, targets) -> (logits, loss)):
# a few lines of torch, not nanoGPT's code, which is never part of this repository.
STAND_IN = """
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    block_size: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.tok = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos = nn.Embedding(config.block_size, config.n_embd)
        self.mlp = nn.Sequential(*[nn.Linear(config.n_embd, config.n_embd) for _ in range(2)])

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.shape[1], device=idx.device)
        logits = self.mlp(self.tok(idx) + self.pos(pos)) @ self.tok.weight.T
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss
"""


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def positive(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_competitor(figures: dict) -> None:
    for key in ("step_s", "step_s_min", "tokens_per_s", "params", "steps"):
        assert positive(figures[key]), (key, figures)


def test_side_by_side_with_a_nanogpt_stand_in(tmp_path: Path) -> None:
    stand_in = tmp_path / "model.py"
    stand_in.write_text(STAND_IN)
    out = tmp_path / "sbs.jsonl"
    side_by_side = load_script("side_by_side")
    args = ["--presets", "gpt-tiny", "--compile", "no", "--batch", "2", "--out", str(out)]
    assert side_by_side.main([*args, "--repeats", "2", "--steps", "1", "--warmup", "1",
                              "--nanogpt", str(stand_in)]) == 0  # fmt: skip
    (row,) = rows(out)
    assert row["preset"] == "gpt-tiny" and row["compiled"] is False
    assert set(row["competitors"]) == {"budgetlm", "nanogpt"}
    for figures in row["competitors"].values():
        check_competitor(figures)
        assert figures["steps"] == 2  # 2 round-robin rounds of 1 step
    assert positive(row["ratio"])
    assert row["machine"]["torch"] and row["machine"]["date"] and row["machine"]["cpu"]


def test_side_by_side_without_nanogpt_skips_the_reference(tmp_path: Path) -> None:
    out = tmp_path / "sbs.jsonl"
    side_by_side = load_script("side_by_side")
    args = ["--presets", "gpt-tiny", "--compile", "no", "--batch", "2", "--out", str(out)]
    assert side_by_side.main([*args, "--repeats", "1", "--steps", "1", "--warmup", "0"]) == 0
    (row,) = rows(out)
    assert set(row["competitors"]) == {"budgetlm"}
    assert row["ratio"] is None and "nanogpt" in row["reference_skipped"]


@pytest.mark.slow
def test_loop_overhead_row(tmp_path: Path) -> None:
    out = tmp_path / "lo.jsonl"
    loop_overhead = load_script("loop_overhead")
    config = str(REPO / "configs" / "gpt-tiny.yaml")
    argv = ["--config", config, "--set", "train.batch_size=4", "--repeats", "2", "--steps", "1"]
    assert loop_overhead.main([*argv, "--warmup", "1", "--out", str(out)]) == 0
    (row,) = rows(out)
    for key in ("loop_ms", "raw_ms", "loop_clock_ms"):
        assert positive(row[key]), key
    for key in ("overhead_ms", "overhead_pct", "overhead_paired_ms", "overhead_min_ms"):
        assert math.isfinite(row[key]), key  # either sign: the difference of two noisy times
    assert row["micro_batch_size"] == 4 and len(row["loop_ms_all"]) == 2


@pytest.mark.slow
def test_gpu_suite_cpu_smoke(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(BENCH / "gpu_suite.sh"), "--cpu-smoke", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,  # about 4 minutes idle; far more under load, never a failure for it
    )
    assert result.returncode == 0, result.stdout + result.stderr
    presets = ["gpt-tiny", "bert-tiny", "t5-tiny"]
    side = {r["preset"]: r for r in rows(out / "side-by-side.jsonl")}
    assert set(side) == set(presets)
    for row in side.values():
        for figures in row["competitors"].values():
            check_competitor(figures)
    assert side["bert-tiny"]["ratio"] and side["t5-tiny"]["ratio"]
    assert side["gpt-tiny"]["reference_skipped"]  # no --nanogpt given
    table = json.loads((out / "table.json").read_text())
    assert table  # one entry per shape; its layout is budgetlm.budget.rst's
    methods = ["baseline", "layer_stacking", "layer_drop", "staged", "selective_backprop"]
    arms = {*methods, "rho_loss", "optim:lion", "optim:sophia", "optim:muon", "baseline (again)"}
    for preset in presets:
        fidelity = rows(out / f"rst-fidelity-{preset}.jsonl")
        assert sorted(r["method"] for r in fidelity) == sorted(arms), preset
        assert (out / f"rst-fidelity-{preset}.md").is_file()
        for r in fidelity:
            assert positive(r["rst_s"]) and positive(r["wall_s"]) and r["steps"] > 0
            assert math.isfinite(r["error"])
    stages = (out / "stages.txt").read_text()
    assert "rc=0" in stages and "timeout" not in stages
