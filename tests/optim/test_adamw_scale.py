import copy
import math

import torch

from budgetlm.optim import build_optimizer, set_lr
from budgetlm.optim.adamw_scale import AdamWScale


def test_first_step_is_lr_times_rms_times_sign():
    # After one step Adam's update is g / (|g| + eps) ~ sign(g); RMS scaling multiplies the step.
    w = torch.nn.Parameter(torch.full((4, 4), 2.0))
    opt = AdamWScale([w], lr=0.1, betas=(0.9, 0.999), eps=1e-12)
    w.grad = torch.ones(4, 4)
    opt.step()
    assert torch.allclose(w, torch.full((4, 4), 2.0 - 0.1 * 2.0), atol=1e-6)


def test_small_weights_use_the_floor():
    w = torch.nn.Parameter(torch.zeros(3))
    opt = AdamWScale([w], lr=1.0, eps=1e-12)
    w.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(w, torch.full((3,), -1e-3))


def test_decoupled_weight_decay_and_state_roundtrip():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    opt = build_optimizer(
        "adamw_rms", model, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1
    )
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # bias not decayed
    x = torch.randn(16, 8)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    clone = torch.nn.Linear(8, 8)
    clone.load_state_dict(model.state_dict())
    opt2 = build_optimizer(
        "adamw_rms", clone, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1
    )
    # load_state_dict aliases tensors of matching dtype/device; a resume reads copies from disk.
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for m, o in ((model, opt), (clone, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    assert torch.equal(model.weight, clone.weight)


def test_set_lr_and_training_reduces_loss():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = build_optimizer("adamw", model, lr=0.0, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)
    set_lr(opt, 0.05)
    assert all(g["lr"] == 0.05 for g in opt.param_groups)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    first = last = math.inf
    for i in range(50):
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        first = loss.item() if i == 0 else first
        last = loss.item()
    assert last < 0.7 * first
