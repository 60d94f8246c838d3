"""RHO-loss (Mindermann et al. 2022, "Prioritized training on points that are learnable, worth
learning, and not yet learnt"): train on the examples with the largest *reducible* loss,

    reducible(x) = training loss(x) - irreducible loss(x),

where the irreducible loss (IL) of x is the loss of a model trained on a hold-out split. Each
step forwards a mega-batch (`megabatch_factor` x the batch, 2x by default) without gradients and
keeps the top `batch_size` examples; the selection forwards are charged to the clock. The IL
model is trained and scored beforehand by `budgetlm rho prepare CONFIG`
(budgetlm/train/irreducible.py), which writes an IL table; its cost is reported beside the run,
not charged to it (the paper did not charge it; summaries show both totals).

The split (decided here, used by both sides):
- an example is a window of the prepared train split, named by its stable `example_id` (its
  window index). It is *held out* when splitmix64(id XOR salt) / 2^64 < holdout_fraction
  (20% by default): a fixed hash of the id, so the same ids are held out for every run, seed and
  machine. The IL model trains only on held-out ids; a RHO-loss run only ever sees the others.
  Validation data is a separate split (by document hash) and is therefore disjoint from both.
- the IL table stores, per example id (a dense float32 array indexed by id; NaN for held-out ids),
  the IL model's loss of that example, with a sha256 checksum and the identity of the data (the
  dataset key, the train tokens' sha256, the tokenizer file's sha256), of the objective (window
  geometry, masking parameters) and of the split (fraction, hash scheme). A run refuses a missing
  table, a corrupted one, or one whose identity differs, naming what differs.
- MLM masks and T5 noise spans are random per draw, so for BERT and T5 the table holds the IL loss
  of the window under fixed masks drawn from the example id (averaged over `il_samples` draws):
  an estimate of the window's irreducible difficulty, not of the very masks a candidate carries.
  For GPT it is exact.
- the mega-batch of step s is a pure function of (seed, s): a seeded permutation of the
  non-held-out ids per epoch, read in order; so is every example's masking. The method has no
  state beyond counters; resume is exact.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from budgetlm.api import Method, MethodState, RunContext, StepPlan
from budgetlm.config import ConfigError
from budgetlm.methods.selective_backprop import (
    Batch,
    SelectedBatch,
    forward_losses,
    note_uncharged,
    take,
)

if TYPE_CHECKING:
    from budgetlm.config import Config

TABLE_VERSION = 1
TABLE_JSON = "il_table.json"
TABLE_TENSORS = "il_loss.safetensors"
HOLDOUT_SCHEME = "splitmix64-v1"
_HOLDOUT_SALT = 0x9E3779B97F4A7C15 ^ 0x5250_4F48  # fixed forever: changing it moves the split
_MEGA_STREAM = 0x5248_4F4D  # seeds of the RHO candidate stream
_HOLDOUT_STREAM = 0x494C_5452  # seeds of the IL model's training stream
_MASK64 = (1 << 64) - 1


class ILTableError(ConfigError):
    """A missing, corrupted or mismatched irreducible-loss table."""


# -- the hold-out split ---------------------------------------------------------------------------
def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def is_held_out(example_ids: np.ndarray, fraction: float) -> np.ndarray:
    """True for the ids in the IL model's hold-out split (a fixed hash of the id alone)."""
    ids = np.asarray(example_ids, dtype=np.int64).astype(np.uint64)
    h = _splitmix64(ids ^ np.uint64(_HOLDOUT_SALT & _MASK64))
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53 < fraction


def split_ids(num_examples: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(training ids, held-out ids) of a train split with `num_examples` windows."""
    ids = np.arange(num_examples, dtype=np.int64)
    held = is_held_out(ids, fraction)
    return ids[~held], ids[held]


class SubsetStream:
    """Batches drawn only from `ids`: epoch e is a permutation of them seeded by (seed, stream, e),
    and batch `step` takes positions step*B .. step*B+B-1 of the endless run of epochs, with
    example j's randomness from (seed, stream, step, j). A pure function of (seed, step), like
    budgetlm.data.BatchStream, of which it takes the tokens and objective."""

    def __init__(
        self, tokens, objective, ids: np.ndarray, batch_size: int, seed: int, stream: int
    ) -> None:
        if len(ids) == 0:
            raise ValueError("a subset stream needs at least one example id")
        self.tokens, self.objective = tokens, objective
        self.ids = np.asarray(ids, dtype=np.int64)
        self.batch_size, self.seed, self.stream = batch_size, seed, stream
        self._perms: dict[int, np.ndarray] = {}

    def _epoch(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 4:
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([self.stream, self.seed, epoch])
            self._perms[epoch] = self.ids[rng.permutation(len(self.ids))]
        return self._perms[epoch]

    def example_ids(self, step: int) -> np.ndarray:
        positions = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(positions, len(self.ids))
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            out[here] = self._epoch(int(epoch))[offsets[here]]
        return out

    def batch(self, step: int, start: int = 0, stop: int | None = None) -> Batch:
        stop = self.batch_size if stop is None else stop
        ids = self.example_ids(step)[start:stop]
        rngs = [
            np.random.default_rng([self.stream, self.seed, step, start + k])
            for k in range(len(ids))
        ]
        return self.objective.make_batch(self.tokens, ids, rngs)


# -- identity of the data an IL table belongs to --------------------------------------------------
def _file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def objective_identity(objective) -> dict[str, Any]:
    ident = {
        "name": objective.name,
        "seq_len": objective.seq_len,
        "raw_length": objective.raw_length,
        "stride": objective.stride,
        "targets_length": objective.targets_length,
    }
    for key in ("mask_prob", "mask_token_frac", "random_token_frac", "noise_density", "mean_span"):
        if hasattr(objective, key):
            ident[key] = getattr(objective, key)
    return ident


def data_identity(dataset, objective, holdout_fraction: float) -> dict[str, Any]:
    """What must match between an IL table and a run: data, tokenizer, objective and split."""
    from budgetlm.data.shards import read_header

    # The shard header has the payload's sha256 and length: no need to hash the tokens again.
    header = read_header(dataset.path / "train.bin")
    return {
        "data": {
            "dataset_key": dataset.meta.get("key"),
            "train_sha256": header["sha256"],
            "num_examples": objective.num_examples(header["count"]),
        },
        "tokenizer": {
            "kind": dataset.meta.get("tokenizer"),
            "vocab_size": dataset.tokenizer.vocab_size,
            "sha256": _file_sha256(dataset.path / "tokenizer.json"),
        },
        "objective": objective_identity(objective),
        "split": {"holdout_fraction": holdout_fraction, "scheme": HOLDOUT_SCHEME},
    }


def identity_differences(table: Mapping[str, Any], run: Mapping[str, Any]) -> list[str]:
    """'section.key: table X, run Y' for every field that differs."""
    out = []
    for section in sorted(set(table) | set(run)):
        a, b = table.get(section) or {}, run.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{section}.{key}: table {a.get(key)!r}, run {b.get(key)!r}")
    return out


# -- the IL table on disk -------------------------------------------------------------------------
@dataclass
class ILTable:
    path: Path
    il_loss: torch.Tensor  # (num_examples,) float32, indexed by example id; NaN when held out
    meta: dict[str, Any]

    @property
    def checksum(self) -> str:
        return self.meta["sha256"]

    def lookup(self, example_ids: torch.Tensor) -> torch.Tensor:
        """IL losses of these example ids (by id, never by stream position)."""
        ids = example_ids.long().cpu()
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(self.il_loss)):
            raise ILTableError(f"{self.path}: example id outside the table's {len(self.il_loss)}")
        values = self.il_loss[ids]
        if torch.isnan(values).any():
            raise ILTableError(
                f"{self.path}: no IL loss for held-out example ids "
                f"{ids[torch.isnan(values)][:5].tolist()}: a RHO-loss run must not draw them"
            )
        return values


def write_il_table(directory: Path, il_loss: np.ndarray, meta: Mapping[str, Any]) -> Path:
    """Write the table atomically: tensors first, then the JSON (with their checksum) last."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{TABLE_TENSORS}.tmp-{os.getpid()}"
    save_file({"il_loss": torch.as_tensor(il_loss, dtype=torch.float32).contiguous()}, tmp)
    os.replace(tmp, directory / TABLE_TENSORS)
    full = {
        "format_version": TABLE_VERSION,
        **meta,
        "sha256": _file_sha256(directory / TABLE_TENSORS),
    }
    tmp_json = directory / f".{TABLE_JSON}.tmp-{os.getpid()}"
    tmp_json.write_text(json.dumps(full, indent=1, default=str) + "\n")
    os.replace(tmp_json, directory / TABLE_JSON)
    return directory


def load_il_table(directory: Path) -> ILTable:
    """Open and verify a table written by `budgetlm rho prepare`."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path, tensor_path = directory / TABLE_JSON, directory / TABLE_TENSORS
    if not meta_path.is_file() or not tensor_path.is_file():
        raise ILTableError(
            f"no irreducible-loss table at {directory}: run `budgetlm rho prepare CONFIG "
            "[overrides]` with this run's config first (or set methods.rho_loss.table)"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != TABLE_VERSION:
        raise ILTableError(
            f"{directory}: IL table format {meta.get('format_version')}, this budgetlm reads "
            f"{TABLE_VERSION}; run `budgetlm rho prepare` again"
        )
    if _file_sha256(tensor_path) != meta.get("sha256"):
        raise ILTableError(f"{tensor_path}: checksum mismatch, the IL table is corrupted")
    il_loss = load_file(tensor_path)["il_loss"].float()
    return ILTable(directory, il_loss, meta)


# -- the IL run's config and the table's default place --------------------------------------------
def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def il_config(cfg: Config, options: RhoLoss.Options) -> Config:
    """The IL model's run: the training config without methods, then `methods.rho_loss.il`.

    Its run directory is set by `budgetlm rho prepare` (inside the table directory).
    """
    from budgetlm.config import Config as ConfigClass
    from budgetlm.config import build_dataclass, validate

    raw = cfg.to_dict()
    raw["method"], raw["methods"] = "none", {}
    raw["run"] = {**raw["run"], "name": "rho-il", "dir": None}
    raw = _merge(raw, options.il)
    try:
        il_cfg = build_dataclass(ConfigClass, raw, "")
        validate(il_cfg)
    except ConfigError as e:
        raise ConfigError(f"methods.rho_loss.il: {e}") from e
    if "rho_loss" in (il_cfg.method or ""):
        raise ConfigError("methods.rho_loss.il.method cannot use rho_loss itself")
    return il_cfg


# Settings that change what a run records, never the weights it trains.
_OBSERVATION_ONLY = {
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.eval_batch_size",
    "train.eval_seed",
    "train.eval_split",
    "train.checkpoint_every",
}


def table_key(cfg: Config, options: RhoLoss.Options) -> str:
    """Hash of everything that shapes the IL table (the IL run's settings, split, scoring)."""
    from budgetlm.config import RESUME_SAFE

    d = il_config(cfg, options).to_dict()
    d["run"] = {"seed": d["run"]["seed"]}
    for key in RESUME_SAFE | _OBSERVATION_ONLY:
        section, name = key.split(".")
        d.get(section, {}).pop(name, None)
    d["rho"] = {
        "holdout_fraction": options.holdout_fraction,
        "il_samples": options.il_samples,
        "scheme": HOLDOUT_SCHEME,
        "version": TABLE_VERSION,
    }
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def table_dir(cfg: Config, options: RhoLoss.Options) -> Path:
    """Where the IL table lives: `methods.rho_loss.table`, else <run.out_dir>/rho/il-<key>."""
    if options.table:
        return Path(options.table)
    return Path(cfg.run.out_dir) / "rho" / f"il-{table_key(cfg, options)[:16]}"


def check_options(options: RhoLoss.Options) -> None:
    if not 0 < options.holdout_fraction < 1:
        raise ConfigError("methods.rho_loss.holdout_fraction must be in (0, 1)")
    if options.megabatch_factor < 1:
        raise ConfigError("methods.rho_loss.megabatch_factor must be >= 1")
    if options.il_samples < 1:
        raise ConfigError("methods.rho_loss.il_samples must be >= 1")


# -- selection ------------------------------------------------------------------------------------
def reducible_topk(train_loss: torch.Tensor, il_loss: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest training loss - IL loss, in their original order (ties: first)."""
    reducible = train_loss.float() - il_loss.float()
    order = torch.argsort(reducible, descending=True, stable=True)[:k]
    return order.sort().values


class HoldoutTraining(Method):
    """The IL model's run: every micro-batch comes from the held-out ids only."""

    name = "rho_holdout"

    def __init__(self, holdout_fraction: float) -> None:
        self.fraction = holdout_fraction
        self.stream: SubsetStream | None = None

    def on_start(self, state: MethodState) -> None:
        data = state.data
        _, held = split_ids(data.num_examples, self.fraction)
        self.stream = SubsetStream(
            data.tokens, data.objective, held, data.batch_size, data.seed, _HOLDOUT_STREAM
        )

    def batch_rows(self, state: MethodState, plan: StepPlan, start: int, stop: int) -> Batch:
        # The same positions of the held-out stream's batch: under data parallelism each rank
        # takes its own share, as it would of the run's stream.
        return self.stream.batch(plan.step, start, stop)

    def state_dict(self) -> dict[str, Any]:
        return {"holdout_fraction": self.fraction}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["holdout_fraction"] != self.fraction:
            raise ValueError(
                f"the IL run held out {state['holdout_fraction']}, not {self.fraction}"
            )


class RhoLoss(Method):
    """Train on the top-k of each mega-batch by reducible loss."""

    name = "rho_loss"
    incompatible = ("selective_backprop",)

    @dataclass
    class Options:
        table: str | None = None  # IL table directory (default: <run.out_dir>/rho/il-<key>)
        holdout_fraction: float = 0.2  # of the training windows, for the IL model
        megabatch_factor: float = 2.0  # candidates per step = factor x batch_size
        charge_selection: bool = True  # false: selection forwards free (an ablation; recorded)
        il_samples: int = 1  # masks per example when scoring BERT/T5 IL losses
        il: dict[str, Any] = field(default_factory=dict)  # overrides for the IL run's config

    def __init__(
        self,
        table: ILTable,
        *,
        holdout_fraction: float = 0.2,
        megabatch_factor: float = 2.0,
        charge_selection: bool = True,
        seed: int = 0,
    ) -> None:
        self.table = table
        self.holdout_fraction = holdout_fraction
        self.megabatch_factor = megabatch_factor
        self.charge_selection = charge_selection
        self.seed = seed
        self.stream: SubsetStream | None = None
        self.stats = {"steps": 0, "candidate_reducible": 0.0, "selected_reducible": 0.0}
        self.stats.update(candidates=0, selected=0, uncharged_flops=0.0)
        self._selected = SelectedBatch()

    @classmethod
    def from_options(cls, options: Options, context: RunContext) -> RhoLoss:
        check_options(options)
        cfg = context.config
        table = load_il_table(table_dir(cfg, options))
        data = context.data
        if data is None:
            raise ValueError("rho_loss needs the run's data in its RunContext")
        run = data_identity(data.dataset, data.objective, options.holdout_fraction)
        diff = identity_differences(table.meta.get("identity", {}), run)
        if diff:
            raise ILTableError(
                f"the IL table at {table.path} does not match this run; it differs in: "
                + "; ".join(diff)
                + ". Run `budgetlm rho prepare` with this config."
            )
        if not options.charge_selection:
            import warnings

            warnings.warn(
                "rho_loss.charge_selection=false: selection forwards are NOT charged (ablation)",
                stacklevel=2,
            )
        return cls(
            table,
            holdout_fraction=options.holdout_fraction,
            megabatch_factor=options.megabatch_factor,
            charge_selection=options.charge_selection,
            seed=cfg.run.seed,
        )

    def megabatch_size(self, batch_size: int) -> int:
        return max(batch_size, math.ceil(self.megabatch_factor * batch_size - 1e-9))

    def on_start(self, state: MethodState) -> None:
        if not self.charge_selection:
            note_uncharged(state, "rho_loss.charge_selection=false")
        data = state.data
        if data.num_examples != len(self.table.il_loss):
            raise ILTableError(
                f"{self.table.path}: the table has {len(self.table.il_loss)} examples, the run's "
                f"train split {data.num_examples}"
            )
        train_ids, _ = split_ids(data.num_examples, self.holdout_fraction)
        self.stream = SubsetStream(
            data.tokens,
            data.objective,
            train_ids,
            self.megabatch_size(data.batch_size),
            self.seed,
            _MEGA_STREAM,
        )

    def plan_step(self, state: MethodState, plan: StepPlan) -> None:
        from budgetlm.budget.work import forward_pass

        micro = plan.batch_size // plan.micro_batches
        mega = self.stream.batch(plan.step)
        losses, sizes = forward_losses(state, mega, plan.active, micro)
        il = self.table.lookup(mega["example_id"])
        chosen = reducible_topk(losses, il, plan.batch_size)
        self._selected.load(take(mega, chosen), state.dist)
        passes = [forward_pass(state.model.shape, n, plan.active) for n in sizes]
        if self.charge_selection:
            plan.extra_passes.extend(passes)
        else:
            self.stats["uncharged_flops"] += sum(p.flops for p in passes)
        reducible = losses - il
        self.stats["steps"] += 1
        self.stats["candidates"] += len(losses)
        self.stats["selected"] += len(chosen)
        self.stats["candidate_reducible"] += float(reducible.sum())
        self.stats["selected_reducible"] += float(reducible[chosen].sum())

    def batch_rows(self, state: MethodState, plan: StepPlan, start: int, stop: int) -> Batch:
        return self._selected.next(stop - start)

    def summary(self) -> dict[str, Any]:
        s = self.stats
        return {
            "il_table": str(self.table.path),
            "il_table_sha256": self.table.checksum,
            "il_cost": self.table.meta.get("il_cost"),
            "uncharged": _il_uncharged(self.table.meta.get("il_cost")),
            "charge_selection": self.charge_selection,
            "uncharged_selection_flops": s["uncharged_flops"],
            "megabatch_factor": self.megabatch_factor,
            "mean_candidate_reducible_loss": s["candidate_reducible"] / max(1, s["candidates"]),
            "mean_selected_reducible_loss": s["selected_reducible"] / max(1, s["selected"]),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "il_table_sha256": self.table.checksum,
            "holdout_fraction": self.holdout_fraction,
            "megabatch_factor": self.megabatch_factor,
            "stats": dict(self.stats),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["il_table_sha256"] != self.table.checksum:
            raise ILTableError(
                f"the checkpoint was trained with IL table {state['il_table_sha256'][:12]}, this "
                f"run loads {self.table.checksum[:12]} ({self.table.path})"
            )
        saved = (state["holdout_fraction"], state["megabatch_factor"])
        if saved != (self.holdout_fraction, self.megabatch_factor):
            raise ValueError(f"checkpoint selected with (holdout, megabatch)={saved}")
        self.stats = dict(state["stats"])


def _il_uncharged(il_cost: dict[str, Any] | None) -> dict[str, float]:
    """The IL model's training and scoring, in clock units (not charged: the paper did not)."""
    if not il_cost:
        return {}
    total = {unit: float(v) for unit, v in il_cost.get("train", {}).items()}
    scoring = il_cost.get("scoring", {})
    total["flops"] = total.get("flops", 0.0) + float(scoring.get("forward_flops", 0.0))
    total["seconds"] = total.get("seconds", 0.0) + float(scoring.get("seconds", 0.0))
    return total
