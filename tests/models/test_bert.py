import math

import pytest
import torch
import torch.nn.functional as F

from budgetlm.models import BERT, build_model, get_shape

SEQ = 32


def make_batch(shape, batch_size=4, seq=SEQ, seed=0, n_masked=None):
    """Random tokens; labels at ~15% of positions (or exactly `n_masked` per row), else -100."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, shape.vocab_size, (batch_size, seq), generator=g)
    if n_masked is None:
        masked = torch.rand(batch_size, seq, generator=g) < 0.15
        masked[:, 0] = True  # every row has at least one target
    else:
        order = torch.rand(batch_size, seq, generator=g).argsort(1)
        masked = torch.zeros(batch_size, seq, dtype=torch.bool)
        masked.scatter_(1, order[:, :n_masked], True)
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    ids = torch.where(masked, torch.full_like(ids, 4), ids)  # [MASK] = 4
    return {"input_ids": ids, "labels": labels, "example_id": torch.arange(batch_size)}


@pytest.fixture
def shape():
    return get_shape("bert-tiny")


@pytest.fixture
def model(shape):
    torch.manual_seed(0)
    return build_model(shape)


def test_build_and_output(model, shape):
    assert isinstance(model, BERT) and model.shape == shape
    assert list(model.layer_stacks()) == ["encoder"]
    batch = make_batch(shape)
    n_masked = (batch["labels"] != -100).sum().item()
    out = model(batch, return_logits=True)
    assert out.logits.shape == (n_masked, shape.vocab_size)
    assert out.n_targets.item() == n_masked
    assert abs(out.loss.item() - math.log(shape.vocab_size)) < 0.3
    # No biases anywhere (cramming recipe).
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]


def test_logits_only_at_masked_positions(model, shape, monkeypatch):
    batch = make_batch(shape)
    labels = batch["labels"]
    n_masked = (labels != -100).sum().item()
    seen = []
    real_linear = F.linear

    def spy(x, weight, bias=None):
        if weight.shape[0] == shape.vocab_size:
            seen.append(tuple(x.shape))
        return real_linear(x, weight, bias)

    monkeypatch.setattr("budgetlm.models.bert.F.linear", spy)
    out = model(batch)
    assert seen == [(n_masked, shape.d_model)]

    # Reference: full logits at every position, loss over the masked ones.
    monkeypatch.undo()
    full = F.linear(model.hidden_states(batch), model.tok_emb.weight)
    ref = F.cross_entropy(full.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref)
    ref_rows = F.cross_entropy(full.flatten(0, 1), labels.flatten(), reduction="none")
    per_ex = ref_rows.view(labels.shape).sum(1) / (labels != -100).sum(1)
    torch.testing.assert_close(out.per_example_loss, per_ex)


def test_per_example_loss_with_empty_row(model, shape):
    batch = make_batch(shape)
    batch["labels"][1] = -100
    out = model(batch)
    counts = (batch["labels"] != -100).sum(1).float()
    assert out.per_example_loss[1].item() == 0.0
    torch.testing.assert_close((out.per_example_loss * counts).sum() / counts.sum(), out.loss)


def test_attention_mask_hides_padding(model, shape):
    model.eval()
    batch = make_batch(shape, batch_size=2)
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[0, 20:] = 0
    h = model.encode(batch["input_ids"], mask)
    other = batch["input_ids"].clone()
    other[0, 20:] = 7  # change only padded tokens
    h2 = model.encode(other, mask)
    torch.testing.assert_close(h[0, :20], h2[0, :20])
    torch.testing.assert_close(h[1], h2[1])
    # Without the mask the same change leaks into the real positions (bidirectional encoder).
    assert not torch.allclose(model.encode(batch["input_ids"])[0, :20], model.encode(other)[0, :20])
    # An all-ones mask is the same as no mask; the batch key is honoured by forward.
    torch.testing.assert_close(
        model.encode(batch["input_ids"], torch.ones_like(mask)), model.encode(batch["input_ids"])
    )
    masked_loss = model({**batch, "attention_mask": mask}).loss
    assert not torch.allclose(masked_loss, model(batch).loss)


def test_overfit_fixed_batch():
    torch.manual_seed(0)
    shape = get_shape("bert-tiny", n_layers=2, vocab_size=512)  # small vocab: fast steps
    model = build_model(shape)
    batch = make_batch(shape, batch_size=4, seq=16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(batch).loss.item()
    for _ in range(15):
        loss = model(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model(batch).loss.item() < 0.5 * first


def test_active_subsets(model, shape):
    batch = make_batch(shape, batch_size=2)
    full = model(batch).loss
    sub = model(batch, active={"encoder": [1, 3]})
    assert not torch.allclose(full, sub.loss)
    sub.loss.backward()
    for i, block in enumerate(model.encoder):
        has_grad = [p.grad is not None for p in block.parameters()]
        assert all(has_grad) if i in (1, 3) else not any(has_grad)
    h = model.encode(batch["input_ids"], active={"encoder": [0]})
    assert h.shape == (2, SEQ, shape.d_model)


@pytest.mark.parametrize("active", [{"encoder": [3, 0]}, {"encoder": [9]}, {"decoder": [0]}])
def test_invalid_active_raises(model, shape, active):
    with pytest.raises(ValueError):
        model(make_batch(shape, batch_size=1), active=active)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_other_positions(positions):
    shape = get_shape("bert-tiny", positions=positions, n_layers=1)
    model = build_model(shape)
    out = model(make_batch(shape, batch_size=2))
    assert torch.isfinite(out.loss)
