"""Timing passes on this machine: the harness behind `budgetlm calibrate` and the table probe.

A pass is timed as the training loop runs it for one micro-batch: build the batch, move it to the
device, forward (and backward) with the first L blocks of each stack, synchronised on CUDA, after
an untimed run of the same pass (warm caches and allocator: the loop's steady state). Calibration
(train/calibrate.py) times a grid of passes from a run's own data; the probe (`rst.verify=probe`,
`measure_probe`) times a few passes of a table entry's shape from random tokens and hands the
figures to `budget.rst.probe_table`, which judges them. Nothing here builds a run.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from budgetlm.budget.rst import ShapeCosts
from budgetlm.models import ModelShape, build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def median_seconds(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device) for _ in range(repeats))


def pass_function(
    model: torch.nn.Module,
    stream: Any,
    phase: str,
    batch_size: int,
    active_counts: dict[str, int],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Callable[[], None]:
    """One pass as the loop runs it for a micro-batch: build the batch (`stream.batch`), move it
    to the device, forward (and backward, for `train`) with the first L blocks of each stack."""
    active = {s: list(range(n)) for s, n in active_counts.items()}

    def batch() -> dict[str, torch.Tensor]:
        return {
            k: v.to(device, non_blocking=True) for k, v in stream.batch(0, 0, batch_size).items()
        }

    def train_pass() -> None:
        with autocast():
            loss = model(batch(), active=active).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward_pass() -> None:
        with autocast():
            model(batch(), active=active)

    return train_pass if phase == "train" else forward_pass


def round_robin(
    fns: Sequence[Callable[[], None]],
    device: torch.device,
    warmup: int,
    repeats: int,
    tick: Callable[[], Any] = lambda: None,
) -> list[list[float]]:
    """Seconds of each function over `repeats` sweeps, after `warmup` untimed sweeps.

    Round-robin: each repeat sweeps the whole grid, so a slow spell of a shared machine hits
    every point alike instead of corrupting a few (which the sanity checks would refuse). Each
    visit runs the pass once untimed first: the loop repeats one configuration step after
    step, with warm caches and allocator, and that steady state is what it costs.
    """
    times: list[list[float]] = [[] for _ in fns]
    for rep in range(warmup + repeats):
        for i, fn in enumerate(fns):
            fn()
            seconds = timed(fn, device)
            if rep >= warmup:
                times[i].append(seconds)
            tick()
    return times


def cpu_name() -> str:
    """The CPU model, as /proc/cpuinfo names it (run metadata and RST tables record it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device) -> dict[str, Any]:
    """What a table's `machine` records about where it was measured (less dtype and compile)."""
    desc = {
        "device": device.type,
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        desc["gpu"] = torch.cuda.get_device_name(device)
        desc["cuda"] = torch.version.cuda
    return desc


# -- the probe (rst.verify=probe): a few passes of a table's entries, timed here ------------------


class SyntheticBatches:
    """Random batches of a model shape, with the interface of `BatchStream.batch`.

    A probe times a table's entries without the corpus each was calibrated on. Random tokens
    cost the model what real ones do; building them costs less than an objective's real batches
    (a few percent of a tiny model's pass), well inside the probe's wide band.
    """

    def __init__(self, shape: Any, seed: int = 0) -> None:
        self.shape = shape
        self.generator = torch.Generator().manual_seed(seed)

    def _tokens(self, *size: int) -> torch.Tensor:
        return torch.randint(0, self.shape.vocab_size, size, generator=self.generator)

    def batch(self, epoch: int, step: int, batch_size: int) -> dict[str, torch.Tensor]:
        shape, length = self.shape, self.shape.seq_len
        inputs = self._tokens(batch_size, length)
        if shape.family == "t5":
            return {
                "input_ids": inputs,
                "decoder_input_ids": self._tokens(batch_size, shape.target_len),
                "labels": self._tokens(batch_size, shape.target_len),
            }
        if shape.family == "bert":
            chosen = torch.rand(batch_size, length, generator=self.generator) < shape.mlm_fraction
            chosen[:, 0] = True  # at least one masked position per sequence, like the objective
            labels = torch.where(chosen, inputs, torch.full_like(inputs, -100))
            return {"input_ids": inputs, "labels": labels}
        return {"input_ids": inputs, "labels": self._tokens(batch_size, length)}


def probe_machine(device_type: str) -> dict[str, Any]:
    """This machine described like a table's `machine`, for a table measured on `device_type`."""
    here = "cuda" if device_type == "cuda" and torch.cuda.is_available() else "cpu"
    return machine_description(torch.device(here))


def measure_probe(
    entry: ShapeCosts,
    points: Sequence[tuple[str, int, dict[str, int]]],
    machine: dict[str, Any],
    look: int = 0,
    warmup: int = 1,
    repeats: int = 3,
) -> list[float]:
    """Seconds of one pass at each point for `entry`'s shape on this machine, set up like the
    table's `machine` (device, dtype): the fastest of `repeats`, since another process only ever
    makes a pass slower. On a CPU the first look (`look=0`) runs one thread: two threads on a
    busy 2-core machine measured 4-12x the table's price, one thread 1.2-1.4x (load average 3.5);
    the second look runs the table's thread count. The caller's random state is left as it was.
    """
    device = torch.device("cuda" if machine.get("device") == "cuda" else "cpu")
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    if device.type == "cuda" and machine.get("dtype") == "bf16":

        def autocast() -> contextlib.AbstractContextManager:
            return torch.autocast("cuda", dtype=torch.bfloat16)

    threads = torch.get_num_threads()
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        try:
            if device.type == "cpu":
                torch.set_num_threads(int(machine.get("torch_threads") or 1) if look else 1)
            shape = ModelShape(**entry.shape)
            model = build_model(shape).to(device)
            model.train()
            stream = SyntheticBatches(shape)
            fns = [
                pass_function(model, stream, phase, batch, active, device, autocast)
                for phase, batch, active in points
            ]
            times = round_robin(fns, device, warmup, repeats)
        finally:
            torch.set_num_threads(threads)
    return [min(ts) for ts in times]
