"""The fine-tuning protocol: No Train No Gain's GLUE recipe (ARCHITECTURE.md §4.5) as defaults.

Torch-free, so the command line can show its defaults without importing the training code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Protocol:
    lr: float = 4e-5
    batch_size: int = 16
    epochs: int = 5
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 128
    select: str = "final"  # final | max (best epoch on validation: optimistic)
    max_train: int | None = None  # cap on training examples (a fixed-seed sample)
    max_eval: int | None = None  # cap on validation examples
    grad_clip: float = 1.0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.select not in ("final", "max"):
            raise ValueError(f"select must be 'final' or 'max', got {self.select!r}")
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1 or self.max_length < 8:
            raise ValueError("lr > 0, batch_size >= 1, epochs >= 1 and max_length >= 8 please")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Protocol:
        """The protocol an experiment's `finetune:` section sets; its other keys (suite, tasks,
        seeds, data_dir) are not protocol settings and are ignored here."""
        return cls(**{k: v for k, v in spec.items() if k in cls.__dataclass_fields__})
