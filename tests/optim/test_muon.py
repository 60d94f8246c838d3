"""Muon + AdamW: Newton-Schulz and one step against hand computations, the parameter split,
torch.optim.Muon and our implementation agreeing, the AdamW part agreeing with torch's, and
bit-exact resume."""

import pytest
import torch

from budgetlm.config import ConfigError
from budgetlm.models import build_model, get_shape
from budgetlm.optim import build_optimizer, set_lr
from budgetlm.optim.muon import (
    NS_COEFFICIENTS,
    MuonAdamW,
    has_torch_muon,
    hidden_matrices,
    orthogonalize,
)
from budgetlm.train.session import open_run

from ..train.helpers import tiny_config

IMPLEMENTATIONS = ["own", "torch"] if has_torch_muon() else ["own"]


def _bf16(v: float) -> float:
    return torch.tensor(v).bfloat16().float().item()


def _ns_scalar(s: float, steps: int = 5, bf16: bool = True) -> float:
    """What the quintic iteration does to one singular value: s <- a s + (b s^2 + c s^4) s,
    rounded to bf16 after each product as the matrix iteration (bf16 in, fp32 sums) does."""
    a, b, c = NS_COEFFICIENTS
    r = _bf16 if bf16 else float
    s = r(s)
    for _ in range(steps):
        g = r(s * s)
        s = r(a * s + r(b * g + c * g * g) * s)
    return s


def test_newton_schulz_matches_the_scalar_iteration_on_known_singular_values():
    # 3 * I_4 has Frobenius norm 6: normalised, all four singular values are 0.5.
    expected = _ns_scalar(0.5)
    assert expected == 0.82421875  # bf16 arithmetic; exact arithmetic would give 0.7654...
    assert abs(_ns_scalar(0.5, bf16=False) - 0.7654385) < 1e-6
    out = orthogonalize(3 * torch.eye(4), steps=5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected * torch.eye(4), atol=0, rtol=0)
    # A tall matrix keeps its shape; its singular values go through the same map.
    tall = torch.zeros(8, 4)
    tall[:4] = 2 * torch.eye(4)
    out = orthogonalize(tall, steps=5).float()
    assert out.shape == (8, 4)
    expected = _ns_scalar(0.5)  # 2 * I_4 stacked on zeros: Frobenius norm 4, values 0.5
    torch.testing.assert_close(out[:4], expected * torch.eye(4), atol=0, rtol=0)
    assert out[4:].abs().max() == 0
    # A random matrix comes out with all singular values near 1.
    g = torch.randn(16, 48, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(orthogonalize(g, steps=5).float())
    assert s.min() > 0.5 and s.max() < 1.5


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("adjust", ["match_rms_adamw", "original"])
def test_one_step_matches_a_hand_computation(implementation, adjust):
    w = torch.nn.Parameter(torch.full((4, 4), 0.5))
    group = {
        "params": [w],
        "use_muon": True,
        "lr": 0.1,
        "weight_decay": 0.1,
        "momentum": 0.95,
        "nesterov": True,
        "ns_steps": 5,
        "ns_coefficients": NS_COEFFICIENTS,
        "eps": 1e-7,
        "adjust_lr_fn": adjust,
    }
    opt = MuonAdamW([group], implementation=implementation)
    assert opt.uses_torch_muon == (implementation == "torch")
    w.grad = 2 * torch.eye(4)
    opt.step()
    # buffer = 0.05 G; nesterov U = G + 0.95 (buffer - G) = 0.0975 G, a multiple of I, so
    # NS(U) = ns(0.5) I; W <- 0.99 W - lr * adjust * NS(U), adjust = 0.2 sqrt(4) or 1.
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], 0.1 * torch.eye(4))
    scale = 0.4 if adjust == "match_rms_adamw" else 1.0
    expected = 0.5 * 0.99 * torch.ones(4, 4) - 0.1 * scale * _ns_scalar(0.5) * torch.eye(4)
    torch.testing.assert_close(w.data, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_only_hidden_matrices_use_muon(family):
    knobs = dict(n_layers=2, d_model=32, n_heads=2, d_kv=16, d_ff=64, seq_len=16)
    if family == "t5":
        knobs["n_decoder_layers"] = 2
    model = build_model(get_shape(f"{family}-tiny", **knobs))
    opt = build_optimizer(
        "muon", model, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, options={}
    )
    muon = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert muon == {id(p) for p in hidden_matrices(model)}
    for pid in muon:
        name = names[pid]
        assert name.split(".")[0] in ("decoder", "encoder"), name
        assert not any(k in name for k in ("emb", "head", "norm", "ln", "bias")), name
    others = [names[id(p)] for g in opt.param_groups if not g["use_muon"] for p in g["params"]]
    assert any("tok_emb" in n for n in others)
    assert all(p.ndim == 2 for g in opt.param_groups if g["use_muon"] for p in g["params"])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_adamw_part_matches_torch_adamw_and_lr_scale_applies():
    torch.manual_seed(0)
    ours_model = torch.nn.Sequential(torch.nn.Embedding(10, 6), torch.nn.Linear(6, 3))
    ref_model = torch.nn.Sequential(torch.nn.Embedding(10, 6), torch.nn.Linear(6, 3))
    ref_model.load_state_dict(ours_model.state_dict())
    adamw = {"use_muon": False, "betas": (0.9, 0.95), "eps": 1e-8, "lr": 1e-2}
    decay = [p for p in ours_model.parameters() if p.ndim >= 2]
    no_decay = [p for p in ours_model.parameters() if p.ndim < 2]
    ours = MuonAdamW(
        [
            {"params": decay, **adamw, "weight_decay": 0.1},
            {"params": no_decay, **adamw, "weight_decay": 0.0},
        ],
        implementation="own",
    )
    ref = torch.optim.AdamW(
        [
            {"params": [p for p in ref_model.parameters() if p.ndim >= 2], "weight_decay": 0.1},
            {"params": [p for p in ref_model.parameters() if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=1e-2,
        betas=(0.9, 0.95),
        eps=1e-8,
        foreach=False,
    )
    x = torch.randint(0, 10, (5, 2))
    for _ in range(3):
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    model = build_model(get_shape("gpt-tiny", n_layers=1, d_model=32, n_heads=2, d_kv=16))
    opt = build_optimizer(
        "muon",
        model,
        lr=1e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=0.0,
        options={"muon_lr_scale": 10.0, "adjust_lr": "original"},
    )
    set_lr(opt, 2e-3)
    assert sorted({g["lr"] for g in opt.param_groups}) == [2e-3, 2e-2]
    with pytest.raises(ConfigError, match="did you mean 'optim.options.momentum'"):
        build_optimizer(
            "muon",
            model,
            lr=1e-3,
            betas=(0.9, 0.95),
            eps=1e-8,
            weight_decay=0.0,
            options={"momentun": 0.9},
        )
    with pytest.raises(ValueError, match="adjust_lr must be one of"):
        build_optimizer(
            "muon",
            model,
            lr=1e-3,
            betas=(0.9, 0.95),
            eps=1e-8,
            weight_decay=0.0,
            options={"adjust_lr": "rms"},
        )


def _run(cfg, resume=None, stop_after=None):
    trainer = open_run(cfg, resume=resume, progress=False)
    try:
        trainer.run(stop_after=stop_after)
    finally:
        trainer.log.close()
    return trainer


@pytest.mark.skipif(not has_torch_muon(), reason="this torch has no torch.optim.Muon")
def test_torch_muon_and_our_implementation_agree_on_a_training_run(tmp_path):
    common = ["budget=5steps", "optim.name=muon", "train.eval_every=0", "train.checkpoint_every=0"]
    ours = _run(tiny_config("gpt", tmp_path / "own", *common, "optim.options.implementation=own"))
    theirs = _run(
        tiny_config("gpt", tmp_path / "torch", *common, "optim.options.implementation=torch")
    )
    assert theirs.state.optimizer.uses_torch_muon and not ours.state.optimizer.uses_torch_muon
    for (name, a), b in zip(
        ours.state.model.state_dict().items(), theirs.state.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_resume_is_bit_exact(tmp_path):
    overrides = [
        "budget=6steps",
        "optim.name=muon",
        "optim.weight_decay=0.1",
        "model.dropout=0.1",
        "train.eval_every=0",
        "train.checkpoint_every=0",
    ]
    straight = _run(tiny_config("t5", tmp_path / "a", *overrides))
    cfg = tiny_config("t5", tmp_path / "b", *overrides)
    _run(cfg, stop_after=2)
    resumed = _run(cfg, resume="auto")
    for k, v in straight.state.model.state_dict().items():
        assert torch.equal(v, resumed.state.model.state_dict()[k]), k
    oa, ob = straight.state.optimizer.state_dict(), resumed.state.optimizer.state_dict()
    assert oa["param_groups"] == ob["param_groups"]
    kinds = set()
    for i, s in oa["state"].items():
        for k, v in s.items():
            kinds.add(k)
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob["state"][i][k])), (i, k)
    assert {"momentum_buffer", "exp_avg", "exp_avg_sq"} <= kinds  # both halves checkpointed


def test_without_torch_muon_auto_falls_back_to_our_implementation(monkeypatch):
    import budgetlm.optim.muon as muon

    monkeypatch.setattr(muon, "has_torch_muon", lambda: False)
    model = build_model(get_shape("gpt-tiny", n_layers=1, d_model=32, n_heads=2, d_kv=16))
    kw = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    assert not build_optimizer("muon", model, **kw, options={}).uses_torch_muon
    with pytest.raises(ValueError, match="has no torch.optim.Muon"):
        build_optimizer("muon", model, **kw, options={"implementation": "torch"})
