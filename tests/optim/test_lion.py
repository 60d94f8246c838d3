"""Lion: two steps against a hand computation, RMS scaling, options, bit-exact resume."""

import pytest
import torch

from budgetlm.config import ConfigError
from budgetlm.optim import build_optimizer, set_lr
from budgetlm.optim.lion import Lion
from budgetlm.train.session import open_run

from ..train.helpers import tiny_config


def test_two_steps_match_a_hand_computation():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 0.0]))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    # Step 1: m = 0, so the update is sign(0.1 * g) = sign(g) (sign(0) = 0);
    # p <- p * (1 - 0.1 * 0.5) - 0.1 * sign;  m <- 0.01 * g.
    p.grad = torch.tensor([0.3, -0.2, 0.0, 1.0])
    opt.step()
    torch.testing.assert_close(p.data, torch.tensor([0.85, -1.8, 0.475, -0.1]))
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.003, -0.002, 0.0, 0.01]))
    # Step 2: c = 0.9 * m + 0.1 * g = [0.0007, 0.0482, -0.1, 0.004]: the first coordinate's
    # momentum outvotes its (negative) gradient. p <- 0.95 p - 0.1 * sign(c).
    p.grad = torch.tensor([-0.02, 0.5, -1.0, -0.05])
    opt.step()
    torch.testing.assert_close(p.data, torch.tensor([0.7075, -1.81, 0.55125, -0.195]))
    torch.testing.assert_close(
        opt.state[p]["exp_avg"], torch.tensor([0.00277, 0.00302, -0.01, 0.0094])
    )


def test_rms_scaling_multiplies_the_step_by_the_weight_rms_with_a_floor():
    big = torch.nn.Parameter(torch.full((2, 2), 2.0))  # RMS 2
    tiny = torch.nn.Parameter(torch.zeros(3))  # RMS 0: the floor 1e-3 applies
    opt = Lion([big, tiny], lr=0.1, betas=(0.9, 0.99), rms_scale=True)
    big.grad, tiny.grad = torch.ones(2, 2), -torch.ones(3)
    opt.step()
    torch.testing.assert_close(big.data, torch.full((2, 2), 2.0 - 0.1 * 2.0))
    torch.testing.assert_close(tiny.data, torch.full((3,), 0.1 * 1e-3))


def test_factory_groups_options_and_lr_scale():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4))
    opt = build_optimizer(
        "lion",
        model,
        lr=1e-3,
        betas=(0.9, 0.99),
        eps=1e-8,
        weight_decay=0.1,
        options={"rms_scale": True},
    )
    assert isinstance(opt, Lion)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # bias not decayed
    assert all(g["rms_scale"] for g in opt.param_groups)
    set_lr(opt, 5e-4)
    assert all(g["lr"] == 5e-4 for g in opt.param_groups)
    with pytest.raises(ConfigError, match="did you mean 'optim.options.rms_scale'"):
        build_optimizer(
            "lion",
            model,
            lr=1e-3,
            betas=(0.9, 0.99),
            eps=1e-8,
            weight_decay=0.0,
            options={"rms_scal": True},
        )
    with pytest.warns(UserWarning, match="paper's are"):
        build_optimizer("lion", model, lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)


def _run(cfg, resume=None, stop_after=None):
    trainer = open_run(cfg, resume=resume, progress=False)
    try:
        summary = trainer.run(stop_after=stop_after)
    finally:
        trainer.log.close()
    return trainer, summary


def test_t5_with_rms_scaled_lion_resumes_bit_exactly(tmp_path):
    overrides = [
        "budget=6steps",
        "optim.name=lion",
        "optim.lr=7.5e-4",
        "optim.betas=[0.9, 0.99]",
        "optim.options.rms_scale=true",
        "model.dropout=0.1",
        "train.eval_every=0",
        "train.checkpoint_every=0",
    ]
    straight, summary = _run(tiny_config("t5", tmp_path / "a", *overrides))
    assert summary["status"] == "finished"
    cfg = tiny_config("t5", tmp_path / "b", *overrides)
    _run(cfg, stop_after=3)
    resumed, _ = _run(cfg, resume="auto")
    for k, v in straight.state.model.state_dict().items():
        assert torch.equal(v, resumed.state.model.state_dict()[k]), k
    oa, ob = straight.state.optimizer.state_dict(), resumed.state.optimizer.state_dict()
    assert oa["param_groups"] == ob["param_groups"]
    for i, s in oa["state"].items():
        assert torch.equal(s["exp_avg"], ob["state"][i]["exp_avg"]), i
