"""Tiny in-process budgetlm runs for the plug-ins' tests: offline, caches in a temporary folder,
one thread, a GPT small enough that a step takes milliseconds (budgetlm's tests/train/helpers.py
does the same)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# Before anything imports huggingface libraries; `setdefault`, so that when budgetlm's own test
# suite runs in the same session its settings stand.
_CACHE = Path(tempfile.mkdtemp(prefix="budgetlm-example-plugin-tests-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(_CACHE / "hf"))
os.environ.setdefault("BUDGETLM_CACHE", str(_CACHE / "budgetlm"))

# A GPT of 2 layers, d 32, on 32-token windows of the bundled fixture corpus.
TINY = [
    "model.preset=gpt-tiny",
    "model.n_layers=2",
    "model.d_model=32",
    "model.n_heads=2",
    "model.d_kv=16",
    "model.d_ff=64",
    "model.seq_len=32",
    "model.dropout=0.1",
    "data.corpus=fixture",
    "data.vocab_size=2048",
    "data.val_fraction=0.05",
    "train.batch_size=4",
    "train.eval_batches=2",
    "train.progress_bar=false",
    "train.log_every=1",
    "optim.lr=3e-3",
]


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and lose much on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    """tiny_config(name, *overrides): the Config of a tiny GPT run in a new folder."""
    from budgetlm.config import load_config

    def make(name: str, *overrides: str):
        run_dir = tmp_path_factory.mktemp(name)
        return load_config(None, [*TINY, f"run.dir={run_dir}", *overrides])

    return make


@pytest.fixture(scope="session")
def train():
    """train(cfg, methods=(), resume=None, stop_after=None) -> (trainer, summary, metrics)."""
    from budgetlm.train.metrics import read_metrics
    from budgetlm.train.session import open_run

    def run(cfg, methods=(), resume=None, stop_after=None):
        trainer = open_run(cfg, methods=methods, resume=resume, progress=False)
        try:
            summary = trainer.run(stop_after=stop_after)
        finally:
            trainer.log.close()
        return trainer, summary, read_metrics(trainer.run_dir / "metrics.jsonl")

    return run


def same_final_state(a, b) -> None:
    """Two trainers ended with bit-identical weights, optimizer state and parameter groups."""
    sa, sb = a.state.model.state_dict(), b.state.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    oa, ob = a.state.optimizer.state_dict(), b.state.optimizer.state_dict()
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        assert oa["state"][i].keys() == ob["state"][i].keys(), i
        for k, v in oa["state"][i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob["state"][i][k])), (i, k)
    assert oa["param_groups"] == ob["param_groups"]


@pytest.fixture(scope="session")
def same_state():
    return same_final_state


@pytest.fixture(scope="session")
def losses():
    """The run's history as compared across resumes: every record's loss, lr and spending."""

    def of(metrics):
        return [
            (m["event"], m["step"], m.get("loss"), m.get("val_loss"), m.get("lr"), m["tokens"])
            for m in metrics
        ]

    return of
