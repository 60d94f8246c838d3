"""The training loop's own overhead: a `budgetlm train` step against the bare model step.

    python bench/loop_overhead.py                                   # configs/gpt-tiny.yaml
    python bench/loop_overhead.py --config configs/bert-tiny.yaml --repeats 8 --steps 10
    PYTHONPATH=/work/before python bench/loop_overhead.py ...       # another checkout's package

Two competitors, interleaved in one process (each repeat runs `--steps` steps of one, then of the
other, so the machine's drift hits both alike):

- loop: the real training loop, `open_run(cfg).run(stop_after=steps)` on the config's data,
  with evaluation and checkpoints off (as RST excludes them; the checkpoint `run(stop_after=...)`
  writes when it stops is skipped) and the config's own logging. Whole chunks of steps are timed
  from outside, so planning, pricing, logging, the data pipeline and Python between passes all
  count. The loop's own clock (what RST charges against) is reported beside it.
- raw: bench/throughput.py's step at the same shape, micro-batch and micro-batches per step:
  forward + backward per micro-batch on a synthetic batch, then one step of AdamW built as the
  loop built its own (fused on CPU too where the loop fuses it).

Reported: ms per step each (median over repeats), overhead = loop - raw in ms and in % of raw
(difference of the medians; the median of each round's difference; the quietest chunks').
One JSON line appended to `--out` (default bench/results/loop-overhead-<device>.jsonl).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))  # throughput.py's helpers, run as a script

from throughput import sync, synthetic_batch  # noqa: E402

import budgetlm  # noqa: E402
from budgetlm.config import load_config  # noqa: E402
from budgetlm.models import build_model  # noqa: E402
from budgetlm.train.metadata import cpu_name  # noqa: E402
from budgetlm.train.session import open_run  # noqa: E402


def short_run_config(cfg: Any, steps: int, run_dir: Path, compiled: bool) -> Any:
    """The config as a timing run (as budgetlm.train.calibrate.measure_loop_overhead builds it)."""
    return dataclasses.replace(
        cfg,
        budget=f"{steps}steps",
        method="none",
        methods={},
        run=dataclasses.replace(cfg.run, dir=str(run_dir)),
        train=dataclasses.replace(
            cfg.train,
            eval_every=0.0,
            checkpoint_every=0.0,
            progress_bar=False,
            compile=compiled,
            loggers=[],  # a timing run in a temporary folder: nothing for trackers
        ),
    )


class LoopSteps:
    """Chunks of steps of the real loop, timed from outside."""

    def __init__(self, cfg: Any) -> None:
        self.trainer = open_run(cfg, progress=False)
        # run(stop_after=n) saves a checkpoint when it stops: I/O that RST does not charge and
        # that a long run pays once per checkpoint interval, not per chunk of steps.
        self.trainer.save = lambda *args, **kwargs: None
        self.clock_ms: list[float] = []

    def chunk(self, steps: int) -> float:
        clock = self.trainer.state.clock
        before = clock.spent["seconds"]
        sync(self.trainer.device)
        t = time.perf_counter()
        self.trainer.run(stop_after=steps)
        sync(self.trainer.device)
        elapsed = time.perf_counter() - t
        self.clock_ms.append(1e3 * (clock.spent["seconds"] - before) / steps)
        return elapsed / steps

    def close(self) -> None:
        self.trainer.log.close()


class RawSteps:
    """bench/throughput.py's step: the same model shape, micro-batch and accumulation."""

    def __init__(
        self, cfg: Any, shape: Any, device: torch.device, compiled: bool, like: Any
    ) -> None:
        self.micro = cfg.train.micro_batch_size or cfg.train.batch_size
        self.accumulate = cfg.train.batch_size // self.micro
        self.device = device
        self.model = build_model(shape).to(device)
        self.forward = self.model
        if compiled:
            from budgetlm.train.compile import compile_model

            self.forward = compile_model(self.model)
        self.opt = same_optimizer(self.model, like, device)
        self.batch = synthetic_batch(shape, self.micro, device)
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if device.type == "cuda"
            else contextlib.nullcontext()
        )

    def chunk(self, steps: int) -> float:
        sync(self.device)
        t = time.perf_counter()
        for _ in range(steps):
            for _ in range(self.accumulate):
                with self.autocast:
                    loss = self.forward(self.batch).loss / self.accumulate
                loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        sync(self.device)
        return (time.perf_counter() - t) / steps


def same_optimizer(model: torch.nn.Module, like: Any, device: torch.device) -> Any:
    """AdamW as the loop built it (budgetlm fuses it on CPU too, unlike bench/throughput.py):
    otherwise the difference of the two optimizers would read as the loop's overhead."""
    if isinstance(like, torch.optim.AdamW):
        keys = ("lr", "betas", "eps", "weight_decay", "fused", "foreach")
        options = {k: like.defaults[k] for k in keys if k in like.defaults}
        return torch.optim.AdamW(model.parameters(), **options)
    # another optimizer (a config's choice): bench/throughput.py's AdamW
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)


def measure(cfg: Any, repeats: int, steps: int, warmup: int, compiled: bool) -> dict[str, Any]:
    total = warmup + repeats * steps + 1  # one spare: the budget never ends the last chunk
    with tempfile.TemporaryDirectory() as tmp:
        loop = LoopSteps(short_run_config(cfg, total, Path(tmp) / "run", compiled))
        try:
            state, device = loop.trainer.state, loop.trainer.device
            raw = RawSteps(cfg, state.model.shape, device, compiled, like=state.optimizer)
            loop.chunk(warmup)
            raw.chunk(warmup)
            loop.clock_ms.clear()
            loop_s, raw_s = [], []
            for _ in range(repeats):  # interleaved: drift hits both alike
                loop_s.append(loop.chunk(steps))
                raw_s.append(raw.chunk(steps))
        finally:
            loop.close()
    loop_ms = 1e3 * statistics.median(loop_s)
    raw_ms = 1e3 * statistics.median(raw_s)
    # On a shared machine the rounds' speeds differ by more than the overhead: each round's
    # difference (both halves saw about the same load) and the two quietest chunks are steadier
    # estimates than the difference of the medians.
    paired_ms = 1e3 * statistics.median(a - b for a, b in zip(loop_s, raw_s, strict=True))
    min_ms = 1e3 * (min(loop_s) - min(raw_s))
    return {
        "preset": cfg.model.preset,
        "batch_size": cfg.train.batch_size,
        "micro_batch_size": raw.micro,
        "micro_batches": raw.accumulate,
        "device": str(loop.trainer.device),
        "compiled": compiled,
        "optimizer": type(raw.opt).__name__ + (" fused" if raw.opt.defaults.get("fused") else ""),
        "repeats": repeats,
        "steps_per_repeat": steps,
        "loop_ms": loop_ms,
        "raw_ms": raw_ms,
        "overhead_ms": loop_ms - raw_ms,
        "overhead_pct": 100 * (loop_ms - raw_ms) / raw_ms,
        "overhead_paired_ms": paired_ms,
        "overhead_paired_pct": 100 * paired_ms / raw_ms,
        "overhead_min_ms": min_ms,
        "overhead_min_pct": 100 * min_ms / (1e3 * min(raw_s)),
        "loop_clock_ms": statistics.median(loop.clock_ms),
        "loop_ms_all": [round(1e3 * s, 3) for s in loop_s],
        "raw_ms_all": [round(1e3 * s, 3) for s in raw_s],
    }


def machine(device: str) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = None
    return {
        "gpu": gpu,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "load_avg": load,  # a shared machine: the load says how much the figures can be trusted
        "torch": torch.__version__,
        "python": platform.python_version(),
        "budgetlm_path": str(Path(budgetlm.__file__).parent),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/gpt-tiny.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--repeats", type=int, default=20, help="interleaved rounds (median)")
    ap.add_argument("--steps", type=int, default=3, help="steps per competitor per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="compile both (each block)")
    ap.add_argument("--label", help="a name for the code measured (e.g. the commit)")
    ap.add_argument("--out", help="JSONL file to append to")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    row = measure(cfg, args.repeats, args.steps, args.warmup, args.compile)
    row = {"config": args.config, "overrides": args.set, "label": args.label, **row}
    row["machine"] = machine(row["device"])
    device = row["device"].split(":")[0]
    out = Path(args.out or Path(__file__).parent / "results" / f"loop-overhead-{device}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(
        f"{args.config}: loop {row['loop_ms']:.2f} ms/step (its clock {row['loop_clock_ms']:.2f}),"
        f" raw {row['raw_ms']:.2f} ms/step, overhead {row['overhead_ms']:+.2f} ms "
        f"({row['overhead_pct']:+.1f}%), paired {row['overhead_paired_ms']:+.2f} ms "
        f"({row['overhead_paired_pct']:+.1f}%), quietest {row['overhead_min_ms']:+.2f} ms "
        f"({row['overhead_min_pct']:+.1f}%); appended to {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
