"""The growth operators: loss, moments and optimizer state (growth_operators.py)."""

import warnings

import pytest
import torch

from budgetlm.methods.growth_operators import (
    build_grown_optimizer,
    deepen_shape,
    depth_sources,
    grow_depth,
    grow_width,
    moment_order,
    named_optimizer_state,
    widen_shape,
)
from budgetlm.models import count_params
from budgetlm.optim import build_optimizer
from budgetlm.train.evaluate import heldout_loss

from .arch_helpers import (
    one_thread,  # noqa: F401 - autouse fixture: one thread
    run,
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


def _adamw(model):
    return build_optimizer("adamw", model, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_growth_keeps_the_models_dtype_and_the_next_step_runs(dtype):
    """A float64 (or bf16) model grows into one of the same dtype and device, whose optimizer
    state (transformed from the source's) matches it: the next step runs. Width and identity
    depth growth preserve the loss to the dtype's precision: for float64 the logits to 1e-12 and
    the loss, computed in float64 from them, too (the model's own loss is taken in float32)."""
    model = tiny_model("gpt").to(dtype)
    batch = tiny_batch(model)
    opt = _adamw(model)
    model(batch).loss.backward()
    opt.step()
    model.zero_grad()
    model.eval()

    def loss_and_logits(m):
        logits = m(batch, return_logits=True).logits.detach()
        flat = logits.flatten(0, 1).double()  # as sequence_loss, but in float64
        return float(torch.nn.functional.cross_entropy(flat, batch["labels"].flatten())), logits

    before, logits_before = loss_and_logits(model)
    grown = grow_depth(grow_width(model, opt).model, None)  # width, then depth on the result
    wide = grow_width(model, opt)
    deep = grow_depth(wide.model, build_grown_optimizer(wide, _adamw), variant="identity")
    for g in (wide, deep, grown):
        tensors = [
            *g.model.parameters(),
            *(t for s in g.optimizer_state.values() for t in s.values() if t.ndim > 0),
        ]
        assert {t.dtype for t in tensors} == {dtype}
        assert {t.device for t in tensors} == {CPU}
        g.model.eval()
        after, logits = loss_and_logits(g.model)
        assert logits.dtype == dtype
        tol = 1e-12 if dtype == torch.float64 else 5e-2
        assert abs(after - before) < tol, (dtype, before, after)
        assert float((logits.double() - logits_before.double()).abs().max()) < tol * 10
    # The next optimizer step runs on the grown model with its transformed state.
    optimizer = build_grown_optimizer(deep, _adamw)
    deep.model.train()
    deep.model(batch).loss.backward()
    optimizer.step()
    assert all(p.dtype == dtype and torch.isfinite(p).all() for p in deep.model.parameters())
    state = named_optimizer_state(deep.model, optimizer)
    assert {s["exp_avg"].dtype for s in state.values()} == {dtype}
