"""Fabricated compare folders: cells with planted final losses, for report and statistics tests."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from budgetlm.compare.run.experiment import Cell, Experiment
from budgetlm.compare.run.experiment_file import experiment_from_dict

GPT_BASE = {
    "model": {"preset": "gpt-tiny"},
    "data": {"corpus": "fixture", "vocab_size": 2048},
    "optim": {"lr": 3e-3},
}


def planted_experiment(out: Path, raw: dict) -> Experiment:
    raw = {"config": GPT_BASE, "budgets": ["20steps"], **raw}
    exp = experiment_from_dict(raw, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps({**exp.to_dict(), "command": "test"}))
    return exp


def plant_cell(
    exp: Experiment,
    out: Path,
    cell: Cell,
    loss: float | None,
    *,
    steps: int = 20,
    rst: float = 10.0,
    by_purpose: dict | None = None,
    error: str | None = None,
    train_loss: float | None = None,
    epochs: float = 0.1,
    device: dict | None = None,
    shapes: tuple | None = None,
) -> Path:
    """A finished cell with final held-out `loss` (or a failed one with `error`).

    Its metrics log has training records every 5 steps, the last one at `train_loss` (default:
    `loss` - 0.1); summary.json says the run made `epochs` passes; meta.json records `device`;
    `shapes` (start, end ModelShape) writes the shape.json a finished cell writes.
    """
    run_dir = out / "cells" / cell.id
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = exp.config_for(cell, out)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if error is not None:
        (run_dir / "error.json").write_text(
            json.dumps({"type": "Diverged", "message": error, "traceback": ""})
        )
        return run_dir
    curve = [
        {"event": "eval", "step": s, "p": s / steps, "rst_s": rst * s / steps, "val_loss": v}
        for s, v in ((0, 8.0), (steps // 2, (8.0 + loss) / 2), (steps, loss))
    ]
    last_train = loss - 0.1 if train_loss is None else train_loss
    train = [
        {"event": "train", "step": s, "p": s / steps, "loss": last_train + (steps - s) / steps}
        for s in range(5, steps + 1, 5)
    ]
    records = sorted(train + curve, key=lambda r: (r["step"], r["event"] == "eval"))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {
        "status": "finished",
        "steps": steps,
        "epochs": epochs,
        "final_val_loss": loss,
        "spent": {"steps": steps, "tokens": 1e4, "flops": 1e9, "seconds": 2 * rst, "rst": rst},
        "spent_by_purpose": {"rst": by_purpose or {"training": 0.9 * rst, "optimizer": 0.1 * rst}},
        "warnings": [],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    device = device or {
        "type": "cpu",
        "cpu": "Planted CPU 9000",
        "cpu_count": 8,
        "torch_threads": 2,
    }
    meta = {"attempts": [{"budgetlm": "test", "git": {"revision": "abc"}, "device": device}]}
    (run_dir / "meta.json").write_text(json.dumps(meta))
    if shapes is not None:
        plant_shapes(run_dir, *shapes)
    return run_dir


def plant_shapes(run_dir: Path, start, end=None) -> None:
    """shape.json as a finished cell writes it: the shapes it started and ended with."""
    from budgetlm.compare.run.shapes import SHAPE_FILE, shape_facts

    record = {"start": shape_facts(start), "end": shape_facts(end or start)}
    (run_dir / SHAPE_FILE).write_text(json.dumps(record))


# A grid of four arms x four seeds at one budget: "good" is clearly better than the baseline,
# "same" is not distinguishable, "sb" (selective backprop) is worse and lost its 4th seed.
BASE = [3.00, 3.02, 2.98, 3.01]
BETTER = [2.50, 2.52, 2.49, 2.51]
SAME = [3.01, 2.99, 3.02, 2.97]
WORSE = [3.51, 3.52, 3.53]
# Each arm's last training-step loss is TRAIN[arm] + seed / 100, and it made EPOCHS[arm] passes.
TRAIN = {"baseline": 2.75, "good": 2.30, "same": 2.80, "sb": 3.10}
EPOCHS = {"baseline": 0.125, "good": 0.125, "same": 0.25, "sb": 0.0625}
SB_SPENT = {"training": 6.0, "selection": 3.0, "optimizer": 1.0}


def planted_grid(out: Path) -> Experiment:
    exp = planted_experiment(
        out,
        {
            "seeds": [1, 2, 3, 4],
            "arms": [
                {"name": "baseline"},
                {"name": "good"},
                {"name": "same"},
                {"name": "sb", "method": "selective_backprop"},
            ],
        },
    )
    losses = {"baseline": BASE, "good": BETTER, "same": SAME, "sb": WORSE}
    for arm, values in losses.items():
        for seed in range(1, 5):
            cell = Cell(arm, "20steps", seed)
            if seed > len(values):
                plant_cell(exp, out, cell, None, error="loss is nan at step 3")
                continue
            plant_cell(
                exp,
                out,
                cell,
                values[seed - 1],
                train_loss=TRAIN[arm] + seed / 100,
                epochs=EPOCHS[arm],
                by_purpose=SB_SPENT if arm == "sb" else None,
            )
    return exp


# -- final loss against budget: a known power law -------------------------------------------------
#
# Every run's final loss is LAW(budget) plus a per-seed offset that every arm shares (a seed fixes
# the initialisation and the data order: what pairing removes) plus a little independent noise.

LAW = (1.5, 0.6, 4.0)  # a, b, c of L(B) = a * (B / 120)**(-b) + c, B in RST seconds
LAW_SCALE = 120.0
POWER_BUDGETS = ("15s-rst", "30s-rst", "60s-rst", "120s-rst")
POWER_SEEDS = (1, 2, 3, 4)
SEED_EFFECT = {1: 0.02, 2: -0.015, 3: 0.005, 4: -0.01}  # sums to 0: means follow the law
NOISE = 0.0005
STEPS = 20
# Spend shares by purpose (of the charge) and the steps they bought. The baseline pays 0.045 of
# its budget per step for training and 0.005 for the optimizer; "selection" arms pay the same
# per step, so only their selection forwards are priced unlike the baseline's.
BASE_SPEND = ({"training": 0.9, "optimizer": 0.1}, STEPS)
SELECTION_SPEND = ({"training": 0.45, "selection": 0.5, "optimizer": 0.05}, STEPS // 2)


def law(amount: float) -> float:
    a, b, c = LAW
    return a * (amount / LAW_SCALE) ** (-b) + c


def noise(arm: str, budget: str, seed: int) -> float:
    """Deterministic small noise, different per cell."""
    import zlib

    u = zlib.crc32(f"{arm}/{budget}/{seed}".encode()) / 2**32
    return NOISE * (2 * u - 1)


def plant_power_law_grid(
    out: Path,
    arms: dict,
    budgets: tuple[str, ...] = POWER_BUDGETS,
    seeds: tuple[int, ...] = POWER_SEEDS,
) -> Experiment:
    """A grid whose arm `name` ends at ``loss(amount, seed)`` at every budget and seed.

    ``arms``: name -> ``(loss, spend)`` with ``spend`` = (shares by purpose, steps) or None for
    the baseline's. The first arm is the baseline.
    """
    from budgetlm.budget.clock import Budget

    exp = planted_experiment(
        out,
        {"seeds": list(seeds), "budgets": list(budgets), "arms": [{"name": n} for n in arms]},
    )
    for name, (loss, spend) in arms.items():
        shares, steps = spend or BASE_SPEND
        for budget in budgets:
            amount = Budget.parse(budget).amount
            for seed in seeds:
                plant_cell(
                    exp,
                    out,
                    Cell(name, budget, seed),
                    loss(amount, seed) + noise(name, budget, seed),
                    steps=steps,
                    rst=amount,
                    by_purpose={k: v * amount for k, v in shares.items()},
                )
    return exp


def baseline_loss(amount: float, seed: int) -> float:
    return law(amount) + SEED_EFFECT[seed]


def slow_loss(amount: float, seed: int) -> float:
    """Worth 0.8x its budget: the baseline's loss at 0.8 times the budget."""
    return law(0.8 * amount) + SEED_EFFECT[seed]


def fast_loss(amount: float, seed: int) -> float:
    """Worth 2x its budget (beyond the baseline's largest budget at the largest one)."""
    return law(2.0 * amount) + SEED_EFFECT[seed]


def small_gain_loss(amount: float, seed: int) -> float:
    return law(amount) - 0.01 + SEED_EFFECT[seed]


def large_gain_loss(amount: float, seed: int) -> float:
    return law(amount) - 0.3 + SEED_EFFECT[seed]


POWER_ARMS = {
    "baseline": (baseline_loss, None),
    "slow": (slow_loss, None),
    "fast": (fast_loss, None),
    "sel_small": (small_gain_loss, SELECTION_SPEND),
    "sel_large": (large_gain_loss, SELECTION_SPEND),
}
