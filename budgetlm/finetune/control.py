"""The control: fine-tune a run's architecture from random initialisation.

Downstream differences between pre-training methods mean little when pre-training does not
help at all, which tiny models on tiny budgets can fail to do. The control answers that: the
same model shape, the same tokenizer, the same protocol, tasks and fine-tuning seeds as
`finetune_run`, through the same loop (`run.finetune_suite`), but from fresh weights. For
fine-tuning seed `s` the backbone is built after `torch.manual_seed(s)`, exactly as a
pre-training run with `run.seed = s` builds its model at step 0, so the spread over seeds
includes the initialisation's. Results are stored like a run's (`OUT/finetune/<suite>.json`,
plus `init: random`, the shape and where it came from), so the same readers work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from budgetlm.config import Config, load_config
from budgetlm.errors import UserError
from budgetlm.finetune.instructions.protocol import is_instruction_suite
from budgetlm.finetune.protocol import Protocol
from budgetlm.finetune.run import check_tasks, finetune_suite, load_suite
from budgetlm.finetune.store import prepare_results_dir, read_suite
from budgetlm.finetune.tasks import MAX_DROPPED
from budgetlm.models import ModelShape, build_model

RANDOM_INIT = "random"


class ControlError(UserError, FileNotFoundError):
    """The control's source is neither a config file nor a folder that holds one."""


def control_source(source: str | Path | Config) -> tuple[Config, ModelShape | None, str]:
    """The config whose architecture the control takes, the shape to build (None: the config's
    own, fitted to its data) and a label. `source` is a Config, a config YAML file, a run
    directory (the shape of its newest checkpoint: a run that grew is its grown shape) or a
    compare cell / control folder (its `cell.yaml` or `control.yaml`)."""
    if isinstance(source, Config):
        return source, None, "config"
    path = Path(source)
    if path.is_file():
        return load_config(path), None, str(path)
    if not path.is_dir():
        raise ControlError(f"{path}: no such run directory or config file")
    from budgetlm.train.checkpoint import newest_valid
    from budgetlm.train.resume import checkpoint_shape

    newest, _ = newest_valid(path / "checkpoints")
    for name in ("config.yaml", "cell.yaml", "control.yaml"):
        if (path / name).is_file():
            shape = checkpoint_shape(newest) if newest else None
            return load_config(path / name), shape, str(path)
    raise ControlError(f"{path}: no config.yaml, cell.yaml or control.yaml")


def random_backbone(shape: ModelShape, seed: int) -> nn.Module:
    """A freshly initialised model of `shape`, as a pre-training run of `seed` starts."""
    torch.manual_seed(seed)
    return build_model(shape)


def finetune_random_init(
    source: str | Path | Config,
    suite: str = "offline",
    *,
    out_dir: str | Path,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] = (1,),
    protocol: Protocol | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
    max_dropped: float = MAX_DROPPED,
    save_partial: bool = False,
) -> dict[str, Any]:
    """Fine-tune `source`'s architecture from random weights (one initialisation per
    fine-tuning seed) and merge the scores into `out_dir/finetune/<suite>.json` in
    `finetune_run`'s format. The tasks' data and `out_dir` are checked before the pre-training
    data is prepared."""
    from budgetlm.train.run_data import resolve_data

    if is_instruction_suite(suite):
        return _random_init_instructions(
            source, suite, out_dir, tasks, seeds, protocol, data_dir, device
        )
    tasks = check_tasks(suite, tasks)  # before preparing any data
    cfg, shape, label = control_source(source)
    loaded = load_suite(suite, tasks, data_dir, max_dropped=max_dropped)
    prepare_results_dir(out_dir)
    read_suite(out_dir, suite)  # an unreadable results file fails now, not after training
    data = resolve_data(cfg, progress=False)
    shape = shape or data.shape
    return finetune_suite(
        lambda seed: random_backbone(shape, seed),
        data.dataset.tokenizer,
        suite,
        Path(out_dir),
        tasks=tasks,
        seeds=seeds,
        protocol=protocol,
        device=device,
        progress=progress,
        loaded=loaded,
        save_partial=save_partial,
        record={
            "run_dir": label,
            "init": RANDOM_INIT,
            "init_seeds": list(seeds),
            "shape": dataclasses.asdict(shape),
        },
    )


def _random_init_instructions(
    source: str | Path | Config,
    suite: str,
    out_dir: str | Path,
    tasks: Sequence[str] | None,
    seeds: Sequence[int],
    protocol: Any,
    data_dir: str | Path | None,
    device: str,
) -> dict[str, Any]:
    """The control on an instruction suite: the same fine-tuning from fresh weights."""
    from budgetlm.finetune.instructions.train import finetune_instruction_suite
    from budgetlm.train.run_data import resolve_data

    def backbone() -> tuple[Any, Any, dict[str, Any]]:
        cfg, shape, label = control_source(source)
        data = resolve_data(cfg, progress=False)
        shape = shape or data.shape
        record = {
            "run_dir": label,
            "init": RANDOM_INIT,
            "init_seeds": list(dict.fromkeys(seeds)),
            "shape": dataclasses.asdict(shape),
        }
        return (lambda seed: random_backbone(shape, seed)), data.dataset.tokenizer, record

    return finetune_instruction_suite(
        suite,
        backbone,
        out_dir,
        tasks=tasks,
        seeds=seeds,
        protocol=protocol,
        data_dir=data_dir,
        device=device,
    )


__all__ = [
    "RANDOM_INIT",
    "ControlError",
    "control_source",
    "finetune_random_init",
    "random_backbone",
]
