"""Grow a saved checkpoint (width or depth x k) into a new run directory (`budgetlm grow`).

The new directory holds the run's config (with run.dir pointing at it), its metrics up to the
checkpoint, and one checkpoint at the same step whose model, optimizer state and recorded shape
are grown (budgetlm/methods/growth_operators.py). Resuming rebuilds the model at the
checkpoint's shape and continues the same budget from the same progress, on the config's
schedule: the schedule transfer of `method=staged` does not apply to an offline growth.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any


def _resolve(path: Path) -> tuple[Path, Path]:
    """(run directory, checkpoint directory) from either of them."""
    from budgetlm.train.checkpoint import CheckpointError, newest_to_load

    if (path / "checkpoints").is_dir():
        return path, newest_to_load(path)
    if not (path / "manifest.json").is_file():
        raise CheckpointError(f"{path}: not a run directory or a complete checkpoint")
    return path.parent.parent, path


def grow_checkpoint(
    path: Path,
    op: str,
    factor: int,
    *,
    variant: str = "identity",
    mode: str = "interleave",
    noise: float = 0.0,
    out: Path | None = None,
) -> dict[str, Any]:
    """Grow the checkpoint at `path` into the run directory `out`; return what was done."""
    import torch

    from budgetlm.config import ConfigError, dump_yaml, load_config
    from budgetlm.methods.growth_operators import build_grown_optimizer, grow
    from budgetlm.models import ModelShape, build_model, count_params
    from budgetlm.optim.factory import optimizer_from_config
    from budgetlm.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from budgetlm.train.metrics import truncate_after

    run_dir, checkpoint = _resolve(path)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{checkpoint}: its run directory {run_dir} has no config.yaml")
    cfg = load_config(run_dir / "config.yaml")
    parts = load_checkpoint(checkpoint)
    trainer = parts["trainer"]
    shape = ModelShape(**trainer["shape"])
    out = out or run_dir.with_name(f"{run_dir.name}-{op}{factor}")
    if (out / "checkpoints").exists():
        raise ConfigError(f"{out} already holds checkpoints; choose another --out")

    def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
        return optimizer_from_config(cfg.optim, model)

    model = build_model(shape)
    model.load_state_dict(parts["model"])
    optimizer = make_optimizer(model)
    optimizer.load_state_dict(parts["optimizer"])
    generator = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + int(trainer["step"]))
    try:
        grown = grow(
            model,
            optimizer,
            op,
            factor=factor,
            mode=mode,
            variant=variant,
            noise=noise,
            generator=generator,
        )
    except ValueError as e:
        raise ConfigError(f"grow: {e}") from e
    new_optimizer = build_grown_optimizer(grown, make_optimizer)

    info = dict(trainer.get("info", {}))
    info["grown"] = [
        *info.get("grown", []),
        {"op": op, "factor": factor, "variant": variant, "mode": mode, "from": str(checkpoint)},
    ]
    new_parts = {
        **parts,
        "model": grown.model.state_dict(),
        "optimizer": new_optimizer.state_dict(),
        "trainer": {**trainer, "shape": dataclasses.asdict(grown.shape), "info": info},
    }
    out.mkdir(parents=True, exist_ok=True)
    saved = save_checkpoint(out / "checkpoints", int(trainer["step"]), new_parts)
    cfg.run.dir = str(out)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    for name in ("metrics.jsonl", "meta.json"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out / name)
    truncate_after(out / "metrics.jsonl", int(trainer["step"]))
    return {
        "run_dir": str(out),
        "checkpoint": str(saved),
        "from": _label(shape),
        "to": _label(grown.shape),
        "params_before": count_params(shape),
        "params_after": count_params(grown.shape),
        "dropout": grown.shape.dropout,
    }


def _label(shape: Any) -> str:
    depth = f"{shape.n_layers}/{shape.n_decoder_layers}" if shape.family == "t5" else shape.n_layers
    return f"{shape.family} L{depth} d{shape.d_model} heads {shape.n_heads} d_ff {shape.d_ff}"
