"""Fabricated compare folders: cells with planted final losses, for report and statistics tests."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from budgetlm.compare.run.experiment import Cell, Experiment, experiment_from_dict

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
) -> Path:
    """A finished cell with final held-out `loss` (or a failed one with `error`)."""
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
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
    summary = {
        "status": "finished",
        "steps": steps,
        "epochs": 0.1,
        "final_val_loss": loss,
        "spent": {"steps": steps, "tokens": 1e4, "flops": 1e9, "seconds": 2 * rst, "rst": rst},
        "spent_by_purpose": {"rst": by_purpose or {"training": 0.9 * rst, "optimizer": 0.1 * rst}},
        "warnings": [],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    meta = {
        "attempts": [{"budgetlm": "test", "git": {"revision": "abc"}, "device": {"type": "cpu"}}]
    }
    (run_dir / "meta.json").write_text(json.dumps(meta))
    return run_dir
