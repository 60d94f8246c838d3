"""BERT for masked-LM pre-training, following the cramming recipe (Geiping & Goldstein 2022):
pre-LN, no biases, gated-GELU FFN, sinusoidal positions, a norm on the embeddings, a final norm,
tied embeddings, and vocab logits only at the masked positions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from budgetlm.models.blocks import (
    Block,
    compute_dtype,
    embed_tokens,
    init_gpt_style,
    make_norm,
    padding_bias,
    resolve_active,
)
from budgetlm.models.output import IGNORE_INDEX, ModelOutput, gathered_loss
from budgetlm.models.shapes import ModelShape


class BERT(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        if shape.family != "bert":
            raise ValueError(f"BERT needs a bert shape, got family {shape.family!r}")
        s = self.shape = shape
        self.tok_emb = nn.Embedding(s.vocab_size, s.d_model)
        self.pos_emb = nn.Embedding(s.seq_len, s.d_model) if s.positions == "learned" else None
        self.emb_norm = make_norm(s.norm, s.d_model, s.bias)
        self.drop = nn.Dropout(s.dropout) if s.dropout > 0 else nn.Identity()
        self.encoder = nn.ModuleList(Block(s) for _ in range(s.n_layers))
        self.norm = make_norm(s.norm, s.d_model, s.bias)
        self.lm_head = None if s.tie_embeddings else nn.Linear(s.d_model, s.vocab_size, bias=False)
        init_gpt_style(self, s.n_layers)

    def layer_stacks(self) -> dict[str, nn.ModuleList]:
        return {"encoder": self.encoder}

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        active: Mapping[str, Sequence[int]] | None = None,
    ) -> Tensor:
        """Final-normed encoder states (B, T, d); attention_mask (B, T) 1 = real, 0 = pad."""
        layers = resolve_active(active, self.layer_stacks())["encoder"]
        x, rotary = embed_tokens(
            input_ids, self.tok_emb, self.pos_emb, self.shape.positions, self.shape.d_kv
        )
        x = self.drop(self.emb_norm(x))
        bias = padding_bias(attention_mask)
        bias = None if bias is None else bias.to(compute_dtype(x))
        for i in layers:
            x = self.encoder[i](x, bias=bias, rotary=rotary)
        return self.norm(x)

    def hidden_states(
        self, batch: Mapping[str, Tensor], active: Mapping[str, Sequence[int]] | None = None
    ) -> Tensor:
        return self.encode(batch["input_ids"], batch.get("attention_mask"), active)

    def logits(self, hidden: Tensor) -> Tensor:
        """Vocab logits for hidden states of any leading shape (tied or untied head)."""
        weight = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight)

    def forward(
        self,
        batch: Mapping[str, Tensor],
        active: Mapping[str, Sequence[int]] | None = None,
        return_logits: bool = False,
    ) -> ModelOutput:
        """MLM loss on positions whose label is not -100; logits (n_masked, vocab) if asked.

        Only the masked rows (~15%) go through the vocab projection, which is most of the
        cost of a small BERT's output layer. The gather has a data-dependent size: under
        torch.compile that needs dynamic shapes (capture_dynamic_output_shape_ops) or a graph
        break there.
        """
        labels = batch["labels"]
        batch_size, length = labels.shape
        hidden = self.hidden_states(batch, active).flatten(0, 1)
        flat_labels = labels.flatten()
        rows = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
        logits = self.logits(hidden.index_select(0, rows))
        out = gathered_loss(logits, flat_labels[rows], rows // length, batch_size)
        if return_logits:
            out.logits = logits
        return out
