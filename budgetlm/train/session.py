"""From a Config to a ready Trainer: runtime, data, methods, model, optimizer, clock, resume.

`open_run` reads as the steps it takes; each lives in a module of its own (runtime.py,
run_data.py, pricing.py, resume.py). Everything that can fail from a bad setting fails here,
before the run directory is written. Under torchrun every rank opens the run; rank 0 alone
writes into its directory.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from budgetlm.api import Method, RunContext
from budgetlm.budget.clock import Budget, Clock
from budgetlm.config import Config, ConfigError, dump_yaml
from budgetlm.methods import build_methods
from budgetlm.models import ModelShape, build_model
from budgetlm.optim.factory import optimizer_from_config, optimizer_module
from budgetlm.schedules import make_schedule
from budgetlm.train.checkpoint import load_checkpoint
from budgetlm.train.distributed import (
    Dist,
    DistributedConfigError,
    check_supported,
    load_full_optimizer_state,
    shard_model,
)
from budgetlm.train.loop import Trainer
from budgetlm.train.metadata import run_metadata
from budgetlm.train.metrics import MetricsLog, truncate_after
from budgetlm.train.pricing import rst_pricing
from budgetlm.train.resume import RunExists, check_same_experiment, checkpoint_shape, resume_point
from budgetlm.train.run_data import (
    DataBundle,
    heldout_batches,
    resolve_data,
    tokens_per_example,
    train_stream,
)
from budgetlm.train.runtime import Runtime, setup_runtime
from budgetlm.train.state import TrainState

__all__ = ["RunExists", "default_run_dir", "finished_summary", "open_run"]


def open_run(
    cfg: Config,
    *,
    resume: str | None = None,
    methods: Sequence[Method] = (),
    progress: bool = True,
) -> Trainer:
    """Build the Trainer for `cfg`; `resume` is None, 'auto' or a checkpoint directory."""
    rt = setup_runtime(cfg.train)
    _check_parallel(cfg, rt.dist)
    budget = Budget.parse(cfg.budget)
    run_dir = default_run_dir(cfg)
    checkpoint = resume_point(run_dir, cfg, resume)
    data = _prepare_data(cfg, rt.dist, progress)
    context = RunContext(shape=data.shape, config=cfg, run_dir=run_dir, data=data)
    methods = _build_methods(cfg, methods, context)
    state, meta, warnings = _build_state(cfg, rt, data, budget, checkpoint, methods, context)
    if rt.dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if checkpoint is not None:
        _restore(state, checkpoint, meta, cfg, rt.dist)
    _start_attempt(run_dir, cfg, rt, data, state, checkpoint)
    # One list: warnings raised later (pricing a grown shape) land in the checkpointed state.
    warnings[:] = list(dict.fromkeys([*state.info.get("warnings", []), *warnings]))
    state.info["warnings"] = warnings
    return _make_trainer(cfg, rt, data, state, run_dir, meta)


def default_run_dir(cfg: Config) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir)
    name = cfg.run.name or "run"
    return Path(cfg.run.out_dir) / f"{name}-{cfg.hash()[:8]}"


def _prepare_data(cfg: Config, dist: Dist, progress: bool) -> DataBundle:
    """Rank 0 prepares (tokenizes, writes shards) first; the others then read its cache."""
    if not dist.is_main:
        dist.barrier()
    data = resolve_data(cfg, progress=progress and cfg.train.progress_bar and dist.is_main)
    if dist.is_main:
        dist.barrier()
    return data


def _build_methods(cfg: Config, given: Sequence[Method], context: RunContext) -> list[Method]:
    try:
        return [*given, *build_methods(cfg.method, cfg.methods, context)]
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _build_state(
    cfg: Config,
    rt: Runtime,
    data: DataBundle,
    budget: Budget,
    checkpoint: Path | None,
    methods: list[Method],
    context: RunContext,
) -> tuple[TrainState, dict[str, Any], list[str]]:
    """Model (at the checkpoint's shape: a grown run resumes grown), optimizer (with its
    companion method, e.g. Sophia's Hessian pass), clock; and what a checkpoint must match."""
    torch.manual_seed(cfg.run.seed)
    shape = checkpoint_shape(checkpoint) or data.shape
    model = build_model(shape).to(rt.device)
    if rt.dist.mode == "fsdp":
        # Sharding comes before the optimizer (it must see the sharded parameters), so a
        # resumed run loads its full weights first.
        if checkpoint is not None:
            model.load_state_dict(load_checkpoint(checkpoint)["model"])
        shard_model(model)
    try:
        optimizer = optimizer_from_config(cfg.optim, model, rt.device)
    except ValueError as e:
        raise ConfigError(f"optim: {e}") from e
    module = optimizer_module(cfg.optim.name)
    if module is not None and hasattr(module, "method_for"):
        companion = module.method_for(optimizer, context)
        if companion is not None:
            methods.append(companion)
    warnings: list[str] = []
    rst_table, rst_cost = rst_pricing(cfg, budget, shape, warnings)
    clock = Clock(budget, extra_costs={"rst": rst_cost} if rst_cost else {})
    state = TrainState(
        model=model,
        optimizer=optimizer,
        clock=clock,
        methods=list(methods),
        device=rt.device,
        autocast=rt.autocast,
        dist=rt.dist,
    )
    meta = {
        "config_hash": cfg.hash(),
        "dataset_key": data.dataset.meta.get("key"),
        "rst_table": rst_table.hash if rst_cost else None,
    }
    if rt.dist.mode == "fsdp":
        meta["optimizer_format"] = "fqn"
    return state, meta, warnings


def _restore(
    state: TrainState, checkpoint: Path, meta: dict[str, Any], cfg: Config, dist: Dist
) -> None:
    fsdp = dist.mode == "fsdp"
    saved = state.load(
        checkpoint,
        model_loaded=fsdp,
        load_optimizer=(
            (lambda sd: load_full_optimizer_state(state.model, state.optimizer, sd))
            if fsdp
            else None
        ),
    )
    check_same_experiment(checkpoint, saved, meta, cfg)


def _start_attempt(
    run_dir: Path,
    cfg: Config,
    rt: Runtime,
    data: DataBundle,
    state: TrainState,
    checkpoint: Path | None,
) -> None:
    """Rank 0 cuts the metrics back to the checkpoint (or starts them afresh: a first attempt
    that died before its first checkpoint leaves nothing), writes the resolved config and
    appends this attempt to meta.json."""
    if rt.dist.is_main:
        if checkpoint is not None:
            truncate_after(run_dir / "metrics.jsonl", state.step)
        else:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
        _append_metadata(run_dir, rt.device, data, state.model.shape, checkpoint, rt.dist)
    rt.dist.barrier()


def _make_trainer(
    cfg: Config,
    rt: Runtime,
    data: DataBundle,
    state: TrainState,
    run_dir: Path,
    checkpoint_meta: dict[str, Any],
) -> Trainer:
    stream = train_stream(cfg, data)
    state.data = stream
    log = None
    if rt.dist.is_main:  # rank 0 alone logs, to metrics.jsonl and to the trackers
        from budgetlm.train.tracking import open_trackers

        trackers = open_trackers(cfg, run_dir, resumed_at=state.step)
        log = MetricsLog(run_dir / "metrics.jsonl", trackers)
    return Trainer(
        state=state,
        stream=stream,
        eval_batches=heldout_batches(cfg, data),
        schedule=make_schedule(cfg.schedule.name, cfg.optim.lr, **cfg.schedule.options()),
        device=rt.device,
        cfg=cfg.train,
        run_dir=run_dir,
        tokens_per_example=tokens_per_example(data.objective),
        grad_clip=cfg.optim.grad_clip,
        checkpoint_meta=checkpoint_meta,
        compile=cfg.train.compile,
        optimizer_name=cfg.optim.name,
        autocast=rt.autocast,
        log=log,
    )


def _check_parallel(cfg: Config, dist: Dist) -> None:
    from budgetlm.registry import parse_method_spec

    try:
        check_supported(dist, parse_method_spec(cfg.method), cfg.optim.name, cfg.train.batch_size)
    except DistributedConfigError as e:
        raise ConfigError(str(e)) from e
    if dist.active:
        local = cfg.train.batch_size // dist.world
        micro = cfg.train.micro_batch_size or local
        if local % micro:
            raise ConfigError(
                f"train.micro_batch_size {micro} must divide the per-rank batch {local} "
                f"(train.batch_size {cfg.train.batch_size} over {dist.world} ranks)"
            )


def _append_metadata(
    run_dir: Path,
    device: torch.device,
    data: DataBundle,
    shape: ModelShape,
    resumed_from: Path | None,
    dist: Dist | None = None,
) -> None:
    path = run_dir / "meta.json"
    meta = json.loads(path.read_text()) if path.is_file() else {"attempts": []}
    entry = run_metadata(device)
    entry["resumed_from"] = str(resumed_from) if resumed_from else None
    entry["parallel"] = {"mode": dist.mode, "world": dist.world} if dist else None
    meta["attempts"].append(entry)
    meta["dataset"] = {"path": str(data.dataset.path), **data.dataset.meta}
    meta["shape"] = dataclasses.asdict(shape)  # as built: a grown run resumes grown
    from budgetlm.models import count_params

    meta["params"] = count_params(shape)
    meta["params_non_embedding"] = count_params(shape, embeddings=False)
    path.write_text(json.dumps(meta, indent=2, default=str) + "\n")


def finished_summary(cfg: Config) -> dict[str, Any] | None:
    """The summary of a run with this config that already spent its budget, if any."""
    path = default_run_dir(cfg) / "summary.json"
    if path.is_file():
        summary = json.loads(path.read_text())
        if summary.get("status") == "finished":
            return summary
    return None
