"""Where a run computes: the device, the precision and this process's place in a parallel job."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from budgetlm.config import ConfigError, TrainConfig
from budgetlm.train.distributed import Dist, init_distributed


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here")
    return device


def autocast_for(precision: str, device: torch.device):  # noqa: ANN201 - a context factory
    if precision == "bf16" and device.type != "cuda":
        raise ConfigError(
            "train.precision=bf16 is refused on CPU: these CPUs have no bf16 units and run it "
            "~25x slower than fp32. Use precision=fp32 (or auto)."
        )
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


@dataclass
class Runtime:
    device: torch.device
    dist: Dist
    autocast: Callable[[], contextlib.AbstractContextManager]


def setup_runtime(train: TrainConfig) -> Runtime:
    """Pick the device, join the torchrun job if there is one, and set the process's threads and
    matmul precision."""
    device = resolve_device(train.device)
    dist = init_distributed(train.parallel, device.type)
    if dist.active and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if train.threads:
        torch.set_num_threads(train.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device, dist, autocast_for(train.precision, device))
