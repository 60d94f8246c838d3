"""Building blocks shared by GPT, BERT and T5: norms, MLPs, attention, positions, one Block.

Conventions that later methods (layer dropping, stacking, growth) rely on:
- sizes are read from weight shapes at run time (heads = q.out_features // d_kv), not from the
  ModelShape, so a growth operator only has to replace weights;
- residual-branch output projections are named `o` (attention) and `w_out` (MLP);
- nothing shared by a whole stack lives inside a Block.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from budgetlm.models.shapes import REL_MAX_DISTANCE, REL_NUM_BUCKETS, ModelShape

# Additive bias for masked-out keys. Finite, so a query whose keys are all masked gets a uniform
# (harmless) distribution instead of NaN; small enough in magnitude to stay finite in bf16.
MASK_VALUE = -1e9


# --------------------------------------------------------------------------------------------
# Norms


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (cramming-style models drop it)."""

    def __init__(self, dim: int, bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """T5's norm: scale by the root mean square, no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # The mean of squares in fp32: in bf16 it loses most of its digits.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


def make_norm(kind: str, dim: int, bias: bool = True) -> nn.Module:
    if kind == "layernorm":
        return LayerNorm(dim, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim)
    raise ValueError(f"unknown norm {kind!r}")


# --------------------------------------------------------------------------------------------
# MLP


def _activation(name: str, x: Tensor) -> Tensor:
    if name in ("gelu", "gated-gelu"):
        # tanh approximation, as GPT-2 and T5 v1.1 ("gelu_new") use.
        return F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu(x)
    if name == "swiglu":
        return F.silu(x)
    raise ValueError(f"unknown activation {name!r}")


class MLP(nn.Module):
    """Position-wise feed-forward: act(w_in x) or, gated, act(w_gate x) * w_in x; then w_out."""

    def __init__(self, d_model: int, d_ff: int, activation: str, bias: bool = True) -> None:
        super().__init__()
        _activation(activation, torch.zeros(1))  # fail early on an unknown name
        self.activation = activation
        self.w_in = nn.Linear(d_model, d_ff, bias=bias)
        gated = activation in ("gated-gelu", "swiglu")
        self.w_gate = nn.Linear(d_model, d_ff, bias=bias) if gated else None
        self.w_out = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.w_gate is None:
            h = _activation(self.activation, self.w_in(x))
        else:
            h = _activation(self.activation, self.w_gate(x)) * self.w_in(x)
        return self.w_out(h)


# --------------------------------------------------------------------------------------------
# Positions


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed (length, dim) table: sines in the first half, cosines in the second."""
    half = dim // 2
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=device) / half)
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def rotary_cos_sin(
    length: int, dim: int, device: torch.device | None = None, base: float = 10000.0
) -> tuple[Tensor, Tensor]:
    """cos and sin tables (length, dim) for rotary embeddings (rotate-half layout).

    Computed on the fly (cheap) rather than kept as buffers, so models built on the meta device
    and materialised later need no special care.
    """
    inv_freq = base ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, T, D) queries or keys by position; cos/sin are (T, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def relative_position_bucket(
    relative_position: Tensor,
    bidirectional: bool,
    num_buckets: int = REL_NUM_BUCKETS,
    max_distance: int = REL_MAX_DISTANCE,
) -> Tensor:
    """T5's bucketing of (key - query) offsets: exact for small offsets, log-spaced up to
    `max_distance`, everything further shares the last bucket. Bidirectional buckets keep the
    sign (half the buckets each way); causal buckets only look back (future offsets -> bucket 0,
    which the causal mask hides anyway)."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    # clamp(min=1) only keeps log() finite; those entries take the exact branch below.
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(
        max_distance / max_exact
    )
    large = (max_exact + log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    """A learned per-head scalar for each bucketed offset; one per stack, shared by its layers."""

    def __init__(
        self,
        n_heads: int,
        bidirectional: bool,
        num_buckets: int = REL_NUM_BUCKETS,
        max_distance: int = REL_MAX_DISTANCE,
    ) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, n_heads)

    def forward(self, q_len: int, k_len: int) -> Tensor:
        """Bias of shape (1, heads, q_len, k_len)."""
        device = self.embedding.weight.device
        offsets = (
            torch.arange(k_len, device=device)[None, :]
            - torch.arange(q_len, device=device)[:, None]
        )
        buckets = relative_position_bucket(
            offsets, self.bidirectional, self.num_buckets, self.max_distance
        )
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)


# --------------------------------------------------------------------------------------------
# Masks


def padding_bias(attention_mask: Tensor | None) -> Tensor | None:
    """(B, T) 1 = real / 0 = pad  ->  additive (B, 1, 1, T) float bias, or None."""
    if attention_mask is None:
        return None
    keep = attention_mask.bool()[:, None, None, :]
    return torch.zeros(keep.shape, device=keep.device).masked_fill(~keep, MASK_VALUE)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype matmuls on `x` will run in: autocast's when it is on for x's device.

    Masks and position biases are cast to it once per stack; otherwise every layer's SDPA call
    would convert a (B, H, T, T) fp32 bias to bf16 again.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def causal_bias(length: int, device: torch.device | None = None) -> Tensor:
    """(length, length) additive bias hiding future keys."""
    future = torch.ones(length, length, device=device, dtype=torch.bool).triu(1)
    return torch.zeros(length, length, device=device).masked_fill(future, MASK_VALUE)


# --------------------------------------------------------------------------------------------
# Attention


class Attention(nn.Module):
    """Multi-head attention on torch SDPA; self-attention, or cross-attention given `context`.

    q, k, v, o are separate projections (not one fused qkv) so that doubling heads is a plain
    block-diagonal copy of each weight.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_kv: int,
        bias: bool = True,
        dropout: float = 0.0,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        inner = n_heads * d_kv
        self.d_kv = d_kv
        self.scale = scale  # None = SDPA's 1/sqrt(d_kv); T5 uses 1.0
        self.dropout = dropout
        self.q = nn.Linear(d_model, inner, bias=bias)
        self.k = nn.Linear(d_model, inner, bias=bias)
        self.v = nn.Linear(d_model, inner, bias=bias)
        self.o = nn.Linear(inner, d_model, bias=bias)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        bias: Tensor | None = None,
        causal: bool = False,
        rotary: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x (B, Tq, d); context (B, Tk, d) for cross-attention; bias broadcastable to
        (B, heads, Tq, Tk), added to the scores. SDPA cannot combine is_causal with a mask, so a
        causal caller with a bias must have put the causal mask into the bias itself."""
        if causal and bias is not None:
            raise ValueError("pass either causal=True or a bias that includes the causal mask")
        source = x if context is None else context
        batch, q_len, _ = x.shape
        k_len = source.shape[1]
        q = self.q(x).view(batch, q_len, -1, self.d_kv).transpose(1, 2)
        k = self.k(source).view(batch, k_len, -1, self.d_kv).transpose(1, 2)
        v = self.v(source).view(batch, k_len, -1, self.d_kv).transpose(1, 2)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=None if bias is None else bias.to(q.dtype),
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
            scale=self.scale,
        )
        return self.o(y.transpose(1, 2).reshape(batch, q_len, -1))


# --------------------------------------------------------------------------------------------
# The transformer block


class Block(nn.Module):
    """Pre-LN block: x + attn(norm(x)) [+ x + cross_attn(norm(x), context)] + x + mlp(norm(x))."""

    def __init__(
        self, shape: ModelShape, cross_attention: bool = False, attn_scale: float | None = None
    ) -> None:
        super().__init__()
        s = shape

        def attention() -> Attention:
            return Attention(s.d_model, s.n_heads, s.d_kv, s.bias, s.dropout, attn_scale)

        self.ln_attn = make_norm(s.norm, s.d_model, s.bias)
        self.attn = attention()
        self.ln_cross = make_norm(s.norm, s.d_model, s.bias) if cross_attention else None
        self.cross_attn = attention() if cross_attention else None
        self.ln_mlp = make_norm(s.norm, s.d_model, s.bias)
        self.mlp = MLP(s.d_model, s.d_ff, s.activation, s.bias)
        self.drop = nn.Dropout(s.dropout) if s.dropout > 0 else nn.Identity()

    def forward(
        self,
        x: Tensor,
        bias: Tensor | None = None,
        causal: bool = False,
        rotary: tuple[Tensor, Tensor] | None = None,
        context: Tensor | None = None,
        context_bias: Tensor | None = None,
    ) -> Tensor:
        x = x + self.drop(self.attn(self.ln_attn(x), bias=bias, causal=causal, rotary=rotary))
        if self.cross_attn is not None:
            x = x + self.drop(self.cross_attn(self.ln_cross(x), context=context, bias=context_bias))
        return x + self.drop(self.mlp(self.ln_mlp(x)))


# --------------------------------------------------------------------------------------------
# Layer stacks: which blocks run


def resolve_active(
    active: Mapping[str, Sequence[int]] | None, stacks: Mapping[str, nn.ModuleList]
) -> dict[str, list[int]]:
    """Block indices to run per stack; missing stack or None = all. Validates strictly."""
    chosen = {name: list(range(len(blocks))) for name, blocks in stacks.items()}
    if active is None:
        return chosen
    for name, indices in active.items():
        if name not in stacks:
            raise ValueError(f"unknown layer stack {name!r}; this model has {list(stacks)}")
        try:
            if any(isinstance(i, bool) for i in indices):
                raise TypeError
            idx = [operator.index(i) for i in indices]  # ints only: no silent 1.7 -> 1
        except TypeError:
            raise ValueError(
                f"active[{name!r}] must be a sequence of ints, got {indices!r}"
            ) from None
        depth = len(stacks[name])
        if any(i < 0 or i >= depth for i in idx):
            raise ValueError(f"active[{name!r}]={idx} has indices outside 0..{depth - 1}")
        if any(b <= a for a, b in zip(idx[:-1], idx[1:], strict=True)):
            raise ValueError(f"active[{name!r}]={idx} must be strictly increasing (no duplicates)")
        chosen[name] = idx
    return chosen


# --------------------------------------------------------------------------------------------
# Initialisation (GPT-2 / BERT style)


@torch.no_grad()
def init_gpt_style(model: nn.Module, n_layers: int, std: float = 0.02) -> None:
    """Normal(0, std) weights, zero biases; residual output projections get std/sqrt(2·n_layers)
    so the residual stream's variance does not grow with depth (GPT-2)."""
    residual_std = std / math.sqrt(2 * n_layers)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name.rsplit(".", 1)[-1]
            nn.init.normal_(module.weight, 0.0, residual_std if last in ("o", "w_out") else std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)


# --------------------------------------------------------------------------------------------
# Embeddings for GPT / BERT (T5 has no absolute positions)


def embed_tokens(
    input_ids: Tensor,
    tok_emb: nn.Embedding,
    pos_emb: nn.Embedding | None,
    positions: str,
    d_kv: int,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """Token embeddings plus absolute positions; also returns rotary tables when used."""
    length = input_ids.shape[1]
    x = tok_emb(input_ids)
    device = input_ids.device
    if positions == "learned":
        # Indexing (not slicing) so a sequence longer than the table fails loudly.
        x = x + pos_emb(torch.arange(length, device=device))
    elif positions == "sinusoidal":
        x = x + sinusoidal_positions(length, x.shape[-1], device).to(x.dtype)
    rotary = rotary_cos_sin(length, d_kv, device) if positions == "rotary" else None
    return x, rotary
