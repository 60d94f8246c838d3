import argparse
import json
import warnings

import pytest
import torch

from budgetlm.methods.growth import (
    ScheduleTransfer,
    build_grown_optimizer,
    deepen_shape,
    depth_sources,
    grow_depth,
    grow_width,
    moment_order,
    named_optimizer_state,
    widen_shape,
)
from budgetlm.models import count_params, forward_flops
from budgetlm.optim import build_optimizer
from budgetlm.schedules import make_schedule
from budgetlm.train.evaluate import heldout_loss

from .arch_helpers import (
    StepLog,
    losses,
    one_thread,  # noqa: F401 - autouse fixture: one thread
    run,
    same_state,
    tiny_batch,
    tiny_config,
    tiny_model,
)

CPU = torch.device("cpu")


def _heldout(model, trainer):
    return heldout_loss(model, trainer.eval_batches, CPU)["val_loss"]


@pytest.mark.parametrize(
    ("family", "knobs"),
    [("gpt", []), ("bert", ["model.positions=learned"]), ("t5", [])],
)
def test_width_growth_preserves_heldout_loss(family, knobs, tmp_path):
    cfg = tiny_config(family, tmp_path / "run", "budget=8steps", "train.eval_every=0", *knobs)
    trainer, *_ = run(cfg, stop_after=4)  # trained weights, not an initialisation
    model = trainer.state.model
    before = _heldout(model, trainer)
    grown = grow_width(model, trainer.state.optimizer)
    assert grown.shape == widen_shape(model.shape)
    assert grown.shape.d_model == 2 * model.shape.d_model and grown.shape.d_kv == model.shape.d_kv
    assert sum(p.numel() for p in grown.model.parameters()) == count_params(grown.shape)
    after = _heldout(grown.model, trainer)
    assert abs(after - before) < 1e-5, (before, after)


def test_width_growth_warns_that_sinusoidal_positions_are_not_preserved():
    model = tiny_model("bert")  # the BERT presets use sinusoidal positions
    batch = tiny_batch(model)
    with pytest.warns(UserWarning, match="sinusoidal"):
        grown = grow_width(model)
    model.eval(), grown.model.eval()
    assert abs(float(model(batch).loss.detach()) - float(grown.model(batch).loss.detach())) > 1e-4


def _one_step_moments(model, batch):
    """AdamW with lr 0 and betas (0, 0): after one step m = g and v = g^2 and weights stay."""
    opt = build_optimizer("adamw", model, lr=0.0, betas=(0.0, 0.0), eps=1e-8, weight_decay=0.1)
    model.zero_grad()
    model(batch).loss.backward()
    opt.step()
    return opt


@pytest.mark.parametrize(
    ("family", "knobs"),
    [("gpt", {}), ("bert", {"positions": "learned"}), ("t5", {}), ("t5", {"tie_embeddings": True})],
)
def test_width_moments_equal_the_grown_models_own_moments(family, knobs):
    """The moment transform is what the optimizer itself produces on the grown model.

    With betas (0, 0) Adam's moments after one step are exactly g and g^2 of that step's batch,
    and lr 0 leaves the weights unchanged. So: one such step on the small model, transform its
    moments with the growth operator, then one such step on the grown model (fresh optimizer,
    same batch). Where the operator claims a correspondence (every entry of a tiled tensor, the
    diagonal blocks of block-diagonal weights) the two must agree. Off-diagonal blocks are set
    to zero by choice (the paper's), although the grown model's gradient there is g/2: asserted
    too, so the documented difference cannot silently change.
    """
    model = tiny_model(family, **knobs)
    batch = tiny_batch(model)
    opt = _one_step_moments(model, batch)
    grown = grow_width(model, opt)
    transformed = grown.optimizer_state
    reference = named_optimizer_state(grown.model, _one_step_moments(grown.model, batch))
    assert transformed.keys() == reference.keys()
    scale = max(float(s["exp_avg"].abs().max()) for s in reference.values())
    block_diagonal = {
        f"{n}.weight"
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n != "lm_head"
    }
    checked_off_diagonal = False
    for name, ref in reference.items():
        got = transformed[name]
        assert torch.equal(got["step"], ref["step"])
        small = dict(model.named_parameters())[name]
        mask = torch.ones_like(ref["exp_avg"], dtype=torch.bool)
        if name in block_diagonal:
            mask = torch.block_diag(*[torch.ones_like(small, dtype=torch.bool)] * 2)
            assert torch.all(got["exp_avg"][~mask] == 0) and torch.all(
                got["exp_avg_sq"][~mask] == 0
            )
            off = ref["exp_avg"][~mask].abs().max()
            checked_off_diagonal |= bool(off > 1e-3 * scale)
        for key, tol in (("exp_avg", 1e-5 * scale), ("exp_avg_sq", 1e-5 * scale**2)):
            torch.testing.assert_close(got[key][mask], ref[key][mask], rtol=1e-4, atol=tol)
    assert checked_off_diagonal  # the grown model does have gradients off the diagonal


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
@pytest.mark.parametrize("mode", ["interleave", "append"])
def test_identity_depth_growth_preserves_loss_and_copy_does_not(family, mode):
    model = tiny_model(family)
    batch = tiny_batch(model)
    model.eval()
    before = float(model(batch).loss.detach())
    identity = grow_depth(model, mode=mode, variant="identity")
    copy = grow_depth(model, mode=mode, variant="copy")
    assert identity.shape == deepen_shape(model.shape)
    for stack, blocks in identity.model.layer_stacks().items():
        assert len(blocks) == 2 * len(model.layer_stacks()[stack])
    identity.model.eval(), copy.model.eval()
    assert abs(float(identity.model(batch).loss.detach()) - before) < 1e-5
    # Copies apply each block twice in a residual network: the function changes (documented).
    assert abs(float(copy.model(batch).loss.detach()) - before) > 1e-4


def test_depth_sources():
    assert depth_sources(3, 2, "interleave") == [
        (0, False), (0, True), (1, False), (1, True), (2, False), (2, True)
    ]  # fmt: skip
    assert depth_sources(2, 2, "append") == [(0, False), (1, False), (0, True), (1, True)]


@pytest.mark.parametrize("variant", ["identity", "copy"])
def test_depth_growth_moments(variant):
    model = tiny_model("t5")
    batch = tiny_batch(model)
    opt = _one_step_moments(model, batch)
    grown = grow_depth(model, opt, variant=variant)
    old = named_optimizer_state(model, opt)
    for stack in ("encoder", "decoder"):
        for j, (src, new) in enumerate(depth_sources(2, 2, "interleave")):
            for rest in ("attn.q.weight", "mlp.w_out.weight"):
                name, source = f"{stack}.{j}.{rest}", f"{stack}.{src}.{rest}"
                if new and variant == "identity":
                    assert name not in grown.optimizer_state  # fresh state for a new function
                else:
                    for key, value in old[source].items():
                        assert torch.equal(grown.optimizer_state[name][key], value)
    if variant == "identity":
        # The old blocks' moments are also what the grown model produces itself: the identity
        # blocks pass gradients through unchanged.
        reference = named_optimizer_state(grown.model, _one_step_moments(grown.model, batch))
        for name, state in grown.optimizer_state.items():
            torch.testing.assert_close(state["exp_avg"], reference[name]["exp_avg"])


def test_moment_order_by_state_name():
    assert [moment_order(k) for k in ("exp_avg", "momentum_buffer", "exp_avg_sq")] == [1, 1, 2]
    assert [moment_order(k) for k in ("max_exp_avg_sq", "hessian", "square_avg")] == [2, 2, 2]


def test_schedule_transfer_enters_the_target_schedule_at_s_grow():
    schedule = make_schedule("warmup_linear", 1e-3, warmup=0.05, final=1e-5)
    t = ScheduleTransfer()
    assert t.lr(0.3, schedule) == schedule(0.3)  # before any growth: the schedule itself
    t.grew(0.4, c=1.81, rewarmup=0.0)
    # Right at the growth: the target schedule at S_grow = S_before / c.
    assert t.position(0.4) == pytest.approx(0.4 / 1.81)
    assert t.lr(0.4, schedule) == pytest.approx(schedule(0.4 / 1.81))
    assert t.lr(1.0, schedule) == schedule.final  # and still the final value at p = 1
    # With a re-warm-up the lr ramps from 0 and reaches the target schedule when it ends.
    w = ScheduleTransfer()
    w.grew(0.4, c=1.81, rewarmup=0.1)
    assert w.lr(0.45, schedule) == pytest.approx(0.5 * schedule(w.position(0.45)))
    assert w.lr(0.5, schedule) == pytest.approx(schedule(w.position(0.5)))
    assert w.lr(1.0, schedule) == schedule.final
    # A second growth composes: re-enter at the current position / c.
    q = w.position(0.7)
    w.grew(0.7, c=1.43, rewarmup=0.0)
    assert w.position(0.7) == pytest.approx(q / 1.43) and w.position(1.0) == 1.0


STAGED = [
    "budget=12steps",
    "method=staged",
    "methods.staged.grow=width@0.5",
    "methods.staged.rewarmup=0.25",
    "train.eval_every=0.5",
    "train.checkpoint_every=0",
    "model.positions=learned",
]


def test_staged_run_grows_at_half_budget_and_charges_the_grown_shape(tmp_path):
    log = StepLog()
    cfg = tiny_config("gpt", tmp_path / "run", *STAGED)
    trainer, summary, metrics = run(cfg, [log])
    assert summary["status"] == "finished"
    small = log.steps[0]["shape"]
    big = trainer.state.model.shape
    assert big == widen_shape(small)
    assert [s["shape"] for s in log.steps] == [small] * 6 + [big] * 6  # p = 0.5 after step 6
    batch = cfg.train.batch_size
    charged = 6 * 3 * forward_flops(small, batch) + 6 * 3 * forward_flops(big, batch)
    assert trainer.state.clock.spent["flops"] == pytest.approx(charged, rel=1e-12)
    # The optimizer is a new one, over the grown model's parameters.
    opt_params = {id(p) for g in trainer.state.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in trainer.state.model.parameters()}
    # ... holding the transformed state: Adam's step count runs on through the growth.
    tok_emb = trainer.state.model.tok_emb.weight
    assert float(trainer.state.optimizer.state[tok_emb]["step"]) == 12
    # LR: the target schedule from S_grow = 0.5 / 1.81, stretched to end at 1, re-warmed.
    lrs = {m["step"]: m["lr"] for m in metrics if m["event"] == "train"}
    schedule = trainer.schedule
    p_grow = 0.5  # a steps budget: progress is steps / 12, the growth ran after step 6
    assert lrs[6] == schedule(6 / 12)  # before: the run's own schedule

    def expected(p):
        q = p_grow / 1.81 + (p - p_grow) * (1 - p_grow / 1.81) / (1 - p_grow)
        return min(1.0, (p - p_grow) / 0.25) * schedule(q)

    for step in (7, 8, 9, 10, 11, 12):
        assert lrs[step] == pytest.approx(expected(step / 12), rel=1e-12), step
    assert lrs[12] == schedule.final
    # The checkpoint records the grown shape (resume rebuilds the model at it).
    ckpt = sorted((trainer.run_dir / "checkpoints").iterdir())[-1]
    trainer_json = json.loads((ckpt / "trainer.json").read_text())
    assert trainer_json["__dict__"]["shape"]["__dict__"]["d_model"] == big.d_model


@pytest.mark.parametrize("stop", [5, 6, 7])  # just before, at and just after the growth
def test_staged_resume_around_the_growth_is_bit_exact(stop, tmp_path):
    args = [*STAGED, "model.dropout=0.1"]
    straight, _, straight_metrics = run(tiny_config("gpt", tmp_path / "a", *args))
    run(tiny_config("gpt", tmp_path / "b", *args), stop_after=stop)
    resumed, summary, metrics = run(tiny_config("gpt", tmp_path / "b", *args), resume="auto")
    assert summary["status"] == "finished"
    assert resumed.state.model.shape == straight.state.model.shape
    same_state(straight, resumed)
    assert losses(metrics) == losses(straight_metrics)


def test_staged_depth_growth_on_t5_with_adamw_rms(tmp_path):
    log = StepLog()
    cfg = tiny_config(
        "t5",
        tmp_path / "run",
        "budget=8steps",
        "method=staged",
        "methods.staged.grow=depth@0.25",
        "methods.staged.mode=append",
        "train.eval_every=0",
    )
    trainer, summary, metrics = run(cfg, [log])
    assert summary["status"] == "finished" and cfg.optim.name == "adamw_rms"
    assert (
        trainer.state.model.shape.n_layers == 4 and trainer.state.model.shape.n_decoder_layers == 4
    )
    assert [len(s["active"]["decoder"]) for s in log.steps] == [2, 2] + [4] * 6
    assert all(m["loss"] == m["loss"] for m in metrics if m["event"] == "train")  # no NaN


def test_staged_options_are_validated(tmp_path):
    from budgetlm.config import ConfigError
    from budgetlm.train.session import open_run

    for bad in (
        "methods.staged.grow=height@0.5",
        "methods.staged.grow=width@0.6,depth@0.3",
        "methods.staged.grow=width",  # no point without trigger=slope
        "methods.staged.variant=zero",
    ):
        cfg = tiny_config("gpt", tmp_path / "run", "method=staged", bad)
        with pytest.raises((ConfigError, ValueError)):
            open_run(cfg, progress=False)


def test_grow_command_grows_a_checkpoint_that_resumes(tmp_path, capsys):
    from budgetlm.growth_cli import register
    from budgetlm.train.session import evaluate_checkpoint

    args = ["budget=8steps", "train.eval_every=0", "model.positions=learned"]
    cfg = tiny_config("bert", tmp_path / "run", *args)
    run(cfg, stop_after=4)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "grown"
    ns = parser.parse_args(["grow", str(tmp_path / "run"), "--width", "2", "--out", str(out)])
    assert ns.func(ns) == 0
    assert "continue with: budgetlm train" in capsys.readouterr().out
    before = evaluate_checkpoint(tmp_path / "run")["val_loss"]
    after = evaluate_checkpoint(out)["val_loss"]  # built at the grown shape it records
    assert abs(after - before) < 1e-5
    # The grown run resumes at the grown shape and finishes the same budget.
    from budgetlm.config import load_config

    trainer, summary, _ = run(load_config(out / "config.yaml"), resume="auto")
    assert summary["status"] == "finished" and summary["steps"] == 8
    assert trainer.state.model.shape.d_model == 2 * cfg.model.d_model
    with pytest.raises(SystemExit):
        parser.parse_args(["grow", str(out), "--width", "2", "--depth", "2"])


def test_build_grown_optimizer_installs_the_transformed_state():
    model = tiny_model("gpt")
    opt = _one_step_moments(model, tiny_batch(model))
    grown = grow_width(model, opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = build_grown_optimizer(
            grown,
            lambda m: build_optimizer(
                "adamw", m, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0
            ),
        )
    state = named_optimizer_state(grown.model, new)
    assert state.keys() == grown.optimizer_state.keys()
    # ... and it trains: one real step moves the weights.
    before = [p.detach().clone() for p in grown.model.parameters()]
    grown.model(tiny_batch(grown.model)).loss.backward()
    new.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, grown.model.parameters(), strict=True))


@pytest.mark.parametrize("name", ["adamw", "adamw_rms", "lion", "sophia", "muon"])
def test_every_optimizers_state_is_transformed_and_keeps_training(name):
    from budgetlm.optim import OPTIMIZERS

    if name not in OPTIMIZERS:
        pytest.skip(f"optimizer {name} is not registered")

    def make(model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Sophia warns about non-paper betas
            return build_optimizer(
                name, model, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0
            )

    model = tiny_model("gpt")
    batch = tiny_batch(model)
    try:
        opt = make(model)
    except ValueError as e:
        pytest.skip(str(e))
    model(batch).loss.backward()
    opt.step()
    grown = grow_width(model, opt)
    name_w = "decoder.0.mlp.w_in.weight"
    old = named_optimizer_state(model, opt)[name_w]
    new = grown.optimizer_state[name_w]
    rows, cols = dict(model.named_parameters())[name_w].shape
    for key, value in old.items():
        if value.ndim == 0:
            assert torch.equal(new[key], value)  # step counters carry on
            continue
        factor = 0.25 if moment_order(key) == 2 else 0.5
        torch.testing.assert_close(new[key][rows:, cols:], value * factor)
        assert torch.all(new[key][:rows, cols:] == 0)
    optimizer = build_grown_optimizer(grown, make)
    grown.model(batch).loss.backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in grown.model.parameters())
