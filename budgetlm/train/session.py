"""From a Config to a ready Trainer: runtime, data, methods, model, optimizer, clock, resume.

`open_run` reads as the steps it takes; each lives in a module of its own (runtime.py,
run_data.py, pricing.py, resume.py). Everything that can fail from a bad setting fails here;
what can fail before the run directory is needed (the data) fails before it is created, and an
attempt that fails later on a folder that held no run removes what it created there, so a failed
first `train` leaves no half-made run folder behind.

The run folder is locked (run_lock.py) from before its history is read until the trainer is
closed (`trainer.log.close()` releases it): a second process is refused with RunBusy. Under
torchrun every rank opens the run; rank 0 alone locks and writes into its directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from budgetlm.api import Method, RunContext
from budgetlm.budget.clock import Budget, Clock
from budgetlm.config import Config, ConfigError, dump_yaml, resume_drift
from budgetlm.methods import build_methods
from budgetlm.models import ModelShape, build_model
from budgetlm.optim.factory import optimizer_from_config, optimizer_module
from budgetlm.schedules import make_schedule
from budgetlm.train.checkpoint import load_checkpoint, remove_partial, storage_guard
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
from budgetlm.train.resume import (
    RunExists,
    check_same_experiment,
    checkpoint_shape,
    restart_run,
    resume_point,
    run_history,
)
from budgetlm.train.run_data import (
    DataBundle,
    heldout_batches,
    resolve_data,
    tokens_per_example,
    train_stream,
)
from budgetlm.train.run_lock import RunLock
from budgetlm.train.runtime import Runtime, setup_runtime
from budgetlm.train.state import TrainState

__all__ = ["RunExists", "default_run_dir", "finished_summary", "open_run"]


def open_run(
    cfg: Config,
    *,
    resume: str | None = None,
    restart: bool = False,
    methods: Sequence[Method] = (),
    progress: bool = True,
) -> Trainer:
    """Build the Trainer for `cfg`; `resume` is None, 'auto' or a checkpoint directory;
    `restart` starts over a run folder that has history (moving its files to previous/).

    The returned trainer holds the run folder's lock until `trainer.log.close()`."""
    if restart and resume is not None:
        raise ConfigError("--restart starts the run over and --resume continues it: give one")
    rt = setup_runtime(cfg.train)
    _check_parallel(cfg, rt.dist)
    budget = Budget.parse(cfg.budget)
    run_dir = default_run_dir(cfg)
    data = _prepare_data(cfg, rt.dist, progress)
    folder = _RunFolder(run_dir)
    trainer = None
    try:
        notes = (
            rt.dist.on_main(lambda: folder.open(restart), rt.device, "open the run folder") or {}
        )
        point = resume_point(run_dir, cfg, resume)
        checkpoint = point.checkpoint
        context = RunContext(shape=data.shape, config=cfg, run_dir=run_dir, data=data)
        methods = _build_methods(cfg, methods, context)
        state, meta, warnings = _build_state(cfg, rt, data, budget, checkpoint, methods, context)
        if checkpoint is not None:
            _restore(state, checkpoint, meta, cfg, rt.dist)
        news = [*notes.get("warnings", []), *point.warnings]
        if rt.dist.is_main:
            for message in news:
                print(f"warning: {message}", file=sys.stderr)
        _start_attempt(run_dir, cfg, rt, data, state, checkpoint, notes.get("restarted"))
        # One list: warnings raised later (pricing a grown shape) land in the checkpointed state.
        warnings[:] = list(dict.fromkeys([*state.info.get("warnings", []), *warnings, *news]))
        state.info["warnings"] = warnings
        trainer = _make_trainer(cfg, rt, data, state, run_dir, meta, folder.lock)
        if trainer.log is not None:
            for message in news:
                trainer.log.note(
                    {
                        "event": "warning",
                        "step": state.step,
                        "p": round(state.clock.progress, 6),
                        "message": message,
                    }
                )
    except BaseException:
        if trainer is not None and trainer.log is not None:
            trainer.log.lock = None  # the folder releases it, once it is tidied
            trainer.log.close()
        folder.fail()
        raise
    return trainer


class _RunFolder:
    """The run folder as one attempt finds it: rank 0 locks it, tidies it (half-written
    checkpoints of a killed save; the old files on --restart), and, when the attempt fails and
    the folder held no run, removes what the attempt created there."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.lock: RunLock | None = None
        self._created: list[Path] = []  # the folders this attempt created, innermost first
        self._before: set[str] = set()
        self._had_history = True  # until known otherwise: never remove what may be a run

    def open(self, restart: bool) -> dict[str, Any]:
        run_dir = self.run_dir
        self._created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
        self._before = set(os.listdir(run_dir)) if run_dir.is_dir() else set()
        try:
            with storage_guard(run_dir, "the run folder"):
                self.lock = RunLock(run_dir)
        except BaseException:
            # Not locked: another process may have made the folder meanwhile and be using it,
            # so only empty folders go.
            for path in self._created:
                with contextlib.suppress(OSError):
                    path.rmdir()
            raise
        notes: dict[str, Any] = {"warnings": []}
        if self.lock.took_over:
            notes["warnings"].append(self.lock.took_over)
        self._had_history = bool(run_history(run_dir))
        for tmp in remove_partial(run_dir / "checkpoints"):
            print(f"removed {tmp}: a checkpoint save that never finished", file=sys.stderr)
        if restart:
            moved = restart_run(run_dir)
            if moved is not None:
                print(f"--restart: the previous run's files are in {moved}", file=sys.stderr)
                notes["restarted"] = str(moved)
        return notes

    def fail(self) -> None:
        """The attempt failed: leave a folder without history as it was, and unlock it."""
        if self.lock is None:
            return
        try:
            if not self._had_history:
                if self._created:
                    self._remove_created()
                else:
                    for name in set(os.listdir(self.run_dir)) - self._before:
                        path = self.run_dir / name
                        if path.is_dir() and not path.is_symlink():
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            path.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            self.lock.release()

    def _remove_created(self) -> None:
        """The run folder, then the parents made for it while they are empty (another run may
        have been started in one of them meanwhile)."""
        if not self._created:
            return
        shutil.rmtree(self._created[0], ignore_errors=True)
        for parent in self._created[1:]:
            try:
                parent.rmdir()
            except OSError:
                break


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
        _check_optimizer_accepts(cfg)
        return [*given, *build_methods(cfg.method, cfg.methods, context)]
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _check_optimizer_accepts(cfg: Config) -> None:
    """Refuse a method the optimizer lists in `incompatible` (by the method's `name` or as
    written), before any method is built: a method that cannot be built either (RHO-loss without
    its table) would otherwise hide the refusal."""
    from budgetlm.methods import method_classes

    refused = set(getattr(optimizer_module(cfg.optim.name), "incompatible", ()))
    if not refused:
        return
    classes = method_classes(cfg.method)
    named = set(classes) | {cls.name for cls in classes.values()}
    if refused & named:
        raise ConfigError(
            f"optimizer {cfg.optim.name!r} cannot be combined with method {sorted(refused & named)}"
        )


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
    restarted: str | None = None,
) -> None:
    """Rank 0 cuts the metrics back to the checkpoint (or, on a fresh start, clears a log that
    holds no record: resume.py refused the start when it held any), writes the resolved config
    and appends this attempt to meta.json."""
    if rt.dist.is_main:
        if checkpoint is not None:
            truncate_after(run_dir / "metrics.jsonl", state.step)
        else:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        with storage_guard(run_dir, "the run's config and metadata into"):
            (run_dir / "config.yaml").write_text(dump_yaml(cfg))
            _append_metadata(
                run_dir, rt.device, data, state.model.shape, checkpoint, rt.dist, restarted
            )
    rt.dist.barrier()


def _make_trainer(
    cfg: Config,
    rt: Runtime,
    data: DataBundle,
    state: TrainState,
    run_dir: Path,
    checkpoint_meta: dict[str, Any],
    lock: RunLock | None = None,
) -> Trainer:
    stream = train_stream(cfg, data)
    state.data = stream
    log = None
    if rt.dist.is_main:  # rank 0 alone logs, to metrics.jsonl and to the trackers
        from budgetlm.train.tracking import open_trackers

        trackers = open_trackers(cfg, run_dir, resumed_at=state.step)
        try:
            log = MetricsLog(run_dir / "metrics.jsonl", trackers, lock=lock)
        except BaseException:
            if trackers is not None:
                with contextlib.suppress(Exception):
                    trackers.close()
            raise
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
    restarted: str | None = None,
) -> None:
    path = run_dir / "meta.json"
    meta = json.loads(path.read_text()) if path.is_file() else {"attempts": []}
    entry = run_metadata(device)
    entry["resumed_from"] = str(resumed_from) if resumed_from else None
    if restarted:
        entry["previous_run_moved_to"] = restarted
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
    run_dir = default_run_dir(cfg)
    path = run_dir / "summary.json"
    if path.is_file():
        summary = json.loads(path.read_text())
        if summary.get("status") == "finished":
            # A folder named by hand (run.dir) may hold a run of another config (another seed):
            # its result is not this config's answer.
            saved = run_dir / "config.yaml"
            changed = (
                resume_drift(yaml.safe_load(saved.read_text()), cfg.to_dict())
                if saved.is_file()
                else []
            )
            if changed:
                raise ConfigError(
                    f"{run_dir} holds a finished run of another config (it differs in "
                    f"{changed}); set another run.dir or undo those changes"
                )
            return summary
    return None
