"""A run's data: the prepared dataset, its objective, and the model shape fitted to both."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budgetlm.config import Config, ConfigError, model_overrides
from budgetlm.data import (
    BatchStream,
    DatasetCorrupt,
    eval_batches,
    load_prepared,
    make_objective,
    prepare_dataset,
    rebuild_dataset,
    verify_dataset,
)
from budgetlm.models import ModelShape, get_shape

FAMILY_DEFAULTS = {
    "gpt": ("bpe", "causal_lm"),
    "bert": ("wordpiece", "mlm"),
    "t5": ("unigram", "span_corruption"),
}


@dataclass
class DataBundle:
    dataset: Any  # budgetlm.data.prepare.PreparedDataset
    objective: Any
    shape: ModelShape


def resolve_data(cfg: Config, progress: bool = True, verify: bool = False) -> DataBundle:
    """Prepare (or reuse) the dataset and fit the model shape to its tokenizer and objective.

    A dataset that is already there is checked first (`verify`: hashing every file, as
    `budgetlm prepare` does; otherwise the cheap checks every start can afford) and rebuilt from
    its corpus when corrupted."""
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
        try:
            verify_dataset(path, full=verify)
        except DatasetCorrupt as e:
            print(f"{path} is corrupted ({e.reason}): rebuilding it", file=sys.stderr)
            rebuild_dataset(path, progress=progress)
    else:
        source_kwargs = {"text_field": d.text_field, "hf_split": d.hf_split}
        if d.data_files:
            source_kwargs["data_files"] = d.data_files
        path = prepare_dataset(
            corpus=d.corpus,
            tokenizer=d.tokenizer or default_tok,
            vocab_size=d.vocab_size or shape.vocab_size,
            val_fraction=d.val_fraction,
            heldout_min_documents=d.heldout_min_documents,
            max_bytes=d.max_bytes,
            progress=progress,
            verify=verify,
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


def tokens_per_example(objective: Any) -> int:
    """Stream tokens one example consumes (causal LM windows overlap by one token)."""
    return objective.raw_length - 1 if objective.name == "causal_lm" else objective.raw_length


def train_stream(cfg: Config, data: DataBundle) -> BatchStream:
    """The training batches: a pure function of (seed, step), so resuming needs no cursor."""
    return BatchStream(
        data.dataset.tokens("train"), data.objective, cfg.train.batch_size, seed=cfg.run.seed
    )


def heldout_batches(  # noqa: ANN201
    cfg: Config, data: DataBundle, split: str | None = None, batches: int | None = None
):
    """The fixed held-out batches (fixed split, fixed masks) every evaluation of the run uses:
    of `split`, by default the run's own `train.eval_split`."""
    return eval_batches(
        data.dataset.tokens(split or cfg.train.eval_split),
        data.objective,
        cfg.train.eval_batch_size or cfg.train.micro_batch_size or cfg.train.batch_size,
        batches or cfg.train.eval_batches,
        seed=cfg.train.eval_seed,
    )
