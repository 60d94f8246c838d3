"""Turn task examples into model inputs, the way each family was pre-trained to read text.

- BERT: `[CLS] a [SEP] b [SEP]`, padded with [PAD], classified from the first position.
- GPT: `a <|endoftext|> b <|endoftext|>`, classified from the last real position (the only one
  that has seen the whole input under causal attention).
- T5: `task: a | b </s>` -> the label word then `</s>` (text to text), decoded greedily.
- Multiple choice (BERT/GPT): one sequence per choice, `a` then the choice as its second text.
Both texts are cut longest-first to fit `max_length`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from budgetlm.data.tokenizer import Tokenizer
from budgetlm.finetune.tasks import MULTIPLE_CHOICE, REGRESSION, Example, TaskSpec


def truncate_pair(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int], list[int]]:
    """Cut the longer of the two until both fit in `budget` tokens."""
    a, b = list(a), list(b or [])
    while len(a) + len(b) > budget:
        if len(a) >= len(b):
            a.pop()
        else:
            b.pop()
    return a, b


def regression_text(value: float) -> str:
    """T5's STS-B rendering: the score rounded to a multiple of 0.2, one decimal."""
    return f"{round(float(value) * 5) / 5:.1f}"


@dataclass
class Encoder:
    family: str
    tokenizer: Tokenizer
    spec: TaskSpec
    max_length: int

    def __post_init__(self) -> None:
        tok = self.tokenizer
        if self.family == "bert":
            self.pad_id = tok.pad_id
        elif self.family == "gpt":
            self.pad_id = tok.eos_id  # padding sits after the pooled position: never attended
        else:
            self.pad_id = tok.pad_id
        self._prefix = (
            tok.encode(f"{self.spec.name.split('/')[-1]}:") if self.family == "t5" else []
        )
        self._bar = tok.encode(" |") if self.family == "t5" else []
        self.targets = (
            [tok.encode(word) + [tok.eos_id] for word in self.spec.labels]
            if self.family == "t5"
            else []
        )

    # -- single sequences -------------------------------------------------------------------
    def sequence(self, a: str, b: str | None) -> list[int]:
        tok = self.tokenizer
        ids_a, ids_b = tok.encode(a), tok.encode(b) if b else None
        if self.family == "bert":
            specials = 3 if ids_b is not None else 2
            ids_a, ids_b = truncate_pair(ids_a, ids_b, self.max_length - specials)
            tail = [*ids_b, tok.sep_id] if b else []
            return [tok.cls_id, *ids_a, tok.sep_id, *tail]
        if self.family == "gpt":
            specials = 2 if ids_b is not None else 1
            ids_a, ids_b = truncate_pair(ids_a, ids_b, self.max_length - specials)
            tail = [*ids_b, tok.eos_id] if b else []
            return [*ids_a, tok.eos_id, *tail]
        extra = len(self._prefix) + (len(self._bar) if b else 0) + 1
        ids_a, ids_b = truncate_pair(ids_a, ids_b, self.max_length - extra)
        middle = [*self._bar, *ids_b] if b else []
        return [*self._prefix, *ids_a, *middle, tok.eos_id]

    def target(self, example: Example) -> list[int]:
        """T5's target ids for an example's label."""
        if self.spec.kind == REGRESSION:
            return self.tokenizer.encode(regression_text(example.label)) + [self.tokenizer.eos_id]
        return self.targets[int(example.label)]

    # -- batches ----------------------------------------------------------------------------
    def batch(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """Padded tensors for a list of examples (multiple choice: B x C sequences)."""
        if self.spec.kind == MULTIPLE_CHOICE and self.family != "t5":
            seqs = [self.sequence(e.text_a, c) for e in examples for c in e.choices or ()]
        else:
            seqs = [self.sequence(e.text_a, self._second(e)) for e in examples]
        out = self._pad(seqs, "input_ids", "attention_mask")
        out["lengths"] = torch.tensor([len(s) for s in seqs])
        if self.family == "t5":
            targets = self._pad([self.target(e) for e in examples], "labels", "target_mask")
            labels = targets["labels"].masked_fill(targets["target_mask"] == 0, -100)
            decoder = torch.full_like(targets["labels"], self.tokenizer.pad_id)
            decoder[:, 1:] = targets["labels"][:, :-1]
            out.update(labels=labels, decoder_input_ids=decoder)
        else:
            dtype = torch.float32 if self.spec.kind == REGRESSION else torch.long
            out["labels"] = torch.tensor([e.label for e in examples], dtype=dtype)
        return out

    def _second(self, example: Example) -> str | None:
        if example.choices and self.family == "t5":  # T5 reads every choice, answers with one
            listed = " ".join(
                f"{name}: {c}" for name, c in zip(self.spec.labels, example.choices, strict=True)
            )
            return f"{example.text_b or ''} {listed}".strip()
        return example.text_b

    def _pad(self, seqs: list[list[int]], ids_key: str, mask_key: str) -> dict[str, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return {ids_key: ids, mask_key: mask}
