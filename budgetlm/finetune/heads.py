"""A pre-trained backbone with a task head: what fine-tuning trains and what it predicts.

BERT pools its first position through a dense + tanh layer (as BERT's pooler); GPT takes its
last real position as is. Classification and multiple choice use cross-entropy (a choice's
score is one output), regression mean squared error. T5 keeps its LM head: it is trained on the
label words and predicts by greedy decoding, scored by exact match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from budgetlm.finetune.tasks import MULTIPLE_CHOICE, REGRESSION, TaskSpec


class SequenceClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, spec: TaskSpec, dropout: float = 0.1) -> None:
        super().__init__()
        family = backbone.shape.family
        if family not in ("bert", "gpt"):
            raise ValueError(f"SequenceClassifier is for BERT and GPT, not {family}")
        d = backbone.shape.d_model
        self.backbone, self.spec, self.family = backbone, spec, family
        self.pooler = nn.Sequential(nn.Linear(d, d), nn.Tanh()) if family == "bert" else None
        self.dropout = nn.Dropout(dropout)
        outputs = 1 if spec.kind in (REGRESSION, MULTIPLE_CHOICE) else spec.num_labels
        self.out = nn.Linear(d, outputs)
        nn.init.normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)

    def scores(self, batch: dict[str, Tensor]) -> Tensor:
        if self.family == "bert":
            hidden = self.backbone.encode(batch["input_ids"], batch["attention_mask"])
            pooled = self.pooler(hidden[:, 0])
        else:
            hidden = self.backbone.hidden_states({"input_ids": batch["input_ids"]})
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            pooled = hidden[rows, batch["lengths"] - 1]
        logits = self.out(self.dropout(pooled))
        if self.spec.kind == MULTIPLE_CHOICE:
            return logits.view(batch["labels"].shape[0], -1)  # (B, choices)
        return logits.squeeze(-1) if self.spec.kind == REGRESSION else logits

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        scores = self.scores(batch)
        if self.spec.kind == REGRESSION:
            return F.mse_loss(scores.float(), batch["labels"].float())
        return F.cross_entropy(scores.float(), batch["labels"])

    @torch.no_grad()
    def predict(self, batch: dict[str, Tensor]) -> list[float]:
        scores = self.scores(batch)
        if self.spec.kind == REGRESSION:
            return scores.float().tolist()
        return scores.argmax(-1).tolist()


class TextToText(nn.Module):
    """T5 trained to write the label; predictions are decoded greedily and matched exactly."""

    def __init__(self, backbone: nn.Module, spec: TaskSpec, targets: list[list[int]]) -> None:
        super().__init__()
        self.backbone, self.spec, self.targets = backbone, spec, targets

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        return self.backbone(batch).loss

    @torch.no_grad()
    def generate(self, batch: dict[str, Tensor], max_new: int) -> list[list[int]]:
        model, pad = self.backbone, 0
        encoded = model.encode(batch["input_ids"], batch["attention_mask"])
        out = torch.full((encoded.shape[0], 1), pad, dtype=torch.long, device=encoded.device)
        for _ in range(max_new):  # labels are a few tokens: no cache needed
            hidden = model.decode(out, encoded, batch["attention_mask"])
            nxt = model.logits(hidden[:, -1]).argmax(-1, keepdim=True)
            out = torch.cat([out, nxt], dim=1)
        return [row[1:].tolist() for row in out]

    @torch.no_grad()
    def predict(self, batch: dict[str, Tensor], tokenizer=None) -> list[float]:  # noqa: ANN001
        longest = max(len(t) for t in self.targets) if self.targets else 8
        generated = self.generate(batch, max_new=longest)
        eos = tokenizer.eos_id if tokenizer is not None else 1
        cut = [g[: g.index(eos) + 1] if eos in g else g for g in generated]
        if self.spec.kind == REGRESSION:
            return [_parse_float(tokenizer.decode(g[:-1])) for g in cut]
        return [self.targets.index(g) if g in self.targets else -1 for g in cut]


def _parse_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        return 0.0  # an unreadable answer: the bottom of the scale, not a crash
