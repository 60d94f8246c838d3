"""Data-parallel and sharded training on PyTorch's own engine (torchrun, DDP, FSDP2).

Launched by `torchrun --nproc_per_node N -m budgetlm train ...` (or `budgetlm train --nproc N`),
every rank runs the same loop on its slice of every global batch:
- batches are a pure function of (seed, step), so rank r simply builds positions
  [r·B/W, (r+1)·B/W) of the global batch: results do not depend on the number of ranks beyond
  floating-point reduction order;
- the clock is charged the global step's work (identical on every rank, so every rank stops at
  the same step); wall time and stop requests are reduced with MAX so they agree too;
- `ddp` wraps the model in DistributedDataParallel (re-wrapped when a method grows it);
  `fsdp` shards every block and the root with FSDP2's `fully_shard`;
- rank 0 alone writes logs, summaries and checkpoints (consolidated full state: a DDP
  checkpoint resumes on any number of ranks).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as torch_dist
from torch import nn

from budgetlm.errors import RunFault, UserError

T = TypeVar("T")

MODES = ("auto", "ddp", "fsdp")
# What data parallelism does not support yet, and why (refused, never silently wrong).
UNSUPPORTED_METHODS: dict[str, str] = {}
# Selective backprop and RHO-loss need no entry under DDP: each rank forwards its share of the
# candidates, the losses are gathered, and every rank then makes the same selection (the same
# state on every rank, so rank 0's checkpoint is the run's) and trains on its share of it.
# Sophia needs no entry: every rank estimates the Hessian on the same examples of the global
# batch (a pure function of (seed, step)) with the same sampled labels, so the estimates agree
# without communication and the clock charges the pass once, as one reference device would.
UNSUPPORTED_OPTIMIZERS: dict[str, str] = {}
FSDP_UNSUPPORTED_METHODS = {
    "layer_stacking": "re-sharding a model that grows mid-run is not implemented (use ddp)",
    "staged": "re-sharding a model that grows mid-run is not implemented (use ddp)",
    "selective_backprop": "selection forwards of a sharded model are not implemented (use ddp)",
    "rho_loss": "selection forwards of a sharded model are not implemented (use ddp)",
}
FSDP_UNSUPPORTED_OPTIMIZERS = {
    "muon": "its orthogonalisation needs whole matrices, FSDP2 holds shards (use ddp)",
    "sophia": "its Hessian estimate is not implemented for sharded parameters (use ddp)",
}


class DistributedConfigError(UserError, ValueError):
    """A setting that data-parallel training refuses."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    mode: str = "none"  # none | ddp | fsdp

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (no-ops for a single process) ----------------------------------------------
    def max(self, values: Iterable[float], device: torch.device) -> list[float]:
        values = list(values)
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return t.tolist()

    def total(self, value: float, device: torch.device) -> float:
        """The sum of a number over ranks (no tensor at all for a single process)."""
        if not self.active:
            return value
        return float(self.sum(torch.tensor(value, dtype=torch.float64, device=device)))

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.active:
            value = value.clone()
            torch_dist.all_reduce(value, op=torch_dist.ReduceOp.SUM)
        return value

    def share(self, n: int) -> slice:
        """This rank's contiguous share of n rows (the first n % world ranks get one more)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def gather_rows(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """Concatenate every rank's `share(n)` rows of a 1-d tensor, in rank order."""
        if not self.active:
            return part
        longest = -(-n // self.world)
        padded = torch.zeros(longest, dtype=part.dtype)
        padded[: len(part)] = part
        gathered = [torch.empty_like(padded) for _ in range(self.world)]
        # gloo gathers CPU tensors; NCCL needs them on this rank's GPU.
        if torch_dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
            gathered = [g.to(device) for g in gathered]
            torch_dist.all_gather(gathered, padded.to(device))
            gathered = [g.cpu() for g in gathered]
        else:
            torch_dist.all_gather(gathered, padded)
        shares = [Dist(r, self.world).share(n) for r in range(self.world)]
        return torch.cat([g[: s.stop - s.start] for g, s in zip(gathered, shares, strict=True)])

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    def on_main(self, fn: Callable[[], T], device: torch.device, what: str) -> T | None:
        """`fn()` on rank 0 only, then every rank learns whether it failed (in place of a
        barrier), so none waits forever for a rank 0 that raised (a full disk, a busy run
        folder). Rank 0 re-raises its own error; the others raise a RunFault naming `what`."""
        error: BaseException | None = None
        result = None
        if self.is_main:
            try:
                result = fn()
            except BaseException as e:  # noqa: BLE001 - re-raised once the other ranks know
                error = e
        if self.active:
            (failed,) = self.max([float(error is not None)], device)
            if failed and error is None:
                raise RunFault(f"rank 0 could not {what}; see its message")
        if error is not None:
            raise error
        return result


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(parallel: str, device_type: str) -> Dist:
    """Join the process group torchrun prepared (NCCL on GPU, gloo on CPU)."""
    if parallel not in MODES:
        raise DistributedConfigError(f"train.parallel must be one of {MODES}, got {parallel!r}")
    rank, world, local_rank = world_from_env()
    if world == 1:
        return Dist()
    if not torch_dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        torch_dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    mode = "ddp" if parallel == "auto" else parallel
    return Dist(rank=rank, world=world, local_rank=local_rank, mode=mode)


def check_supported(dist: Dist, methods: Iterable[str], optimizer: str, batch_size: int) -> None:
    """Refuse, before anything runs, what data parallelism would get wrong."""
    if not dist.active:
        return
    problems = [
        f"method {m!r}: {UNSUPPORTED_METHODS[m]}" for m in methods if m in UNSUPPORTED_METHODS
    ]
    if optimizer in UNSUPPORTED_OPTIMIZERS:
        problems.append(f"optimizer {optimizer!r}: {UNSUPPORTED_OPTIMIZERS[optimizer]}")
    if dist.mode == "fsdp":
        problems += [
            f"method {m!r}: {FSDP_UNSUPPORTED_METHODS[m]}"
            for m in methods
            if m in FSDP_UNSUPPORTED_METHODS
        ]
        if optimizer in FSDP_UNSUPPORTED_OPTIMIZERS:
            problems.append(f"optimizer {optimizer!r}: {FSDP_UNSUPPORTED_OPTIMIZERS[optimizer]}")
    if batch_size % dist.world:
        problems.append(f"train.batch_size {batch_size} is not divisible by {dist.world} ranks")
    if problems:
        raise DistributedConfigError(
            f"not supported with {dist.world} ranks ({dist.mode}): " + "; ".join(problems)
        )


def shard_model(model: nn.Module) -> None:
    """FSDP2: shard each transformer block, then the rest (embeddings, norms, head)."""
    from torch.distributed.fsdp import fully_shard

    for blocks in model.layer_stacks().values():
        for block in blocks:
            fully_shard(block)
    fully_shard(model)


def ddp_wrap(model: nn.Module, dist: Dist, find_unused: bool) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [dist.local_rank] if next(model.parameters()).is_cuda else None
    # Dropped or not-yet-stacked layers get no gradient in some steps: DDP must not wait on them.
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """FSDP2: gather the full model and optimizer state (on CPU, rank 0 gets it all)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (
        get_model_state_dict(model, options=options),
        get_optimizer_state_dict(model, optimizer, options=options),
    )


def load_full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )
