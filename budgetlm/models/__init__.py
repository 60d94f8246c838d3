"""Model families (GPT, BERT, T5), their shapes and presets, and parameter / FLOP counts."""

from __future__ import annotations

from torch import nn

from budgetlm.models.bert import BERT
from budgetlm.models.gpt import GPT
from budgetlm.models.output import ModelOutput
from budgetlm.models.shapes import (
    PRESET_DOCS,
    ModelShape,
    count_params,
    flops_per_token,
    format_preset_table,
    forward_flops,
    get_shape,
    list_presets,
    train_flops,
)
from budgetlm.models.t5 import T5

_FAMILIES: dict[str, type[nn.Module]] = {"gpt": GPT, "bert": BERT, "t5": T5}


def build_model(shape: ModelShape) -> nn.Module:
    """A fresh, initialised model for `shape` (works under `with torch.device("meta"):`)."""
    return _FAMILIES[shape.family](shape)


__all__ = [
    "BERT",
    "GPT",
    "PRESET_DOCS",
    "T5",
    "ModelOutput",
    "ModelShape",
    "build_model",
    "count_params",
    "flops_per_token",
    "format_preset_table",
    "forward_flops",
    "get_shape",
    "list_presets",
    "train_flops",
]
