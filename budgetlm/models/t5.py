"""T5 encoder-decoder (v1.1 layout by default, as in nanoT5): RMSNorm, no biases, relative position
bias computed once per stack, no q·k scaling, gated-GELU (or ReLU for the Scale Efficiently / T5
v1.0 shapes), untied lm_head. The data pipeline supplies decoder_input_ids already shifted right."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from budgetlm.models.blocks import (
    Attention,
    Block,
    RelativePositionBias,
    causal_bias,
    compute_dtype,
    make_norm,
    padding_bias,
    resolve_active,
)
from budgetlm.models.output import ModelOutput, sequence_loss
from budgetlm.models.shapes import ModelShape


class T5(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        if shape.family != "t5":
            raise ValueError(f"T5 needs a t5 shape, got family {shape.family!r}")
        s = self.shape = shape
        # One token embedding shared by encoder and decoder inputs (also in "untied" T5 v1.1,
        # where only the output head is separate).
        self.tok_emb = nn.Embedding(s.vocab_size, s.d_model)
        self.drop = nn.Dropout(s.dropout) if s.dropout > 0 else nn.Identity()
        # Stack-level, not inside block 0: dropping or copying blocks must keep them.
        self.encoder_bias = RelativePositionBias(s.n_heads, bidirectional=True)
        self.decoder_bias = RelativePositionBias(s.n_heads, bidirectional=False)
        # scale=1.0: T5 does not divide q·k by sqrt(d_kv); the q init below absorbs it.
        self.encoder = nn.ModuleList(Block(s, attn_scale=1.0) for _ in range(s.n_layers))
        self.decoder = nn.ModuleList(
            Block(s, cross_attention=True, attn_scale=1.0) for _ in range(s.n_decoder_layers)
        )
        self.encoder_norm = make_norm(s.norm, s.d_model, s.bias)
        self.decoder_norm = make_norm(s.norm, s.d_model, s.bias)
        self.lm_head = None if s.tie_embeddings else nn.Linear(s.d_model, s.vocab_size, bias=False)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Mesh-TensorFlow T5 init: each matrix scaled by its fan-in, embeddings std 1."""
        s = self.shape
        nn.init.normal_(self.tok_emb.weight, 0.0, 1.0)
        for rel in (self.encoder_bias, self.decoder_bias):
            nn.init.normal_(rel.embedding.weight, 0.0, s.d_model**-0.5)
        if self.lm_head is not None:
            # d_model**-0.5 keeps initial logits O(1). nanoT5 (via Hugging Face) used std 1.0
            # here by mistake, which makes the initial logits ~sqrt(d_model) too large.
            nn.init.normal_(self.lm_head.weight, 0.0, s.d_model**-0.5)
        for module in self.modules():
            if isinstance(module, Attention):
                inner = module.q.out_features
                nn.init.normal_(module.q.weight, 0.0, (s.d_model * module.d_kv) ** -0.5)
                nn.init.normal_(module.k.weight, 0.0, s.d_model**-0.5)
                nn.init.normal_(module.v.weight, 0.0, s.d_model**-0.5)
                nn.init.normal_(module.o.weight, 0.0, inner**-0.5)
            elif isinstance(module, Block):
                for proj in (module.mlp.w_in, module.mlp.w_gate):
                    if proj is not None:
                        nn.init.normal_(proj.weight, 0.0, s.d_model**-0.5)
                nn.init.normal_(module.mlp.w_out.weight, 0.0, s.d_ff**-0.5)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def layer_stacks(self) -> dict[str, nn.ModuleList]:
        return {"encoder": self.encoder, "decoder": self.decoder}

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        active: Mapping[str, Sequence[int]] | None = None,
    ) -> Tensor:
        """Final-normed encoder states (B, Ti, d); attention_mask (B, Ti) 1 = real, 0 = pad."""
        layers = resolve_active(active, self.layer_stacks())["encoder"]
        length = input_ids.shape[1]
        x = self.drop(self.tok_emb(input_ids))
        bias = self.encoder_bias(length, length)  # (1, H, Ti, Ti), once for all layers
        pad = padding_bias(attention_mask)
        if pad is not None:
            bias = bias + pad
        bias = bias.to(compute_dtype(x))
        for i in layers:
            x = self.encoder[i](x, bias=bias)
        return self.drop(self.encoder_norm(x))

    def decode(
        self,
        decoder_input_ids: Tensor,
        encoded: Tensor,
        attention_mask: Tensor | None = None,
        active: Mapping[str, Sequence[int]] | None = None,
    ) -> Tensor:
        """Final-normed decoder states (B, To, d) attending to `encoded` (B, Ti, d)."""
        layers = resolve_active(active, self.layer_stacks())["decoder"]
        length = decoder_input_ids.shape[1]
        x = self.drop(self.tok_emb(decoder_input_ids))
        # SDPA takes is_causal or a mask, not both: fold the causal mask into the bias.
        bias = self.decoder_bias(length, length) + causal_bias(length, x.device)
        bias = bias.to(compute_dtype(x))
        cross_bias = padding_bias(attention_mask)  # cross-attention has no position bias
        cross_bias = None if cross_bias is None else cross_bias.to(bias.dtype)
        for i in layers:
            x = self.decoder[i](x, bias=bias, context=encoded, context_bias=cross_bias)
        return self.drop(self.decoder_norm(x))

    def hidden_states(
        self, batch: Mapping[str, Tensor], active: Mapping[str, Sequence[int]] | None = None
    ) -> Tensor:
        mask = batch.get("attention_mask")
        encoded = self.encode(batch["input_ids"], mask, active)
        return self.decode(batch["decoder_input_ids"], encoded, mask, active)

    def logits(self, hidden: Tensor) -> Tensor:
        """Vocab logits for decoder hidden states of any leading shape."""
        if self.lm_head is None:
            # Tied T5 (v1.0, Scale Efficiently) rescales before the shared embedding matrix,
            # whose entries have std 1.
            return F.linear(hidden * hidden.shape[-1] ** -0.5, self.tok_emb.weight)
        return self.lm_head(hidden)

    def forward(
        self,
        batch: Mapping[str, Tensor],
        active: Mapping[str, Sequence[int]] | None = None,
        return_logits: bool = False,
    ) -> ModelOutput:
        labels = batch["labels"]
        logits = self.logits(self.hidden_states(batch, active))
        out = sequence_loss(logits, labels)
        if return_logits:
            out.logits = logits
        return out
