"""GPT: a decoder-only causal LM (GPT-2 layout: pre-LN, GELU MLP, learned positions, tied head)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from budgetlm.models.blocks import Block, embed_tokens, init_gpt_style, make_norm, resolve_active
from budgetlm.models.output import ModelOutput, sequence_loss
from budgetlm.models.shapes import ModelShape


class GPT(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        if shape.family != "gpt":
            raise ValueError(f"GPT needs a gpt shape, got family {shape.family!r}")
        s = self.shape = shape
        self.tok_emb = nn.Embedding(s.vocab_size, s.d_model)
        self.pos_emb = nn.Embedding(s.seq_len, s.d_model) if s.positions == "learned" else None
        self.drop = nn.Dropout(s.dropout) if s.dropout > 0 else nn.Identity()
        self.decoder = nn.ModuleList(Block(s) for _ in range(s.n_layers))
        self.norm = make_norm(s.norm, s.d_model, s.bias)
        self.lm_head = None if s.tie_embeddings else nn.Linear(s.d_model, s.vocab_size, bias=False)
        init_gpt_style(self, s.n_layers)

    def layer_stacks(self) -> dict[str, nn.ModuleList]:
        return {"decoder": self.decoder}

    def hidden_states(
        self, batch: Mapping[str, Tensor], active: Mapping[str, Sequence[int]] | None = None
    ) -> Tensor:
        """Final-normed hidden states (B, T, d)."""
        layers = resolve_active(active, self.layer_stacks())["decoder"]
        x, rotary = embed_tokens(
            batch["input_ids"], self.tok_emb, self.pos_emb, self.shape.positions, self.shape.d_kv
        )
        x = self.drop(x)
        for i in layers:
            x = self.decoder[i](x, causal=True, rotary=rotary)
        return self.norm(x)

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
        """Loss against `labels` (already shifted by the data pipeline; -100 = ignore)."""
        labels = batch["labels"]
        logits = self.logits(self.hidden_states(batch, active))
        out = sequence_loss(logits, labels)
        if return_logits:
            out.logits = logits
        return out
