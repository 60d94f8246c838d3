import pytest
import torch

from budgetlm.models import GPT, build_model, get_shape

SEQ = 32  # shorter than the preset's 128: the tests only need a few positions


def make_batch(shape, batch_size=4, seq=SEQ, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, shape.vocab_size, (batch_size, seq + 1), generator=g)
    return {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:], "example_id": torch.arange(4)}


@pytest.fixture
def shape():
    return get_shape("gpt-tiny")


@pytest.fixture
def model(shape):
    torch.manual_seed(0)
    return build_model(shape)


def test_build_and_output(model, shape):
    assert isinstance(model, GPT) and model.shape == shape
    batch = make_batch(shape)
    out = model(batch, return_logits=True)
    assert out.logits.shape == (4, SEQ, shape.vocab_size)
    assert out.loss.shape == () and out.per_example_loss.shape == (4,)
    assert out.n_targets.dtype == torch.long and out.n_targets.item() == 4 * SEQ
    # Random init: loss near log(vocab).
    assert abs(out.loss.item() - torch.log(torch.tensor(shape.vocab_size * 1.0)).item()) < 0.3
    assert model(batch).logits is None
    stacks = model.layer_stacks()
    assert list(stacks) == ["decoder"] and len(stacks["decoder"]) == shape.n_layers


def test_loss_matches_reference_and_per_example(model, shape):
    batch = make_batch(shape)
    labels = batch["labels"].clone()
    labels[0, 5:] = -100  # example 0 has 5 targets
    labels[2, :] = -100  # example 2 has none
    batch["labels"] = labels
    out = model(batch, return_logits=True)
    ref = torch.nn.functional.cross_entropy(
        out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, ref)
    counts = (labels != -100).sum(1).float()
    assert out.n_targets.item() == counts.sum().item()
    assert out.per_example_loss[2].item() == 0.0
    torch.testing.assert_close((out.per_example_loss * counts).sum() / counts.sum(), out.loss)
    ref0 = torch.nn.functional.cross_entropy(out.logits[0, :5], labels[0, :5])
    torch.testing.assert_close(out.per_example_loss[0], ref0)


@pytest.mark.parametrize("positions", ["learned", "rotary", "sinusoidal"])
def test_causal(positions):
    shape = get_shape("gpt-tiny", positions=positions, n_layers=2)
    model = build_model(shape).eval()
    batch = make_batch(shape, batch_size=2)
    before = model(batch, return_logits=True).logits
    batch["input_ids"] = batch["input_ids"].clone()
    batch["input_ids"][:, 20] = (batch["input_ids"][:, 20] + 1) % shape.vocab_size
    after = model(batch, return_logits=True).logits
    torch.testing.assert_close(before[:, :20], after[:, :20])
    assert not torch.allclose(before[:, 20:], after[:, 20:])


def test_untied_head_and_init():
    shape = get_shape("gpt-tiny", tie_embeddings=False)
    model = build_model(shape)
    assert model.lm_head is not None
    assert model.lm_head.weight.data_ptr() != model.tok_emb.weight.data_ptr()
    tied = build_model(get_shape("gpt-tiny"))
    assert tied.lm_head is None
    # Residual projections get the smaller std 0.02 / sqrt(2 * n_layers).
    assert tied.decoder[0].attn.q.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert tied.decoder[0].mlp.w_out.weight.std().item() == pytest.approx(
        0.02 / (2 * shape.n_layers) ** 0.5, rel=0.1
    )


def test_overfit_fixed_batch():
    torch.manual_seed(0)
    shape = get_shape("gpt-tiny", n_layers=2, vocab_size=512)  # small vocab: fast steps
    model = build_model(shape)
    batch = make_batch(shape, batch_size=2, seq=16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        loss = model(batch).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_active_subsets(model, shape):
    batch = make_batch(shape, batch_size=2)
    full = model(batch).loss
    same = model(batch, active={"decoder": [0, 1, 2, 3]}).loss
    torch.testing.assert_close(full, same)
    sub = model(batch, active={"decoder": [0, 2]})
    assert not torch.allclose(full, sub.loss)
    sub.loss.backward()
    for i, block in enumerate(model.decoder):
        grads = [p.grad for p in block.parameters()]
        if i in (0, 2):
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads)
    assert model.tok_emb.weight.grad is not None and model.norm.weight.grad is not None
    # No blocks at all still runs (embeddings -> final norm -> head).
    assert torch.isfinite(model(batch, active={"decoder": []}).loss)


@pytest.mark.parametrize(
    "active",
    [
        {"decoder": [2, 1]},
        {"decoder": [1, 1]},
        {"decoder": [4]},
        {"decoder": [-1]},
        {"encoder": [0]},
        {"decoder": [0.5]},
    ],
)
def test_invalid_active_raises(model, shape, active):
    with pytest.raises(ValueError):
        model(make_batch(shape, batch_size=1), active=active)


def test_hidden_states(model, shape):
    batch = make_batch(shape, batch_size=2)
    h = model.hidden_states(batch)
    assert h.shape == (2, SEQ, shape.d_model)
    # Final-normed: per-position mean ~0 and std ~1 for LayerNorm with unit weight.
    assert h.mean(-1).abs().max() < 1e-4
    h2 = model.hidden_states(batch, active={"decoder": [1]})
    assert not torch.allclose(h, h2)


def test_builds_on_meta():
    with torch.device("meta"):
        model = build_model(get_shape("gpt2-small"))
    assert next(model.parameters()).is_meta
