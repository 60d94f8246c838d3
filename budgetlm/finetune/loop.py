"""Fine-tune a fresh copy of a pre-trained backbone on one task with one seed.

The protocol defaults are No Train No Gain's GLUE recipe (ARCHITECTURE.md §4.5): AdamW at 4e-5,
batch 16, 5 epochs, 10% linear warm-up then cosine decay, inputs cut to 128 tokens. Validation
is scored after every epoch; the reported score is the final epoch's ("final", the default) or
the best epoch's ("max", as the paper did, which is optimistic: it selects on the data it
reports).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from budgetlm.data.tokenizer import Tokenizer
from budgetlm.errors import RunFault
from budgetlm.finetune.encode import Encoder
from budgetlm.finetune.heads import SequenceClassifier, TextToText
from budgetlm.finetune.metrics import score
from budgetlm.finetune.protocol import Protocol
from budgetlm.finetune.tasks import REGRESSION, Example, TaskData, TaskError


class FinetuneDiverged(RunFault, FloatingPointError):
    """The fine-tuning loss became NaN or infinite (exit 1: a failure during training)."""


@dataclass
class TaskResult:
    task: str
    seed: int
    epochs: list[dict[str, float]]  # validation metrics after each epoch
    reported: dict[str, float]  # the epoch the protocol reports
    main_metric: str
    train_examples: int
    eval_examples: int
    seconds: float
    majority: float | None = None  # main metric of always predicting the commonest train label
    extra: dict[str, Any] = field(default_factory=dict)


def _sample(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    if limit is None or len(examples) <= limit:
        return examples
    order = np.random.default_rng([seed, 0x5A4D]).permutation(len(examples))[:limit]
    return [examples[i] for i in sorted(order)]


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    warm = max(1, round(warmup * total))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def build_head(backbone: nn.Module, encoder: Encoder, dropout: float) -> nn.Module:
    if backbone.shape.family == "t5":
        return TextToText(backbone, encoder.spec, encoder.targets)
    return SequenceClassifier(backbone, encoder.spec, dropout)


def majority_baseline(data: TaskData, validation: list[Example]) -> float | None:
    if data.spec.kind == REGRESSION:
        return None
    labels = [int(e.label) for e in data.train]
    commonest = max(set(labels), key=labels.count)
    return score(
        (data.spec.main_metric,), [commonest] * len(validation), [e.label for e in validation]
    )[data.spec.main_metric]


def finetune_task(
    backbone: nn.Module,
    tokenizer: Tokenizer,
    data: TaskData,
    protocol: Protocol,
    seed: int,
    device: torch.device | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> TaskResult:
    """Fine-tune a copy of `backbone` (left untouched) and score it on the validation split."""
    device = device or torch.device("cpu")
    spec = data.spec
    max_length = min(protocol.max_length, backbone.shape.seq_len)
    encoder = Encoder(backbone.shape.family, tokenizer, spec, max_length)
    train = _sample(data.train, protocol.max_train, seed)
    validation = _sample(data.validation, protocol.max_eval, seed)
    if not train or not validation:
        raise TaskError(f"{spec.name}: empty train or validation split")

    torch.manual_seed(seed)
    model = build_head(copy.deepcopy(backbone), encoder, protocol.dropout).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": protocol.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=protocol.lr,
    )
    per_epoch = math.ceil(len(train) / protocol.batch_size)
    total = per_epoch * protocol.epochs
    rng = np.random.default_rng([seed, 0xF17E])
    started, step, epochs = time.perf_counter(), 0, []
    for _ in range(protocol.epochs):
        model.train()
        order = rng.permutation(len(train))
        for start in range(0, len(train), protocol.batch_size):
            chunk = [train[i] for i in order[start : start + protocol.batch_size]]
            batch = {k: v.to(device) for k, v in encoder.batch(chunk).items()}
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, protocol.lr, protocol.warmup)
            loss = model.loss(batch)
            if not torch.isfinite(loss):
                raise FinetuneDiverged(
                    f"{spec.name} seed {seed}: the fine-tuning loss is {float(loss)} at step "
                    f"{step + 1} of {total} (try a lower --lr)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), protocol.grad_clip)
            optimizer.step()
            step += 1
            if on_step is not None:
                on_step(step, total)
        epochs.append(evaluate(model, encoder, validation, protocol.batch_size, device))
    main = spec.main_metric
    reported = epochs[-1] if protocol.select == "final" else max(epochs, key=lambda m: m[main])
    return TaskResult(
        task=spec.name,
        seed=seed,
        epochs=epochs,
        reported=reported,
        main_metric=main,
        train_examples=len(train),
        eval_examples=len(validation),
        seconds=time.perf_counter() - started,
        majority=majority_baseline(data, validation),
    )


def evaluate(
    model: nn.Module,
    encoder: Encoder,
    examples: list[Example],
    batch_size: int,
    device: torch.device,
) -> dict[str, float]:
    model.eval()
    preds: list[float] = []
    for start in range(0, len(examples), batch_size):
        batch = encoder.batch(examples[start : start + batch_size])
        batch = {k: v.to(device) for k, v in batch.items()}
        if isinstance(model, TextToText):
            preds += model.predict(batch, encoder.tokenizer)
        else:
            preds += model.predict(batch)
    return score(encoder.spec.metrics, preds, [e.label for e in examples])
