import math

import pytest
import torch
from torch import nn

from budgetlm.models import get_shape
from budgetlm.models.blocks import (
    MASK_VALUE,
    MLP,
    Attention,
    Block,
    LayerNorm,
    RelativePositionBias,
    RMSNorm,
    apply_rotary,
    causal_bias,
    padding_bias,
    relative_position_bucket,
    resolve_active,
    rotary_cos_sin,
    sinusoidal_positions,
)


def reference_attention(q, k, v, bias=None, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale
    if bias is not None:
        scores = scores + bias
    return scores.softmax(-1) @ v


def split_heads(x, d_kv):
    return x.view(x.shape[0], x.shape[1], -1, d_kv).transpose(1, 2)


def test_rmsnorm_has_no_mean_subtraction():
    norm = RMSNorm(8)
    x = torch.randn(3, 8) + 5.0
    expected = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    torch.testing.assert_close(norm(x), expected)
    assert not torch.allclose(norm(x), nn.functional.layer_norm(x, (8,)), atol=1e-2)
    assert [n for n, _ in norm.named_parameters()] == ["weight"]


def test_layernorm_optional_bias():
    assert LayerNorm(8, bias=False).bias is None
    x = torch.randn(3, 8)
    torch.testing.assert_close(LayerNorm(8)(x), nn.functional.layer_norm(x, (8,)))


@pytest.mark.parametrize(
    "activation, fn",
    [
        ("gelu", lambda g, v: nn.functional.gelu(v, approximate="tanh")),
        ("relu", lambda g, v: torch.relu(v)),
        ("gated-gelu", lambda g, v: nn.functional.gelu(g, approximate="tanh") * v),
        ("swiglu", lambda g, v: nn.functional.silu(g) * v),
    ],
)
def test_mlp_variants(activation, fn):
    mlp = MLP(8, 16, activation, bias=False)
    gated = activation in ("gated-gelu", "swiglu")
    assert (mlp.w_gate is not None) == gated
    n_params = sum(p.numel() for p in mlp.parameters())
    assert n_params == (3 if gated else 2) * 8 * 16
    x = torch.randn(2, 5, 8)
    gate = mlp.w_gate(x) if gated else None
    expected = mlp.w_out(fn(gate, mlp.w_in(x)))
    torch.testing.assert_close(mlp(x), expected)


def test_mlp_rejects_unknown_activation():
    with pytest.raises(ValueError):
        MLP(8, 16, "tanh")


@pytest.mark.parametrize("scale", [None, 1.0])
def test_attention_matches_reference_with_bias(scale):
    torch.manual_seed(0)
    attn = Attention(d_model=12, n_heads=3, d_kv=5, bias=True, scale=scale)  # 3*5 != 12
    x = torch.randn(2, 7, 12)
    bias = torch.randn(1, 3, 7, 7)
    q, k, v = (split_heads(p(x), 5) for p in (attn.q, attn.k, attn.v))
    ref = reference_attention(q, k, v, bias, scale).transpose(1, 2).reshape(2, 7, 15)
    torch.testing.assert_close(attn(x, bias=bias), attn.o(ref))


def test_attention_causal_equals_causal_bias():
    torch.manual_seed(0)
    attn = Attention(16, 4, 4)
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(attn(x, causal=True), attn(x, bias=causal_bias(9)))
    with pytest.raises(ValueError):
        attn(x, causal=True, bias=causal_bias(9))


def test_cross_attention_and_padding():
    torch.manual_seed(0)
    attn = Attention(16, 4, 4)
    x, context = torch.randn(2, 3, 16), torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    out = attn(x, context=context, bias=padding_bias(mask))
    assert out.shape == (2, 3, 16)
    # Padded keys are ignored: same as attending to the 4 real keys only.
    short = attn(x[:1], context=context[:1, :4])
    torch.testing.assert_close(out[:1], short)
    bias = padding_bias(mask)
    assert bias.shape == (2, 1, 1, 6) and bias[0, 0, 0, 5] == MASK_VALUE and bias[1].max() == 0
    # A query whose keys are all masked gives finite numbers, not NaN.
    all_pad = attn(x, context=context, bias=padding_bias(torch.zeros(2, 6, dtype=torch.long)))
    assert torch.isfinite(all_pad).all()


def test_sinusoidal_positions():
    table = sinusoidal_positions(10, 8)
    assert table.shape == (10, 8)
    torch.testing.assert_close(table[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert table[3, 0].item() == pytest.approx(math.sin(3.0))


def test_rotary_depends_only_on_offset():
    torch.manual_seed(0)
    cos, sin = rotary_cos_sin(16, 8)
    q, k = torch.randn(8), torch.randn(8)
    qs = apply_rotary(q.expand(1, 1, 16, 8), cos, sin)[0, 0]
    ks = apply_rotary(k.expand(1, 1, 16, 8), cos, sin)[0, 0]
    # <R_i q, R_j k> depends on i - j only; position 0 is the identity; norms are kept.
    torch.testing.assert_close(qs[5] @ ks[2], qs[10] @ ks[7])
    torch.testing.assert_close(qs[0], q)
    torch.testing.assert_close(qs.norm(dim=-1), q.norm().expand(16))


def test_relative_buckets_known_values():
    offsets = torch.tensor([0, 1, -1, -7, -8, -20, -128, -500, 7, 500])
    bi = relative_position_bucket(offsets, bidirectional=True)
    # 16 buckets per direction, exact below 8, log-spaced up to distance 128.
    assert bi.tolist() == [0, 17, 1, 7, 8, 10, 15, 15, 23, 31]
    causal = relative_position_bucket(offsets, bidirectional=False)
    # 32 buckets looking back, exact below 16; future offsets -> 0.
    assert causal.tolist() == [0, 0, 1, 7, 8, 17, 31, 31, 0, 0]  # 20: 16 + floor(1.72)
    back = relative_position_bucket(-torch.arange(300), bidirectional=False)
    assert (back.diff() >= 0).all() and back.max() == 31


def test_relative_position_bias_shapes():
    rel = RelativePositionBias(n_heads=3, bidirectional=True)
    assert rel(5, 7).shape == (1, 3, 5, 7)
    bias = rel(6, 6)
    # Toeplitz: equal offsets share a value.
    torch.testing.assert_close(bias[0, :, 1, 3], bias[0, :, 2, 4])


def test_block_with_cross_attention():
    shape = get_shape("t5-tiny")
    block = Block(shape, cross_attention=True, attn_scale=1.0)
    x, context = torch.randn(2, 4, shape.d_model), torch.randn(2, 9, shape.d_model)
    y = block(x, bias=causal_bias(4), context=context)
    assert y.shape == x.shape
    assert not torch.allclose(y, block(x, bias=causal_bias(4), context=context * 2))
    plain = Block(get_shape("gpt-tiny"))
    assert plain.cross_attn is None and plain.ln_cross is None


def test_resolve_active():
    stacks = {"encoder": nn.ModuleList(nn.Identity() for _ in range(4))}
    assert resolve_active(None, stacks) == {"encoder": [0, 1, 2, 3]}
    assert resolve_active({"encoder": (1, 3)}, stacks) == {"encoder": [1, 3]}
    assert resolve_active({"encoder": torch.tensor([0, 2]).tolist()}, stacks) == {"encoder": [0, 2]}
    assert resolve_active({"encoder": []}, stacks) == {"encoder": []}
    for bad in ([1, 0], [0, 0], [4], [-1], [True], [0.0], "01"):
        with pytest.raises(ValueError):
            resolve_active({"encoder": bad}, stacks)
    with pytest.raises(ValueError, match="unknown layer stack"):
        resolve_active({"decoder": [0]}, stacks)
