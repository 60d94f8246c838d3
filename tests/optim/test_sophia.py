"""Sophia-G: the update against a hand computation, the sampled-label (GNB) estimator, the
Hessian refresh schedule and its charge, every family, and bit-exact resume before a refresh."""

import pytest
import torch

from budgetlm.budget.work import train_pass
from budgetlm.config import ConfigError
from budgetlm.optim import build_optimizer
from budgetlm.optim.sophia import SophiaG, SophiaHessian, sampled_label_loss
from budgetlm.train.session import open_run

from ..train.helpers import tiny_config

SOPHIA = ["optim.name=sophia", "optim.betas=[0.965, 0.99]", "optim.eps=1e-15", "optim.lr=1e-3"]
QUIET = ["train.eval_every=0", "train.checkpoint_every=0"]


def test_two_steps_match_a_hand_computation():
    p = torch.nn.Parameter(torch.ones(3))
    opt = SophiaG([p], lr=0.1, betas=(0.5, 0.9), rho=0.1, eps=1e-12, weight_decay=0.5)
    # Hessian pass: gradient g_hat over N = 4 targets -> h = (1 - 0.9) * 4 * g_hat^2.
    p.grad = torch.tensor([10.0, 1.0, 0.0])
    opt.update_hessian(n_targets=4)
    torch.testing.assert_close(opt.state[p]["hessian"], torch.tensor([40.0, 0.4, 0.0]))
    # Step 1: m = 0.5 * g = 1; rho * h = [4, 0.04, 0]; ratio = min(|m| / (rho h + eps), 1)
    # = [0.25, 1 (clipped), 1 (clipped)]; p = 0.95 * p - 0.1 * sign(m) * ratio.
    p.grad = torch.tensor([2.0, 2.0, 2.0])
    opt.step()
    torch.testing.assert_close(p.data, torch.tensor([0.925, 0.85, 0.85]))
    # Step 2 (no refresh, h unchanged): m = 0.5 * 1 + 0.5 * [-2, 0, 2] = [-0.5, 0.5, 1.5];
    # ratio = [0.125, 1, 1]; the first coordinate now moves up.
    p.grad = torch.tensor([-2.0, 0.0, 2.0])
    opt.step()
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([-0.5, 0.5, 1.5]))
    torch.testing.assert_close(p.data, torch.tensor([0.89125, 0.7075, 0.7075]))
    torch.testing.assert_close(opt.state[p]["hessian"], torch.tensor([40.0, 0.4, 0.0]))


def test_labels_are_sampled_from_the_models_own_softmax():
    probs = torch.tensor([0.1, 0.2, 0.7])
    logits = probs.log().expand(4, 5000, 3).clone()  # (B, T, V)
    labels = torch.zeros(4, 5000, dtype=torch.long)
    labels[0] = -100  # ignored positions are not sampled
    gen = torch.Generator().manual_seed(0)
    loss, n = sampled_label_loss(logits, labels, gen)
    assert n == 3 * 5000
    # Redraw with the same seed to see the labels: their frequencies follow the softmax, and
    # the loss is the cross-entropy against exactly those labels.
    gen.manual_seed(0)
    drawn = torch.multinomial(logits[1:].reshape(-1, 3).softmax(-1), 1, generator=gen).squeeze(1)
    freq = torch.bincount(drawn, minlength=3).float() / n
    assert torch.allclose(freq, probs, atol=4 * (0.25 / n) ** 0.5)
    torch.testing.assert_close(loss, -probs.log()[drawn].sum())
    # Already-gathered rows (BERT's masked positions) are used as they are.
    rows = torch.randn(7, 11, requires_grad=True)
    loss2, n2 = sampled_label_loss(rows, torch.zeros(2, 9), torch.Generator().manual_seed(1))
    assert n2 == 7
    loss2.backward()
    assert rows.grad is not None


def _run(cfg, resume=None, stop_after=None, spy=None):
    trainer = open_run(cfg, resume=resume, progress=False)
    if spy is not None:
        update = trainer.state.optimizer.update_hessian

        def recording(n_targets):
            spy.append((trainer.state.step, n_targets))
            update(n_targets)

        trainer.state.optimizer.update_hessian = recording
    try:
        summary = trainer.run(stop_after=stop_after)
    finally:
        trainer.log.close()
    return trainer, summary


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_hessian_refreshes_on_schedule_and_is_charged(family, tmp_path):
    common = ["budget=7steps", "train.micro_batch_size=4", *QUIET]
    base, _ = _run(tiny_config(family, tmp_path / "base", *common, "optim.name=adamw"))
    spy = []
    sophia, _ = _run(
        tiny_config(
            family,
            tmp_path / "sophia",
            *common,
            *SOPHIA,
            "optim.options.hessian_interval=3",
            "optim.options.hessian_batch=6",  # forwarded as micro-batches of 4 + 2
        ),
        spy=spy,
    )
    assert [step for step, _ in spy] == [0, 3, 6]
    assert all(n > 0 for _, n in spy)  # target tokens of the Hessian batch (masked for BERT)
    shape = sophia.state.model.shape
    extra = 3 * (train_pass(shape, 4, None).flops + train_pass(shape, 2, None).flops)
    assert sophia.state.clock.spent["flops"] == pytest.approx(
        base.state.clock.spent["flops"] + extra, rel=1e-12
    )
    assert sophia.state.clock.spent["tokens"] == base.state.clock.spent["tokens"]
    hessians = [s["hessian"] for s in sophia.state.optimizer.state.values()]
    assert hessians and all(torch.isfinite(h).all() for h in hessians)
    assert sum(float(h.sum()) for h in hessians) > 0
    companion = next(m for m in sophia.state.methods if isinstance(m, SophiaHessian))
    assert companion.summary() == {"hessian_interval": 3, "hessian_refreshes": 3}


def test_resume_just_before_a_hessian_refresh_is_bit_exact(tmp_path):
    overrides = [
        "budget=8steps",
        *SOPHIA,
        "optim.options.hessian_interval=3",
        "model.dropout=0.1",
        "train.micro_batch_size=4",
        *QUIET,
    ]
    straight, _ = _run(tiny_config("bert", tmp_path / "a", *overrides))
    cfg = tiny_config("bert", tmp_path / "b", *overrides)
    spy = []
    _, summary = _run(cfg, stop_after=3)  # steps 0-2 ran; step 3 refreshes the Hessian
    assert summary["status"] == "stopped"
    resumed, _ = _run(cfg, resume="auto", spy=spy)
    assert [step for step, _ in spy] == [3, 6]
    for k, v in straight.state.model.state_dict().items():
        assert torch.equal(v, resumed.state.model.state_dict()[k]), k
    oa, ob = straight.state.optimizer.state_dict(), resumed.state.optimizer.state_dict()
    for i, s in oa["state"].items():
        for k in ("exp_avg", "hessian"):
            assert torch.equal(s[k], ob["state"][i][k]), (i, k)


def test_options_are_validated():
    model = torch.nn.Linear(3, 3)
    kw = dict(lr=1e-3, betas=(0.965, 0.99), eps=1e-15, weight_decay=0.0)
    with pytest.raises(ConfigError, match="did you mean 'optim.options.hessian_interval'"):
        build_optimizer("sophia", model, **kw, options={"hessian_intervall": 5})
    with pytest.raises(ValueError, match="hessian_interval must be >= 1"):
        build_optimizer("sophia", model, **kw, options={"hessian_interval": 0})
    with pytest.warns(UserWarning, match="the paper uses"):
        build_optimizer("sophia", model, lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)
    opt = build_optimizer("sophia", model, **kw, options={"rho": 0.05, "hessian_batch": 2})
    assert opt.param_groups[0]["rho"] == 0.05 and opt.hessian_batch == 2
