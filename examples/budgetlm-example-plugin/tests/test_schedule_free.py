"""Schedule-free AdamW: built on budgetlm's parameter groups, trains, saves the evaluation
weights, resumes bit-exactly in a fresh run, and refuses the methods it cannot follow."""

import pytest
import schedulefree
import torch
from budgetlm_example_plugin.schedule_free import TRAIN_POINT, AdamWScheduleFreeExact

from budgetlm.config import ConfigError
from budgetlm.models import build_model, get_shape
from budgetlm.optim import build_optimizer
from budgetlm.train.checkpoint import complete_checkpoints, load_checkpoint

KNOBS = dict(n_layers=2, d_model=32, n_heads=2, d_kv=16, d_ff=64, seq_len=16, vocab_size=64)
RUN = [
    "budget=12steps",
    "optim.name=schedule_free_adamw",
    "schedule.name=constant",
    "schedule.warmup=0.25",
    "train.eval_every=0.5",
    "train.checkpoint_every=0.25",
    "train.keep_checkpoints=10",
]


def _build(**kw):
    model = build_model(get_shape("gpt-tiny", **KNOBS))
    settings = dict(lr=1e-2, betas=None, eps=None, weight_decay=0.1, options={}) | kw
    return model, build_optimizer("schedule_free_adamw", model, **settings)


def _steps(model, optimizer, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    optimizer.train()
    for _ in range(n):
        ids = torch.randint(0, 64, (2, 16), generator=g)
        optimizer.zero_grad()
        model({"input_ids": ids, "labels": ids}).loss.backward()
        optimizer.step()


def test_build_uses_budgetlm_groups_and_schedulefree_defaults():
    model, opt = _build(options={"warmup_steps": 5, "r": 1.0})
    assert isinstance(opt, AdamWScheduleFreeExact)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert decay["betas"] == (0.9, 0.999) and decay["eps"] == 1e-8  # schedulefree's own
    assert (decay["warmup_steps"], decay["r"], decay["weight_lr_power"]) == (5, 1.0, 2.0)
    _, opt = _build(betas=(0.9, 0.95), eps=1e-6)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.param_groups[0]["eps"] == 1e-6
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        _build(options={"warmup_steps": -1})


def test_eval_then_train_gives_the_training_weights_back_bit_for_bit():
    torch.manual_seed(0)
    model, opt = _build()
    _steps(model, opt, 5)
    y = [p.detach().clone() for p in model.parameters()]
    opt.eval()
    assert not all(torch.equal(a, b) for a, b in zip(y, model.parameters(), strict=True))
    assert all(TRAIN_POINT in opt.state[p] for p in model.parameters())
    opt.train()
    assert all(torch.equal(a, b) for a, b in zip(y, model.parameters(), strict=True))
    assert not any(TRAIN_POINT in opt.state[p] for p in model.parameters())
    # The premise: schedulefree's own round trip (two lerps) does not give y back exactly. If
    # this fails, it does, and AdamWScheduleFreeExact is no longer needed.
    torch.manual_seed(0)
    model = build_model(get_shape("gpt-tiny", **KNOBS))
    plain = schedulefree.AdamWScheduleFree(model.parameters(), lr=1e-2)
    _steps(model, plain, 5)
    y = [p.detach().clone() for p in model.parameters()]
    plain.eval()
    plain.train()
    assert not all(torch.equal(a, b) for a, b in zip(y, model.parameters(), strict=True))


def test_it_trains_and_checkpoints_the_evaluation_weights(tiny_config, train):
    trainer, summary, metrics = train(tiny_config("sf", *RUN))
    evals = [m["val_loss"] for m in metrics if m["event"] == "eval"]
    assert summary["status"] == "finished" and evals[-1] < evals[0] - 0.1
    opt, model = trainer.state.optimizer, trainer.state.model
    saved = load_checkpoint(complete_checkpoints(trainer.run_dir / "checkpoints")[-1])
    training = {k: v.clone() for k, v in model.state_dict().items()}  # y: train mode
    opt.eval()
    evaluation = {k: v.clone() for k, v in model.state_dict().items()}  # x
    opt.train()
    for name, value in saved["model"].items():
        assert torch.equal(value, evaluation[name]), name
    assert any(not torch.equal(saved["model"][k], training[k]) for k in training)
    # The optimizer was saved in eval mode with its group state: the step count, the average's
    # weights, the largest lr; and the training point y of every parameter.
    groups = saved["optimizer"]["param_groups"]
    assert {(g["train_mode"], g["k"]) for g in groups} == {(False, 12)}
    assert all(g["weight_sum"] > 0 and g["lr_max"] == pytest.approx(3e-3) for g in groups)
    for i, state in saved["optimizer"]["state"].items():
        p = opt.param_groups[0]["params"] + opt.param_groups[1]["params"]
        assert torch.equal(state[TRAIN_POINT], training[_name(model, p[i])]), i


def _name(model, param):
    return next(n for n, p in model.named_parameters() if p is param)


@pytest.mark.parametrize("stop_after", [5, 6], ids=["between-checkpoints", "at-a-checkpoint"])
def test_resume_in_a_fresh_run_is_bit_exact(stop_after, tiny_config, train, same_state, losses):
    straight, _, straight_metrics = train(tiny_config("straight", *RUN))
    cfg = tiny_config("resumed", *RUN)
    _, first, _ = train(cfg, stop_after=stop_after)
    assert first["status"] == "stopped"
    resumed, summary, metrics = train(cfg, resume="auto")
    assert summary["status"] == "finished"
    same_state(straight, resumed)
    assert losses(metrics) == losses(straight_metrics)
    saved = [load_checkpoint(p) for p in complete_checkpoints(straight.run_dir / "checkpoints")]
    again = [load_checkpoint(p) for p in complete_checkpoints(resumed.run_dir / "checkpoints")]
    for a, b in zip(saved[-1:], again[-1:], strict=True):  # the final checkpoints
        assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.parametrize("method", ["staged", "layer_stacking"])
def test_methods_that_rebuild_optimizer_state_are_refused(method, tiny_config, train):
    cfg = tiny_config("refused", *RUN, f"method={method}")
    with pytest.raises(ConfigError, match=f"cannot be combined with method \\['{method}'\\]"):
        train(cfg)
