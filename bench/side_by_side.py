"""Our models against their reference implementations, side by side in one process.

    python bench/side_by_side.py --presets gpt-tiny bert-tiny t5-tiny --steps 3   # CPU smoke
    python bench/side_by_side.py --compile yes --nanogpt ~/nanoGPT/model.py       # on a GPU

For each preset, budgetlm's model and the matching reference are timed on the same synthetic
batch (same batch size, sequence length and vocabulary), one training step = forward + backward +
AdamW (fused on CUDA), bf16 autocast on CUDA, fp32 on CPU. The competitors are interleaved:
each repeat runs a few steps of every competitor in turn, so the machine's drift (clocks, other
work) hits all of them alike. Reported per competitor: the median step time and tokens/s; per
preset: ours / reference. One JSON line per (preset, compile) comparison, appended to `--out`.

References (no network, random init, built from config objects):
- gpt: nanoGPT's model.py from `--nanogpt PATH` (kept outside this repository, loaded with
  importlib); without it our GPT is timed alone and the row says the reference was skipped.
- bert: transformers' BertForMaskedLM with our d_model / layers / heads; a gated FFN of width
  d_ff (three d x d_ff matrices) is matched in FLOPs by an ungated one of width 1.5 d_ff.
- t5: transformers' T5ForConditionalGeneration, v1.1 settings (gated-gelu, untied head).
Ours is compiled as `budgetlm train` compiles it (each block, budgetlm.train.compile); the
references whole, with torch.compile.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))  # throughput.py's helpers, run as a script

from throughput import matmul_peak, sync, synthetic_batch  # noqa: E402

from budgetlm.models import build_model, get_shape  # noqa: E402
from budgetlm.models.shapes import ModelShape  # noqa: E402
from budgetlm.train.compile import compile_model  # noqa: E402
from budgetlm.train.metadata import cpu_name  # noqa: E402

OURS = "budgetlm"
DEFAULT_PRESETS = ["gpt2-small", "bert-cramming", "t5-v1_1-base"]
# Micro-batches of the GPU figures in bench/results/README.md (one step's examples).
DEFAULT_BATCH = {"gpt": 32, "bert": 128, "t5": 32}

Batch = dict[str, torch.Tensor]
# The loss of one batch, given the module to call (the model, or its compiled wrapper).
StepLoss = Callable[[Callable[..., Any], Batch], torch.Tensor]


def load_module(path: str | Path, name: str = "nanogpt_model") -> ModuleType:
    """Import a Python file by path (nanoGPT's model.py is not a package and not ours)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nanogpt_reference(shape: ModelShape, nanogpt: ModuleType) -> tuple[nn.Module, StepLoss]:
    # nanoGPT's MLP is always 4 x n_embd wide and its positions learned: true of every GPT preset
    # this compares (checked below so that a mismatch is reported, not timed).
    if shape.d_ff != 4 * shape.d_model or shape.positions != "learned":
        raise ValueError(f"nanoGPT has no equivalent of {shape}")
    config = nanogpt.GPTConfig(
        block_size=shape.seq_len,
        vocab_size=shape.vocab_size,
        n_layer=shape.n_layers,
        n_head=shape.n_heads,
        n_embd=shape.d_model,
        dropout=shape.dropout,
        bias=shape.bias,
    )
    model = nanogpt.GPT(config)
    return model, lambda m, b: m(b["input_ids"], b["labels"])[1]


def bert_reference(shape: ModelShape) -> tuple[nn.Module, StepLoss]:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.d_model,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        intermediate_size=shape.d_ff * 3 // 2 if shape.gated else shape.d_ff,
        max_position_embeddings=shape.seq_len,
        hidden_dropout_prob=shape.dropout,
        attention_probs_dropout_prob=shape.dropout,
    )
    model = BertForMaskedLM(config)
    return model, lambda m, b: m(input_ids=b["input_ids"], labels=b["labels"]).loss


def t5_reference(shape: ModelShape) -> tuple[nn.Module, StepLoss]:
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=shape.vocab_size,
        d_model=shape.d_model,
        d_kv=shape.d_kv,
        d_ff=shape.d_ff,
        num_layers=shape.n_layers,
        num_decoder_layers=shape.n_decoder_layers,
        num_heads=shape.n_heads,
        dropout_rate=shape.dropout,
        feed_forward_proj="gated-gelu" if shape.gated else "relu",
        tie_word_embeddings=shape.tie_embeddings,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    model = T5ForConditionalGeneration(config)
    if not shape.tie_embeddings:
        # transformers 5 always ties T5's head to its embedding (tie_word_embeddings=False only
        # turns off the output scaling); v1.1's head is a separate matrix, as is ours.
        model.lm_head.weight = nn.Parameter(model.shared.weight.detach().clone())
    return (
        model,
        lambda m, b: (
            m(
                input_ids=b["input_ids"],
                decoder_input_ids=b["decoder_input_ids"],
                labels=b["labels"],
            ).loss
        ),
    )


def reference(shape: ModelShape, nanogpt: ModuleType | None) -> tuple[str, nn.Module, StepLoss]:
    if shape.family == "gpt":
        if nanogpt is None:
            raise LookupError("no --nanogpt given")
        return ("nanogpt", *nanogpt_reference(shape, nanogpt))
    if shape.family == "bert":
        return ("transformers BertForMaskedLM", *bert_reference(shape))
    return ("transformers T5ForConditionalGeneration", *t5_reference(shape))


class Competitor:
    """One model with its optimizer and step, timed a few steps at a time."""

    def __init__(
        self, name: str, model: nn.Module, loss: StepLoss, device: torch.device, compiled: bool
    ) -> None:
        self.name = name
        self.model = model.to(device)
        # Ours as `budgetlm train` compiles it (block by block); a reference whole.
        self.forward: Callable[..., Any] = model
        if compiled:
            self.forward = compile_model(model) if name == OURS else torch.compile(model)
        self.params = sum(p.numel() for p in model.parameters())
        fused = device.type == "cuda" or None  # fused AdamW exists on CUDA only
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
        self.loss = loss
        self.device = device
        self.times: list[float] = []
        self.warmup_s = 0.0
        self.compiled = compiled

    def step(self, batch: Batch, autocast: Any) -> float:
        sync(self.device)
        t = time.perf_counter()
        with autocast:
            loss = self.loss(self.forward, batch)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync(self.device)
        elapsed = time.perf_counter() - t
        if not math.isfinite(loss.item()):  # checked outside the timing: a host read
            raise FloatingPointError(f"{self.name}: non-finite loss")
        return elapsed


def autocast_for(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()  # fp32 on CPU: no bf16 units there


def competitors(
    preset: str, device: torch.device, compiled: bool, nanogpt: ModuleType | None
) -> tuple[list[Competitor], str | None]:
    """Ours and the reference (or ours alone, with the reason the reference was skipped)."""
    shape = get_shape(preset)
    torch.manual_seed(0)
    out = [Competitor(OURS, build_model(shape), lambda m, b: m(b).loss, device, compiled)]
    try:
        torch.manual_seed(0)
        name, model, loss = reference(shape, nanogpt)
    except (LookupError, ValueError) as e:
        return out, str(e)
    out.append(Competitor(name, model, loss, device, compiled))
    return out, None


def compare(
    preset: str,
    batch_size: int,
    repeats: int,
    steps: int,
    warmup: int,
    compiled: bool,
    device: torch.device,
    nanogpt: ModuleType | None,
) -> dict[str, Any]:
    shape = get_shape(preset)
    runners, skipped = competitors(preset, device, compiled, nanogpt)
    batch = synthetic_batch(shape, batch_size, device)
    autocast = autocast_for(device)
    for c in runners:  # warm-up (and compilation) first, each alone, untimed
        t = time.perf_counter()
        for _ in range(warmup):
            c.step(batch, autocast)
        c.warmup_s = time.perf_counter() - t
    for _ in range(repeats):  # round-robin: drift hits every competitor alike
        for c in runners:
            c.times += [c.step(batch, autocast) for _ in range(steps)]
    tokens = batch_size * shape.seq_len
    row: dict[str, Any] = {
        "preset": preset,
        "family": shape.family,
        "batch": batch_size,
        "seq_len": shape.seq_len,
        "target_len": shape.target_len or None,
        "vocab_size": shape.vocab_size,
        "compiled": compiled,
        "dtype": "bf16" if device.type == "cuda" else "fp32",
        "repeats": repeats,
        "steps_per_repeat": steps,
        "competitors": {c.name: _figures(c, tokens) for c in runners},
    }
    if skipped:
        row["reference_skipped"] = skipped
        row["ratio"] = None
    else:
        ours, ref = runners
        # ours / reference in tokens/s (equal tokens per step: the inverse ratio of step times)
        row["ratio"] = statistics.median(ref.times) / statistics.median(ours.times)
    del runners
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _figures(c: Competitor, tokens: int) -> dict[str, Any]:
    step = statistics.median(c.times)
    return {
        "step_s": step,
        "step_s_min": min(c.times),
        "tokens_per_s": tokens / step,
        "warmup_s": round(c.warmup_s, 2),
        "params": c.params,
        "steps": len(c.times),
    }


def machine(device: torch.device) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "gpu": gpu,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }


def _version(package: str) -> str | None:
    try:
        return __import__(package).__version__
    except ImportError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS)
    ap.add_argument("--batch", type=int, help="examples per step (default: by family, 32/128/32)")
    ap.add_argument("--repeats", type=int, default=5, help="round-robin rounds")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per competitor per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", choices=["no", "yes", "both"], default="yes")
    ap.add_argument("--nanogpt", help="path to nanoGPT's model.py (kept outside this repository)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="JSONL file to append to")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    nanogpt = load_module(args.nanogpt) if args.nanogpt else None
    out = Path(args.out or Path(__file__).parent / "results" / f"side-by-side-{device.type}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    info = machine(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    info["matmul_peak_flops"] = matmul_peak(device, dtype, 8192 if device.type == "cuda" else 512)
    modes = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    for preset in args.presets:
        family = get_shape(preset).family
        for compiled in modes:
            t = time.perf_counter()
            row = compare(
                preset,
                args.batch or DEFAULT_BATCH[family],
                args.repeats,
                args.steps,
                args.warmup,
                compiled,
                device,
                nanogpt,
            )
            row["elapsed_s"] = round(time.perf_counter() - t, 1)
            row["machine"] = info
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
            _print(row)
    print(f"appended to {out}")
    return 0


def _print(row: dict[str, Any]) -> None:
    figures = "  ".join(
        f"{name}: {c['tokens_per_s']:,.0f} tok/s" for name, c in row["competitors"].items()
    )
    ratio = f"ours/ref {row['ratio']:.2f}x" if row["ratio"] else row.get("reference_skipped")
    print(f"{row['preset']:<14} compile={row['compiled']!s:<5} {figures}  {ratio}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
