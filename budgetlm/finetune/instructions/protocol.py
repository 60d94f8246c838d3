"""The instruction fine-tuning protocol: nanoT5's Super-Natural Instructions recipe as defaults.

nanoT5 (`nanoT5/configs/task/ft.yaml`) fine-tunes on SNI's training tasks with AdamW (the
transformers class: betas 0.9/0.999, eps 1e-6) at a constant 5e-5, no warm-up, no weight decay,
no gradient clipping, batch 8, 2 epochs; prompts carry the task definition and 2 positive
examples; inputs are cut to 1024 tokens, targets to 128; at most 100 instances per task. Held-out
tasks are decoded greedily and scored with ROUGE-L (`score.py`). `steps` caps the optimizer steps
(the budget of a quick run); tiny models cut the lengths further to their own
`seq_len` / `target_len`.

Torch-free, so the command line and experiment files can check settings without the model code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from budgetlm.finetune.instructions.data import PromptSettings

INSTRUCTION_SUITES = ("instructions", "sni")
OPTIMIZERS = ("adamw", "adamw_rms")
# nanoT5's fine-tuning optimizer is transformers' AdamW with its defaults.
ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-6
# Classification settings that mean nothing here: refused rather than silently ignored.
CLASSIFICATION_ONLY = ("max_length", "select", "max_train", "max_eval")


def is_instruction_suite(suite: str) -> bool:
    return suite in INSTRUCTION_SUITES


@dataclass
class InstructionProtocol:
    metric: str = "rougeL"
    optimizer: str = "adamw"
    lr: float = 5e-5
    batch_size: int = 8
    epochs: int = 2
    steps: int | None = None  # cap on optimizer steps (None: the epochs decide)
    warmup_steps: int = 0
    schedule: str = "constant"
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # 0: no clipping (nanoT5)
    add_task_definition: bool = True
    num_pos_examples: int = 2
    max_source_len: int = 1024
    max_target_len: int = 128
    max_instances: int = 100  # per training task
    max_eval_instances: int = 100  # per held-out task
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.metric != "rougeL":
            raise ValueError(f"the instruction suites report rougeL, not {self.metric!r}")
        if self.schedule != "constant":
            raise ValueError(f"schedule must be 'constant' (nanoT5), got {self.schedule!r}")
        positive = ("batch_size", "epochs", "max_instances", "max_eval_instances")
        positive += ("eval_batch_size",)
        bad = [n for n in positive if not _is_int(getattr(self, n)) or getattr(self, n) < 1]
        if self.steps is not None and (not _is_int(self.steps) or self.steps < 1):
            bad.append("steps")
        if not _is_int(self.max_source_len) or self.max_source_len < 8:
            bad.append("max_source_len (>= 8)")
        if not _is_int(self.max_target_len) or self.max_target_len < 2:
            bad.append("max_target_len (>= 2)")
        if not _is_int(self.num_pos_examples) or self.num_pos_examples < 0:
            bad.append("num_pos_examples (>= 0)")
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            bad.append("warmup_steps (>= 0)")
        if not isinstance(self.lr, int | float) or not self.lr > 0:
            bad.append("lr (> 0)")
        if self.weight_decay < 0 or self.grad_clip < 0:
            bad.append("weight_decay and grad_clip (>= 0)")
        if bad:
            raise ValueError(f"instruction fine-tuning: bad {', '.join(bad)}")

    def settings(self) -> PromptSettings:
        """How the loaders build prompts and cap instances under this protocol."""
        return PromptSettings(
            add_task_definition=self.add_task_definition,
            num_pos_examples=self.num_pos_examples,
            max_source_len=self.max_source_len,
            max_target_len=self.max_target_len,
            max_instances_per_task=self.max_instances,
            max_instances_per_eval_task=self.max_eval_instances,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> InstructionProtocol:
        """The protocol an experiment's `finetune:` section sets (suite, tasks, seeds, data_dir
        and max_dropped are not protocol settings); classification-only settings refused."""
        wrong = [k for k in CLASSIFICATION_ONLY if spec.get(k) is not None]
        if wrong:
            raise ValueError(
                f"{', '.join(wrong)}: classification settings; the instruction suites take "
                f"{', '.join(f.name for f in fields(cls))}"
            )
        return cls(**{k: v for k, v in spec.items() if k in cls.__dataclass_fields__})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def protocol_from_spec(spec: dict[str, Any]) -> Any:
    """The protocol of an experiment's `finetune:` section, for its suite's kind."""
    if is_instruction_suite(spec.get("suite", "offline")):
        return InstructionProtocol.from_spec(spec)
    from budgetlm.finetune.protocol import Protocol

    wrong = [k for k in INSTRUCTION_ONLY if k in spec]
    if wrong:
        raise ValueError(
            f"{', '.join(wrong)}: settings of the instruction suites "
            f"({', '.join(INSTRUCTION_SUITES)}), not of {spec.get('suite', 'offline')!r}"
        )
    return Protocol.from_spec(spec)


_SHARED = {"lr", "batch_size", "epochs", "weight_decay", "grad_clip"}
INSTRUCTION_ONLY = tuple(f for f in InstructionProtocol.__dataclass_fields__ if f not in _SHARED)

__all__ = [
    "INSTRUCTION_ONLY",
    "INSTRUCTION_SUITES",
    "InstructionProtocol",
    "is_instruction_suite",
    "protocol_from_spec",
]
