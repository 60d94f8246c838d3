"""From a Config to a ready Trainer: data, shape, model, optimizer, clock, run directory, resume.

Everything that can fail from a bad setting fails here, before the run directory is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from budgetlm.api import Method
from budgetlm.budget.clock import Budget, Clock
from budgetlm.budget.rst import CostTable, TableError
from budgetlm.config import (
    RESUME_SAFE,
    Config,
    ConfigError,
    config_diff,
    dump_yaml,
    model_overrides,
)
from budgetlm.data import BatchStream, eval_batches, load_prepared, make_objective, prepare_dataset
from budgetlm.errors import UserError
from budgetlm.methods import RunContext, build_methods
from budgetlm.models import ModelShape, build_model, get_shape
from budgetlm.optim.factory import optimizer_from_config, optimizer_module
from budgetlm.schedules import make_schedule
from budgetlm.train.checkpoint import CheckpointError, complete_checkpoints
from budgetlm.train.distributed import (
    Dist,
    DistributedConfigError,
    check_supported,
    init_distributed,
    load_full_optimizer_state,
    shard_model,
)
from budgetlm.train.loop import Trainer
from budgetlm.train.metadata import run_metadata
from budgetlm.train.metrics import MetricsLog, truncate_after
from budgetlm.train.state import TrainState

FAMILY_DEFAULTS = {
    "gpt": ("bpe", "causal_lm"),
    "bert": ("wordpiece", "mlm"),
    "t5": ("unigram", "span_corruption"),
}


class RunExists(UserError, RuntimeError):
    """The run directory already holds a run and no --resume was given."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here")
    return device


def autocast_for(precision: str, device: torch.device):  # noqa: ANN201 - a context factory
    if precision == "bf16" and device.type != "cuda":
        raise ConfigError(
            "train.precision=bf16 is refused on CPU: these CPUs have no bf16 units and run it "
            "~25x slower than fp32. Use precision=fp32 (or auto)."
        )
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


@dataclass
class DataBundle:
    dataset: Any  # budgetlm.data.prepare.PreparedDataset
    objective: Any
    shape: ModelShape


def resolve_data(cfg: Config, progress: bool = True) -> DataBundle:
    """Prepare (or reuse) the dataset and fit the model shape to its tokenizer and objective."""
    shape = get_shape(cfg.model.preset, **model_overrides(cfg.model))
    default_tok, default_obj = FAMILY_DEFAULTS[shape.family]
    d = cfg.data
    objective_name = d.objective or default_obj
    if objective_name != default_obj:
        raise ConfigError(
            f"data.objective={objective_name} does not fit a {shape.family} model "
            f"(use {default_obj})"
        )
    if d.path:
        path = Path(d.path)
        if not (path / "meta.json").is_file():
            raise ConfigError(f"data.path={path} is not a prepared dataset (no meta.json)")
    else:
        source_kwargs = {"text_field": d.text_field, "hf_split": d.hf_split}
        if d.data_files:
            source_kwargs["data_files"] = d.data_files
        path = prepare_dataset(
            corpus=d.corpus,
            tokenizer=d.tokenizer or default_tok,
            vocab_size=d.vocab_size or shape.vocab_size,
            val_fraction=d.val_fraction,
            max_bytes=d.max_bytes,
            progress=progress,
            **source_kwargs,
        )
    dataset = load_prepared(path)
    params: dict[str, float] = {}
    if objective_name == "mlm":
        params = {"mask_prob": d.mask_prob}
    elif objective_name == "span_corruption":
        params = {"noise_density": d.noise_density, "mean_span": d.mean_span}
    objective = make_objective(objective_name, dataset.tokenizer, shape.seq_len, **params)
    # The model's vocabulary is the tokenizer's; T5's decoder length is the objective's.
    fit = {"vocab_size": dataset.tokenizer.vocab_size}
    if shape.family == "t5":
        fit["target_len"] = objective.targets_length
    return DataBundle(dataset, objective, dataclasses.replace(shape, **fit))


def default_run_dir(cfg: Config) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir)
    name = cfg.run.name or "run"
    return Path(cfg.run.out_dir) / f"{name}-{cfg.hash()[:8]}"


def tokens_per_example(objective: Any) -> int:
    """Stream tokens one example consumes (causal LM windows overlap by one token)."""
    return objective.raw_length - 1 if objective.name == "causal_lm" else objective.raw_length


def open_run(
    cfg: Config,
    *,
    resume: str | None = None,
    methods: Sequence[Method] = (),
    progress: bool = True,
) -> Trainer:
    """Build the Trainer for `cfg`; `resume` is None, 'auto' or a checkpoint directory.

    Under torchrun every rank calls this; rank 0 alone writes into the run directory."""
    device = resolve_device(cfg.train.device)
    dist = init_distributed(cfg.train.parallel, device.type)
    if dist.active and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    _check_parallel(cfg, dist)
    autocast = autocast_for(cfg.train.precision, device)
    budget = Budget.parse(cfg.budget)
    run_dir = default_run_dir(cfg)
    checkpoint = _find_resume_point(run_dir, resume)
    if checkpoint is not None:
        _check_resumable(run_dir, cfg)
    elif (run_dir / "checkpoints").is_dir() and complete_checkpoints(run_dir / "checkpoints"):
        raise RunExists(
            f"{run_dir} already holds a run; continue it with --resume auto, or set run.name "
            "(or run.dir) for a new one"
        )

    # Rank 0 prepares (tokenizes, writes shards) first; the others then read its cache.
    if not dist.is_main:
        dist.barrier()
    data = resolve_data(cfg, progress=progress and cfg.train.progress_bar and dist.is_main)
    if dist.is_main:
        dist.barrier()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    context = RunContext(shape=data.shape, config=cfg, run_dir=run_dir)
    try:
        methods = [*methods, *build_methods(cfg.method, cfg.methods, context)]
    except ValueError as e:
        raise ConfigError(str(e)) from e

    torch.manual_seed(cfg.run.seed)
    # A run whose model grew resumes at the grown shape; its checkpoint records it.
    shape = _checkpoint_shape(checkpoint) or data.shape
    model = build_model(shape).to(device)
    if dist.mode == "fsdp":
        # Sharding comes before the optimizer (it must see the sharded parameters), so a
        # resumed run loads its full weights first.
        if checkpoint is not None:
            from budgetlm.train.checkpoint import load_checkpoint

            model.load_state_dict(load_checkpoint(checkpoint)["model"])
        shard_model(model)
    try:
        optimizer = optimizer_from_config(cfg.optim, model, device)
    except ValueError as e:
        raise ConfigError(f"optim: {e}") from e
    module = optimizer_module(cfg.optim.name)
    if module is not None and hasattr(module, "method_for"):
        companion = module.method_for(optimizer, context)
        if companion is not None:
            methods.append(companion)
    rst_warnings: list[str] = []
    rst_table, rst_cost = _rst_pricing(cfg, budget, shape, rst_warnings)
    clock = Clock(budget, extra_costs={"rst": rst_cost} if rst_cost else {})
    state = TrainState(
        model=model,
        optimizer=optimizer,
        clock=clock,
        methods=list(methods),
        device=device,
        autocast=autocast,
        dist=dist,
    )
    checkpoint_meta = {
        "config_hash": cfg.hash(),
        "dataset_key": data.dataset.meta.get("key"),
        "rst_table": rst_table.hash if rst_cost else None,
    }
    if dist.mode == "fsdp":
        checkpoint_meta["optimizer_format"] = "fqn"

    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if checkpoint is not None:
        saved = state.load(
            checkpoint,
            model_loaded=dist.mode == "fsdp",
            load_optimizer=(
                (lambda sd: load_full_optimizer_state(model, optimizer, sd))
                if dist.mode == "fsdp"
                else None
            ),
        )
        if saved.get("dataset_key") != checkpoint_meta["dataset_key"]:
            raise CheckpointError(
                f"{checkpoint} was trained on dataset {saved.get('dataset_key')}, "
                f"this config prepares {checkpoint_meta['dataset_key']}"
            )
        if (
            saved.get("rst_table") != checkpoint_meta["rst_table"]
            and not cfg.rst.allow_table_change
        ):
            raise CheckpointError(
                f"{checkpoint} was charged with RST table {saved.get('rst_table')}, this run "
                f"prices with {checkpoint_meta['rst_table']}; resuming would mix two clocks. "
                "Set rst.allow_table_change=true to continue anyway"
            )
        if dist.is_main:
            truncate_after(run_dir / "metrics.jsonl", state.step)
    elif dist.is_main:  # a first attempt that died before its first checkpoint leaves nothing
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    if dist.is_main:
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
        _append_metadata(run_dir, device, data, model.shape, resumed_from=checkpoint, dist=dist)
    dist.barrier()

    stream = BatchStream(
        data.dataset.tokens("train"), data.objective, cfg.train.batch_size, seed=cfg.run.seed
    )
    heldout = eval_batches(
        data.dataset.tokens("val"),
        data.objective,
        cfg.train.eval_batch_size or cfg.train.micro_batch_size or cfg.train.batch_size,
        cfg.train.eval_batches,
        seed=cfg.train.eval_seed,
    )
    state.data = stream
    # One list: warnings raised later (pricing a grown shape) land in the checkpointed state.
    rst_warnings[:] = list(dict.fromkeys([*state.info.get("warnings", []), *rst_warnings]))
    state.info["warnings"] = rst_warnings
    log = (
        MetricsLog(
            run_dir / "metrics.jsonl", run_dir / "tensorboard" if cfg.train.tensorboard else None
        )
        if dist.is_main
        else None
    )
    return Trainer(
        state=state,
        stream=stream,
        eval_batches=heldout,
        schedule=make_schedule(cfg.schedule.name, cfg.optim.lr, **cfg.schedule.options()),
        device=device,
        cfg=cfg.train,
        run_dir=run_dir,
        tokens_per_example=tokens_per_example(data.objective),
        grad_clip=cfg.optim.grad_clip,
        checkpoint_meta=checkpoint_meta,
        compile=cfg.train.compile,
        optimizer_name=cfg.optim.name,
        autocast=autocast,
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


def _rst_pricing(
    cfg: Config, budget: Budget, shape: ModelShape, warnings: list[str]
) -> tuple[CostTable | None, Any]:
    """The RST cost function of this run: required for RST budgets, logged when covered."""
    from budgetlm.budget.clock import Work
    from budgetlm.budget.work import forward_pass

    try:
        table = CostTable.load(cfg.rst.table, tolerance=cfg.rst.tolerance)
    except TableError as e:
        if budget.unit == "rst":
            raise ConfigError(f"rst.table: {e}") from e
        return None, None

    def record(message: str) -> None:
        if message not in warnings:
            warnings.append(message)
            print(f"warning: {message}", file=sys.stderr)

    cost = table.cost_function(cfg.optim.name, fallback=cfg.rst.fallback, on_warning=record)
    probe = Work(passes=(forward_pass(shape, 1, None),), tokens=0, optimizer=cfg.optim.name)
    try:
        cost(probe)
    except TableError as e:
        if budget.unit == "rst":
            raise ConfigError(str(e)) from e
        return table, None  # not covered: RST is simply not logged for this run
    return table, cost


def _checkpoint_shape(checkpoint: Path | None) -> ModelShape | None:
    if checkpoint is None:
        return None
    trainer = json.loads((checkpoint / "trainer.json").read_text())
    from budgetlm.train.checkpoint import decode_tree

    shape = decode_tree(trainer, {}).get("shape")
    return ModelShape(**shape) if shape else None


def _find_resume_point(run_dir: Path, resume: str | None) -> Path | None:
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_dir():
            raise CheckpointError(f"--resume {resume}: no such checkpoint directory")
        return path
    found = complete_checkpoints(run_dir / "checkpoints")
    return found[-1] if found else None


def _check_resumable(run_dir: Path, cfg: Config) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text())
    changed = [
        k
        for k in config_diff(saved, cfg.to_dict())
        if k not in RESUME_SAFE and not k.startswith("run.")
    ]
    if changed:
        raise ConfigError(
            f"cannot resume {run_dir}: the config changed in {changed}; "
            "start a new run (run.name=...) or undo those changes"
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


@dataclass
class LoadedRun:
    """A run's model restored from one of its checkpoints, with the run's config and data."""

    cfg: Config
    data: DataBundle
    model: torch.nn.Module
    checkpoint: Path


def load_run_model(path: Path, device: torch.device | None = None) -> LoadedRun:
    """The model of a run directory's newest checkpoint (or of a given checkpoint inside a run),
    at the shape it was saved with: a run whose model grew is restored grown."""
    from budgetlm.config import load_config
    from budgetlm.train.checkpoint import load_checkpoint

    if (path / "checkpoints").is_dir():
        found = complete_checkpoints(path / "checkpoints")
        if not found:
            raise CheckpointError(f"{path}: no complete checkpoint")
        run_dir, checkpoint = path, found[-1]
    else:
        run_dir, checkpoint = path.parent.parent, path
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{path}: not a run directory or a checkpoint inside one")
    cfg = load_config(run_dir / "config.yaml")
    data = resolve_data(cfg, progress=False)
    model = build_model(_checkpoint_shape(checkpoint) or data.shape)
    model.load_state_dict(load_checkpoint(checkpoint)["model"])
    if device is not None:
        model = model.to(device)
    return LoadedRun(cfg, data, model, checkpoint)


def evaluate_checkpoint(
    path: Path, *, batches: int | None = None, split: str = "val"
) -> dict[str, Any]:
    """Held-out loss of a checkpoint (or a run directory's newest one) on its run's data."""
    from budgetlm.train.evaluate import heldout_loss

    run = load_run_model(path)
    cfg = run.cfg
    device = resolve_device(cfg.train.device)
    model = run.model.to(device)
    held = eval_batches(
        run.data.dataset.tokens(split),
        run.data.objective,
        cfg.train.eval_batch_size or cfg.train.micro_batch_size or cfg.train.batch_size,
        batches or cfg.train.eval_batches,
        seed=cfg.train.eval_seed,
    )
    metrics = heldout_loss(model, held, device, autocast_for(cfg.train.precision, device)())
    return {"checkpoint": str(run.checkpoint), "split": split, **metrics}
