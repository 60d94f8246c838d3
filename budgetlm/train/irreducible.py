"""Train RHO-loss's irreducible-loss (IL) model and write its table (`budgetlm rho prepare`).

Given the config a RHO-loss run will train with, this
1. derives the IL run's config (the same, without methods, plus `methods.rho_loss.il.*`
   overrides: e.g. `methods.rho_loss.il.budget=2000steps` or `...il.model.n_layers=2`);
2. trains it with the project's one loop (`open_run`), on the held-out ids only (the
   `HoldoutTraining` method), in `<table>/il_run/` (a normal run directory: interrupt and re-run
   to continue, `--force` to retrain);
3. scores every non-held-out training example with the IL model (eval mode, no gradients) and
   writes the table keyed by example id, with checksums and the data identity
   (budgetlm/methods/rho_loss.py). The IL model's cost (its run's spending in every unit plus the
   scoring forwards) is stored in the table; RHO-loss runs report it beside their own.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from budgetlm.config import Config
    from budgetlm.methods.rho_loss import RhoLoss

_SCORE_STREAM = 0x494C_5343  # seeds of the fixed masks IL losses are scored under


class ILRunStopped(RuntimeError):
    """The IL model's run stopped before its budget was spent (a stop signal): run again."""


def score_examples(
    model: torch.nn.Module,
    tokens: np.ndarray,
    objective: Any,
    ids: np.ndarray,
    *,
    num_examples: int,
    batch_size: int,
    device: torch.device,
    autocast: Any,
    samples: int = 1,
) -> tuple[np.ndarray, dict[str, Any]]:
    """IL loss of each example in `ids`, stored at its id in a (num_examples,) array (NaN
    elsewhere), and what scoring cost. BERT/T5 masks come from (stream, id, sample): fixed per
    example, whatever order or batch the example is scored in."""
    import numpy as np
    import torch

    from budgetlm.models import forward_flops

    if objective.name == "causal_lm":
        samples = 1  # nothing random to average over
    out = np.full(num_examples, np.nan, dtype=np.float32)
    was_training = model.training
    model.eval()
    flops, started = 0.0, time.perf_counter()
    try:
        with torch.no_grad():
            for start in range(0, len(ids), batch_size):
                chunk = np.asarray(ids[start : start + batch_size], dtype=np.int64)
                total = np.zeros(len(chunk), dtype=np.float64)
                for r in range(samples):
                    rngs = [np.random.default_rng([_SCORE_STREAM, int(i), r]) for i in chunk]
                    batch = objective.make_batch(tokens, chunk, rngs)
                    batch = {k: v.to(device) for k, v in batch.items()}
                    with autocast():
                        loss = model(batch).per_example_loss
                    total += loss.float().cpu().numpy()
                    flops += forward_flops(model.shape, len(chunk))
                out[chunk] = (total / samples).astype(np.float32)
    finally:
        model.train(was_training)
    cost = {
        "examples": int(len(ids)),
        "samples": samples,
        "forward_flops": flops,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return out, cost


def rho_options(cfg: Config) -> RhoLoss.Options:
    from budgetlm.config import build_dataclass
    from budgetlm.methods.rho_loss import RhoLoss, check_options

    raw = dict(cfg.methods.get("rho_loss", {}) or {})
    options = build_dataclass(RhoLoss.Options, raw, "methods.rho_loss.")
    check_options(options)
    return options


def prepare_il_table(cfg: Config, *, progress: bool = True, force: bool = False) -> Path:
    """Train the IL model for the run `cfg` describes and write its table; return the table dir.

    An up-to-date table (same key and data identity) is kept unless `force`.
    """
    from budgetlm.config import ConfigError
    from budgetlm.methods.rho_loss import (
        TABLE_JSON,
        HoldoutTraining,
        ILTableError,
        data_identity,
        identity_differences,
        il_config,
        load_il_table,
        split_ids,
        table_dir,
        table_key,
        write_il_table,
    )
    from budgetlm.train.run_data import resolve_data
    from budgetlm.train.session import open_run

    options = rho_options(cfg)
    directory = table_dir(cfg, options)
    key = table_key(cfg, options)
    data = resolve_data(cfg, progress=progress)
    identity = data_identity(data.dataset, data.objective, options.holdout_fraction)
    if not force and (directory / TABLE_JSON).is_file():
        try:
            table = load_il_table(directory)
        except ILTableError:
            table = None
        if (
            table is not None
            and table.meta.get("key") == key
            and not identity_differences(table.meta.get("identity", {}), identity)
        ):
            return directory

    il_cfg = il_config(cfg, options)
    il_cfg.run.dir = str(directory / "il_run")
    il_cfg.train.progress_bar = il_cfg.train.progress_bar and progress
    if force and (directory / "il_run").exists():
        shutil.rmtree(directory / "il_run")
    try:
        trainer = open_run(
            il_cfg,
            resume="auto",
            methods=[HoldoutTraining(options.holdout_fraction)],
            progress=progress,
        )
    except ConfigError as e:
        if "cannot resume" not in str(e):
            raise
        raise ConfigError(
            f"{directory / 'il_run'} holds an IL run made with other settings ({e}); retrain it "
            "with `budgetlm rho prepare ... --force`, or set methods.rho_loss.table elsewhere"
        ) from e
    try:
        summary = trainer.run()
    finally:
        if trainer.log is not None:
            trainer.log.close()
    if summary["status"] != "finished":
        raise ILRunStopped(
            f"the IL run stopped ({summary['status']}) at step {summary['steps']} in "
            f"{trainer.run_dir}"
        )

    stream = trainer.stream
    train_ids, held_ids = split_ids(stream.num_examples, options.holdout_fraction)
    tcfg = il_cfg.train
    il_loss, scoring = score_examples(
        trainer.state.model,
        stream.tokens,
        stream.objective,
        train_ids,
        num_examples=stream.num_examples,
        batch_size=tcfg.eval_batch_size or tcfg.micro_batch_size or tcfg.batch_size,
        device=trainer.device,
        autocast=trainer.autocast,
        samples=options.il_samples,
    )
    spent = dict(summary["spent"])
    meta = {
        "key": key,
        "identity": identity,
        "holdout": {"n_train": int(len(train_ids)), "n_held_out": int(len(held_ids))},
        "il_samples": options.il_samples,
        "il_run": str(trainer.run_dir),
        "il_config": il_cfg.to_dict(),
        "il_val_loss": summary.get("final_val_loss"),
        "il_cost": {
            "train": spent,
            "train_steps": summary["steps"],
            "scoring": scoring,
            "total_flops": spent.get("flops", 0.0) + scoring["forward_flops"],
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return write_il_table(directory, il_loss, meta)
