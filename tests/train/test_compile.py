"""`train.compile` survives methods: each block is compiled once per signature, and changing which
blocks run (layer dropping), deepening (stacking) or growing the model never recompiles per step.

Every compile goes through a counting backend (eager execution, dynamo's tracing and guards).
A case trains a method twice with compile on: the first run is the warm-up and may compile each
distinct block signature once (a recompile of a block must bring a signature that block's code
has not been compiled for); the second run, with another seed (other active sets, other data),
must compile nothing at all. Silent eager fallback would hide recompiles, so hitting dynamo's
recompile limit is an error here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo
import torch._guards

from budgetlm.config import load_config
from budgetlm.conformance.prepare import setup_settings
from budgetlm.conformance.runs import tiny_settings
from budgetlm.train import compile as compile_module
from budgetlm.train.metrics import read_metrics
from budgetlm.train.session import open_run


def _meta(x: object) -> object:
    if isinstance(x, torch.Tensor):
        return (tuple(str(d) for d in x.shape), x.dtype, x.requires_grad)
    return repr(x)


class CountingBackend:
    """A torch.compile backend that runs graphs eagerly and records what it compiled: per
    compile, the code object (dynamo's frame id), its compile number and the graph's signature
    (the graph's code and its inputs' shapes, dtypes and requires_grad)."""

    def __init__(self) -> None:
        self.compiles: list[tuple[int, int, tuple]] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        cid = torch._guards.CompileContext.current_compile_id()
        frame, attempt = (cid.frame_id, cid.frame_compile_id) if cid is not None else (-1, 0)
        signature = (gm.code, tuple(_meta(x) for x in example_inputs))
        self.compiles.append((frame, attempt, signature))
        return gm.forward

    def repeated(self) -> list[tuple[int, int]]:
        """Recompiles whose signature their code object was already compiled for."""
        seen: set[tuple[int, tuple]] = set()
        out = []
        for frame, attempt, signature in self.compiles:
            if (frame, signature) in seen:
                out.append((frame, attempt))
            seen.add((frame, signature))
        return out


class ActiveSets:
    """The distinct `active` arguments the loop passed to the model."""

    def __init__(self) -> None:
        self.seen: set[tuple] = set()
        self.calls = 0

    def record(self, active: object) -> None:
        self.calls += 1
        if active is not None:
            self.seen.add(tuple(sorted((k, tuple(v)) for k, v in dict(active).items())))


@pytest.fixture
def counting(monkeypatch):
    torch._dynamo.reset()
    backend = CountingBackend()
    monkeypatch.setattr(compile_module, "compile_backend", lambda: backend)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield backend
    torch._dynamo.reset()


def _train(cfg, active_sets: ActiveSets) -> dict:
    trainer = open_run(cfg, progress=False)
    forward = trainer._forward

    def spying_forward():
        model = forward()

        def call(batch, active=None, **kw):
            active_sets.record(active)
            return model(batch, active=active, **kw)

        return call

    trainer._forward = spying_forward
    summary = trainer.run()
    trainer.log.close()
    records = read_metrics(trainer.run_dir / "metrics.jsonl")
    summary["train_losses"] = [r["loss"] for r in records if "grad_norm" in r and "loss" in r]
    return summary


def _config(family, method, run_dir, workspace, seed, steps, extra):
    settings = [
        *tiny_settings(family, run_dir, workspace, steps),
        f"method={method}",
        "train.compile=true",
        f"run.seed={seed}",
        *extra,
    ]
    return load_config(None, [*settings, *setup_settings([method], None, settings, workspace)])


def _check(family, method, extra, tmp_path, counting, steps=8, min_active_sets=0):
    warm, steady = ActiveSets(), ActiveSets()
    first = _train(
        _config(family, method, tmp_path / "warm", tmp_path / "ws", 1, steps, extra), warm
    )
    warm_compiles = len(counting.compiles)
    assert warm_compiles > 0, "nothing was compiled"
    assert counting.repeated() == [], f"recompiled for a signature seen before: {counting.compiles}"
    second = _train(
        _config(family, method, tmp_path / "steady", tmp_path / "ws", 2, steps, extra), steady
    )
    new = counting.compiles[warm_compiles:]
    assert new == [], f"{len(new)} compiles after warm-up (active sets {sorted(steady.seen)})"
    for summary in (first, second):
        assert summary["steps"] == steps, summary
        assert summary["skipped_steps"] == 0, summary
        assert len(summary["train_losses"]) == steps, summary
        losses = [*summary["train_losses"], summary["final_val_loss"]]
        assert all(math.isfinite(x) for x in losses), summary
    assert len(warm.seen | steady.seen) >= min_active_sets, warm.seen | steady.seen
    if method == "staged":  # the model was replaced by a grown one, in both runs
        assert all(r["methods"]["staged"]["growths"] for r in (first, second))
    return warm, steady


def test_layer_drop_on_gpt_never_recompiles_per_step(tmp_path, counting):
    _check("gpt", "layer_drop", ["model.n_layers=4"], tmp_path, counting, min_active_sets=4)


# method, family, its settings, the least number of distinct active sets the two runs must see
SLOW_CASES = [
    ("layer_drop", "bert", ["model.n_layers=4"], 4),
    ("layer_drop", "t5", ["model.n_layers=4", "model.n_decoder_layers=4"], 4),
    ("layer_stacking", "gpt", ["model.n_layers=4"], 2),
    ("layer_stacking", "t5", [], 2),
    ("staged", "gpt", ["methods.staged.grow=depth@0.5"], 0),
    ("staged", "bert", ["methods.staged.grow=width@0.5", "model.positions=learned"], 0),
    ("selective_backprop", "gpt", [], 0),
    ("rho_loss", "gpt", [], 0),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "family", "extra", "min_sets"),
    SLOW_CASES,
    ids=[f"{m}-{f}" for m, f, _, _ in SLOW_CASES],
)
def test_methods_never_recompile_per_step(method, family, extra, min_sets, tmp_path, counting):
    _check(family, method, extra, tmp_path, counting, min_active_sets=min_sets)


def test_every_block_is_compiled_in_place_and_the_backend_is_configurable(monkeypatch):
    from budgetlm.models import build_model, get_shape

    model = build_model(get_shape("t5-tiny"))
    keys = list(model.state_dict())
    assert compile_module.compile_model(model, backend="eager") is model
    blocks = [*model.encoder, *model.decoder]
    assert compile_module.compiled_blocks(model) == blocks
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert model._compiled_call_impl is None  # the loop over blocks stays eager
    assert list(model.state_dict()) == keys  # checkpoints see the plain module
    monkeypatch.delenv(compile_module.BACKEND_ENV, raising=False)
    assert compile_module.compile_backend() == "inductor"
    monkeypatch.setenv(compile_module.BACKEND_ENV, "aot_eager")
    assert compile_module.compile_backend() == "aot_eager"
