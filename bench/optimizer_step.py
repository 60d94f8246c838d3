"""Seconds of one AdamW step on a preset's parameters: torch's default path against fused.

    python bench/optimizer_step.py --presets gpt-tiny --repeats 20 --rounds 3

The two run in alternating rounds in one process (a shared machine's slow spell hits both), each
after 3 untimed steps, on random gradients; prints the mean ms per step of each round. This is
the figure behind `budgetlm/optim/factory.py` taking the fused kernel on CPU too.
"""

from __future__ import annotations

import argparse
import time

import torch

from budgetlm.models import build_model, get_shape


def step_ms(model: torch.nn.Module, fused: bool | None, repeats: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    for _ in range(3):
        optimizer.step()
    start = time.perf_counter()
    for _ in range(repeats):
        optimizer.step()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["gpt-tiny"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for preset in args.presets:
        torch.manual_seed(0)
        model = build_model(get_shape(preset))
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        for r in range(args.rounds):
            default, fused = step_ms(model, None, args.repeats), step_ms(model, True, args.repeats)
            print(f"{preset} round {r + 1}: default {default:.2f} ms, fused {fused:.2f} ms")


if __name__ == "__main__":
    main()
