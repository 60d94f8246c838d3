"""Shared pieces of the tests of methods that change the architecture (stacking, dropping,
growth): tiny runs, a recorder of what each step ran, and bit-exact comparisons."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from budgetlm.api import Method
from budgetlm.models import build_model, get_shape
from budgetlm.train.metrics import read_metrics
from budgetlm.train.session import open_run

from ..train.helpers import tiny_config

__all__ = [
    "StepLog",
    "losses",
    "one_thread",
    "run",
    "same_state",
    "tiny_batch",
    "tiny_config",
    "tiny_model",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Run these tests on one thread. Their models (d 32) are far too small to gain from a
    second one, and when the two cores are shared OpenMP's synchronisation makes them 5-10x
    slower (measured: 26 s against 207 s for these files on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class StepLog(Method):
    """Records, for every step, the progress before it and the blocks it ran (all stacks)."""

    name = "step_log"

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def before_batch(self, state, plan, batch):
        if not self.steps or self.steps[-1]["step"] != plan.step:
            depths = {s: len(b) for s, b in state.model.layer_stacks().items()}
            active = {s: list(range(n)) for s, n in depths.items()}
            active.update(plan.active or {})
            self.steps.append(
                {
                    "step": plan.step,
                    "p": state.clock.progress,
                    "active": active,
                    "shape": state.model.shape,
                }
            )
        return batch


def run(cfg, methods=(), resume=None, **kw):
    """Open (or resume) a run, train, close its log; return (trainer, summary, metrics)."""
    trainer = open_run(cfg, methods=methods, resume=resume, progress=False)
    try:
        summary = trainer.run(**kw)
    finally:
        trainer.log.close()
    return trainer, summary, read_metrics(trainer.run_dir / "metrics.jsonl")


def losses(metrics):
    return [
        (m["event"], m["step"], m.get("loss"), m.get("val_loss"), m.get("lr"), m["flops"])
        for m in metrics
    ]


def same_state(a, b) -> None:
    """Two trainers ended with bit-identical weights and optimizer state."""
    sa, sb = a.state.model.state_dict(), b.state.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    oa, ob = a.state.optimizer.state_dict()["state"], b.state.optimizer.state_dict()["state"]
    assert oa.keys() == ob.keys()
    for i in oa:
        for k, v in oa[i].items():
            assert torch.equal(v, ob[i][k]), (i, k)


PRESET = {"gpt": "gpt-tiny", "bert": "bert-tiny", "t5": "t5-tiny"}


def tiny_model(family: str, seed: int = 0, **knobs):
    """A small model with weights moved off their init (so norms and biases matter)."""
    small = dict(n_layers=2, d_model=32, n_heads=2, d_kv=16, d_ff=64, seq_len=16)
    if family == "t5":
        small["n_decoder_layers"] = 2
    shape = get_shape(PRESET[family], **{**small, **knobs})
    extra = {"target_len": 8} if family == "t5" else {}
    shape = dataclasses.replace(shape, vocab_size=97, **extra)
    torch.manual_seed(seed)
    model = build_model(shape)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def tiny_batch(model, seed: int = 1, size: int = 4):
    s = model.shape
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, s.vocab_size, (size, s.seq_len), generator=g)
    if s.family == "t5":
        shape = (size, s.target_len)
        return {
            "input_ids": ids,
            "decoder_input_ids": torch.randint(0, s.vocab_size, shape, generator=g),
            "labels": torch.randint(0, s.vocab_size, shape, generator=g),
        }
    labels = ids.clone()
    if s.family == "bert":
        labels[torch.rand(ids.shape, generator=g) > 0.3] = -100
    return {"input_ids": ids, "labels": labels}
