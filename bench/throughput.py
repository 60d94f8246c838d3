"""Training throughput of a preset: tokens/s, FLOP/s and MFU, eager and compiled.

    python bench/throughput.py --presets gpt-tiny bert-tiny t5-tiny --batch 16
    python bench/throughput.py --presets gpt2-small --batch 32 --compile both   # on a GPU

One step = forward + backward + AdamW step on a synthetic batch of the preset's full shape (data
loading is not measured). FLOPs are the model's matmul FLOPs (budgetlm.models.train_flops). MFU is
reported against the device's spec-sheet peak (table below) and against a measured large-matmul
peak in the same dtype, so the figure means something on any machine. Results are appended as one
JSON line per configuration to bench/results/throughput-<device>.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from budgetlm.models import build_model, get_shape, train_flops
from budgetlm.train.metadata import cpu_name

# Dense (no sparsity) peak FLOP/s from vendor spec sheets.
SPEC_PEAK = {
    "NVIDIA H100 80GB HBM3": {"bf16": 989e12, "fp32": 67e12},
    "NVIDIA H100": {"bf16": 989e12, "fp32": 67e12},
    "NVIDIA H200": {"bf16": 989e12, "fp32": 67e12},
    "NVIDIA A100-SXM4-80GB": {"bf16": 312e12, "fp32": 19.5e12},
    "NVIDIA GeForce RTX 3090": {"bf16": 71e12, "fp32": 35.6e12},
}


def synthetic_batch(shape, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, shape.vocab_size, (batch, shape.seq_len), generator=g)
    if shape.family == "gpt":
        out = {"input_ids": ids, "labels": torch.roll(ids, -1, dims=1)}
    elif shape.family == "bert":
        labels = torch.full_like(ids, -100)
        masked = torch.rand(ids.shape, generator=g) < shape.mlm_fraction
        labels[masked] = ids[masked]
        out = {"input_ids": ids, "labels": labels}
    else:
        tgt = torch.randint(5, shape.vocab_size, (batch, shape.target_len), generator=g)
        dec = torch.cat([torch.zeros(batch, 1, dtype=torch.long), tgt[:, :-1]], dim=1)
        out = {"input_ids": ids, "decoder_input_ids": dec, "labels": tgt}
    return {k: v.to(device) for k, v in out.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times)


def measure(
    preset: str,
    batch: int,
    steps: int,
    warmup: int,
    compiled: bool,
    device: torch.device,
    dtype: str,
) -> dict:
    torch.manual_seed(0)
    shape = get_shape(preset)
    model = build_model(shape).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    forward = torch.compile(model) if compiled else model
    data = synthetic_batch(shape, batch, device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if dtype == "bf16"
        else contextlib.nullcontext()
    )
    times = []
    t_compile = time.perf_counter()
    for i in range(warmup + steps):
        sync(device)
        t = time.perf_counter()
        with autocast:
            loss = forward(data).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i == warmup - 1:
            t_compile = time.perf_counter() - t_compile
        if i >= warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    tokens = batch * shape.seq_len
    flops = train_flops(shape, batch)
    return {
        "preset": preset,
        "batch": batch,
        "seq_len": shape.seq_len,
        "compiled": compiled,
        "dtype": dtype,
        "step_s": step,
        "step_s_min": min(times),
        "tokens_per_s": tokens / step,
        "flops_per_s": flops / step,
        "warmup_s": round(t_compile, 2),
        "params": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["gpt-tiny", "bert-tiny", "t5-tiny"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", choices=["no", "yes", "both"], default="no")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--dtype",
        choices=["fp32", "bf16"],
        default=None,
        help="default: bf16 autocast on CUDA, fp32 on CPU (never bf16 on CPU)",
    )
    ap.add_argument("--out", default=None, help="JSONL file to append to")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    if dtype == "bf16" and device.type == "cpu":
        ap.error("bf16 on CPU is refused: no bf16 units here, ~25x slower than fp32")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
    else:
        name = cpu_name()
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    peak_measured = matmul_peak(device, torch_dtype, 8192 if device.type == "cuda" else 1024)
    peak_spec = SPEC_PEAK.get(name, {}).get(dtype)
    machine = {
        "device": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "matmul_peak_flops": peak_measured,
        "spec_peak_flops": peak_spec,
        "command": " ".join(sys.argv),
    }
    out = (
        Path(args.out)
        if args.out
        else (Path(__file__).parent / "results" / f"throughput-{device.type}.jsonl")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    modes = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    print(f"{name}: measured {dtype} matmul peak {peak_measured / 1e12:.2f} TFLOP/s")
    print(
        f"{'preset':<16}{'compile':>8}{'tok/s':>12}{'TFLOP/s':>10}{'MFU(meas)':>10}"
        f"{'MFU(spec)':>10}"
    )
    for preset in args.presets:
        for compiled in modes:
            r = measure(preset, args.batch, args.steps, args.warmup, compiled, device, dtype)
            r["mfu_measured_peak"] = r["flops_per_s"] / peak_measured
            r["mfu_spec_peak"] = r["flops_per_s"] / peak_spec if peak_spec else None
            r.update(machine)
            with open(out, "a") as f:
                f.write(json.dumps(r) + "\n")
            spec = f"{r['mfu_spec_peak']:.1%}" if peak_spec else "n/a"
            print(
                f"{preset:<16}{str(compiled):>8}{r['tokens_per_s']:>12,.0f}"
                f"{r['flops_per_s'] / 1e12:>10.3f}{r['mfu_measured_peak']:>10.1%}{spec:>10}"
            )
    print(f"appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
