"""Bit-exact comparison of nested states (weights, optimizer state, method state, logs), saying
where the first difference is: "bit-exact" means `torch.equal` for tensors and `==` for the rest
(NaN equal to NaN: a NaN in both runs is the same result)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where `a` and `b` first differ (`path: what`), or None when they are the same."""
    where = path or "the value"
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return _tensor_difference(a, b, where)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys_a, keys_b = list(a), list(b)
        if set(keys_a) != set(keys_b):
            only_a = sorted(map(str, set(keys_a) - set(keys_b)))
            only_b = sorted(map(str, set(keys_b) - set(keys_a)))
            return f"{where}: keys {only_a} only in the first, {only_b} only in the second"
        for key in keys_a:
            found = first_difference(a[key], b[key], f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        # A tuple read back as a list is the same sequence (JSON has only lists).
        if len(a) != len(b):
            return f"{where}: {_short(a)} vs {_short(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return None
    if type(a) is not type(b) and not (_number(a) and _number(b)):
        return f"{where}: {_short(a)} ({type(a).__name__}) vs {_short(b)} ({type(b).__name__})"
    if a != b:
        return f"{where}: {_short(a)} vs {_short(b)}"
    return None


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _tensor_difference(a: Any, b: Any, where: str) -> str | None:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return f"{where}: a tensor in one, {type(b if isinstance(a, torch.Tensor) else a).__name__}"
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"{where}: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"
    a, b = a.detach().cpu(), b.detach().cpu()
    if torch.equal(a, b):
        return None
    if a.is_floating_point():
        both_nan = torch.isnan(a) & torch.isnan(b)
        if torch.equal(torch.where(both_nan, 0, a), torch.where(both_nan, 0, b)):
            return None
        gap = (a.double() - b.double()).abs().nan_to_num(nan=math.inf).max().item()
        return f"{where}: differs (largest difference {gap:.3g})"
    return f"{where}: differs in {int((a != b).sum())} of {a.numel()} entries"


def _short(x: Any, limit: int = 60) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."
