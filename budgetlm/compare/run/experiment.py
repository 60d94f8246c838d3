"""Experiment files: a base run config, arms, budgets, seeds and LR tuning (docs/compare.md).

An experiment expands into cells, one training run each: every arm at every budget and seed.
A tuned arm is first run at each learning rate of its grid on the tuning seeds, which are never
judged seeds, and scored on the held-out `tune` split; its judged seeds then run at the learning
rate that was best (`results.tuning`), and are scored on the `test` split. Every arm is tuned
alike — the same number of trials around its own configured LR — unless it says `tune: false`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetlm.config import Config, ConfigError, load_config

EXPERIMENT_KEYS = (
    "name",
    "description",
    "base",
    "config",
    "set",
    "arms",
    "budgets",
    "seeds",
    "baseline",
    "tuning",
    "stats",
    "finetune",
    "executor",
)
FINETUNE_KEYS = (
    "suite",
    "tasks",
    "seeds",
    "data_dir",
    "lr",
    "batch_size",
    "epochs",
    "max_length",
    "select",
    "max_train",
    "max_eval",
    "max_dropped",
    # the instruction suites (instructions, sni): budgetlm.finetune.instructions.protocol
    "steps",
    "max_instances",
    "max_eval_instances",
    "max_source_len",
    "max_target_len",
    "num_pos_examples",
    "add_task_definition",
    "optimizer",
    "warmup_steps",
    "eval_batch_size",
)
ARM_KEYS = ("name", "description", "method", "optim", "set", "lr_grid", "tune")
# Written by `compare` into experiment.json (so the report needs no config, hence no torch).
RECORD_ARM_KEYS = ("default_lr",)
TUNING_KEYS = ("seeds", "trials", "factor", "max_extensions", "budgets")
# The held-out splits of a prepared dataset that cells are scored on (`train.eval_split`).
TUNE_SPLIT, TEST_SPLIT = "tune", "test"
STATS_KEYS = ("test", "confidence", "alpha", "correction", "power", "price_error")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExperimentError(ConfigError):
    """The experiment file is malformed."""


@dataclass(frozen=True)
class Arm:
    name: str
    method: str = "none"
    optim: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    # A tuned arm: the LRs its search starts from (the file's `lr_grid`, else `tuning.trials`
    # around `default_lr`). An untuned one: empty, or the one LR its file's `lr_grid` fixes.
    lr_grid: tuple[float, ...] = ()
    description: str = ""
    tuned: bool = False  # False: runs at its configured LR; the report says "untuned"
    grid_given: bool = False  # lr_grid came from the experiment file, not from `tuning`
    default_lr: float | None = None  # its config's optim.lr: the centre of a default grid


@dataclass(frozen=True)
class StatsSpec:
    test: str = "paired"  # falls back to Welch with fewer than 2 seeds shared with the baseline
    confidence: float = 0.95
    alpha: float = 0.05
    correction: str = "holm"  # over every test of the report
    power: float = 0.8  # of the minimum detectable difference shown for each test
    price_error: float = 0.05  # does a verdict survive this error in the price of extra work?


@dataclass(frozen=True)
class TuningSpec:
    """How tuned arms choose their LR (the experiment's `tuning:` section, docs/compare.md)."""

    seeds: tuple[int, ...]  # never judged seeds: tuning cells are not judged cells
    trials: int = 3  # LRs in a default grid, log-spaced around the arm's own LR
    factor: float = 2.0  # ratio of neighbouring LRs, of the grid and of its extensions
    max_extensions: int = 2  # LRs the search may add beyond an edge, per arm and budget
    budgets: tuple[str, ...] = ()  # tuned at these; the others carry an LR from one of them
    given: bool = False  # the file has a `tuning:` section: every arm is tuned unless it opts out

    def grid(self, center: float) -> tuple[float, ...]:
        """`trials` LRs center * factor**k, k = -(trials-1)/2 .. (trials-1)/2: centred on
        `center` in log space (an even count straddles it)."""
        half = (self.trials - 1) / 2
        return tuple(round_lr(center * self.factor ** (k - half)) for k in range(self.trials))

    def beyond(self, lr: float, side: str) -> float:
        """The next LR past `lr` on `side` ("above" or "below")."""
        return round_lr(lr * self.factor if side == "above" else lr / self.factor)


def round_lr(lr: float) -> float:
    """To 6 significant digits, the precision of a cell's `lr<x>` folder name: two LRs that
    name one folder are one LR."""
    return float(f"{lr:.6g}")


@dataclass(frozen=True, order=True)
class Cell:
    """One training run of the grid. `lr` is set only for arms with an LR grid (every tuned
    arm, and an untuned one whose `lr_grid` fixes its LR)."""

    arm: str
    budget: str
    seed: int
    lr: float | None = None

    @property
    def id(self) -> str:
        parts = [self.arm, slug(self.budget)]
        if self.lr is not None:
            parts.append(f"lr{self.lr:g}")
        return "/".join([*parts, f"seed{self.seed}"])


@dataclass(frozen=True)
class Experiment:
    name: str
    arms: tuple[Arm, ...]
    budgets: tuple[str, ...]
    seeds: tuple[int, ...]
    baseline: str
    tuning_seeds: tuple[int, ...]
    tuning: TuningSpec | None = None  # None: built by hand, tuned on tuning_seeds with defaults
    base: Path | None = None  # the base run config (absolute)
    config: dict[str, Any] = field(default_factory=dict)  # inline config on top of `base`
    settings: dict[str, Any] = field(default_factory=dict)  # for every arm
    stats: StatsSpec = field(default_factory=StatsSpec)
    description: str = ""
    source: Path | None = None
    finetune: dict[str, Any] | None = None  # fine-tune every finished cell (docs/finetune.md)
    # Where its cells run by default (`executor:`, checked; the command line wins). Not part of
    # the experiment's record: where a cell ran changes nothing it trains.
    executor: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tuning is None:
            spec = TuningSpec(seeds=self.tuning_seeds, budgets=self.budgets)
            object.__setattr__(self, "tuning", spec)

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(name)

    # -- tuning ---------------------------------------------------------------------------------
    @property
    def spec(self) -> TuningSpec:
        assert self.tuning is not None  # set by __post_init__
        return self.tuning

    def tuned_at(self, budget: str) -> str:
        """The budget whose tuning chooses an arm's LR at `budget`: itself when it is tuned at,
        else the last tuning budget listed before it (the first tuning budget if none is)."""
        tuned = self.spec.budgets
        if budget in tuned:
            return budget
        before = [b for b in self.budgets[: self.budgets.index(budget)] if b in tuned]
        return before[-1] if before else tuned[0]

    def is_tuning_cell(self, cell: Cell) -> bool:
        """Tuning seeds are never judged seeds, so the seed tells a tuning cell."""
        return cell.seed in self.tuning_seeds

    def tuning_cells_of(self, arm: Arm, budget: str, lrs: tuple[float, ...]) -> list[Cell]:
        return [Cell(arm.name, budget, seed, lr) for lr in lrs for seed in self.tuning_seeds]

    # -- cells ----------------------------------------------------------------------------------
    def tuning_cells(self) -> list[Cell]:
        """The first grid of every tuned arm at every budget it is tuned at. Extensions of a
        search (`results.planned_tuning_cells`) follow once these have finished."""
        return [
            cell
            for arm in self.arms
            if arm.tuned
            for budget in self.budgets
            if budget in self.spec.budgets
            for cell in self.tuning_cells_of(arm, budget, arm.lr_grid)
        ]

    def final_cells(self, arm: Arm, budget: str, lr: float | None) -> list[Cell]:
        """The cells an arm is judged on at a budget (its chosen LR when it has a grid)."""
        if arm.tuned:
            return [Cell(arm.name, budget, seed, lr) for seed in self.seeds]
        only = arm.lr_grid[0] if arm.lr_grid else None
        return [Cell(arm.name, budget, seed, only) for seed in self.seeds]

    def untuned_cells(self) -> list[Cell]:
        return [
            cell
            for arm in self.arms
            if not arm.tuned
            for budget in self.budgets
            for cell in self.final_cells(arm, budget, None)
        ]

    def config_for(
        self, cell: Cell, out_dir: Path | None = None, threads: int | None = None
    ) -> Config:
        """The exact run config of a cell: base, inline config, shared and arm settings; its
        run directory is placed under `out_dir` (left unset without one)."""
        arm = self.arm(cell.arm)
        settings: dict[str, Any] = {
            **flatten_settings(self.config),
            **flatten_settings(self.settings),
        }
        settings["method"] = arm.method
        if arm.optim is not None:
            settings["optim.name"] = arm.optim
        settings.update(flatten_settings(arm.settings))
        settings.update(
            {
                "budget": cell.budget,
                "run.seed": cell.seed,
                "run.name": f"{self.name}/{cell.id}",
                "train.progress_bar": False,
            }
        )
        if out_dir is not None:
            settings["run.dir"] = str(out_dir / "cells" / cell.id)
            # Shared by every cell: RHO-loss cells find one IL table per seed here.
            settings["run.out_dir"] = str(out_dir)
        if cell.lr is not None:
            settings["optim.lr"] = cell.lr
        # Choose on one held-out split, judge on another: a tuned LR is not fitted to the
        # documents it is judged on.
        settings["train.eval_split"] = TUNE_SPLIT if self.is_tuning_cell(cell) else TEST_SPLIT
        settings.update(self._tags(cell))
        if threads is not None:
            settings["train.threads"] = threads
        try:
            return load_config(self.base, settings=settings)
        except ConfigError as e:
            raise ExperimentError(f"arm {arm.name!r}, budget {cell.budget}: {e}") from e

    def _tags(self, cell: Cell) -> dict[str, str]:
        """Tracker labels (`run.tags`) that group a grid's runs: they change nothing trained
        (tags are outside the run identity: config.py, IDENTITY_EXCLUDED), and merge with the
        base config's tags."""
        tags = {
            "experiment": self.name,
            "arm": cell.arm,
            "budget": cell.budget,
            "seed": str(cell.seed),
        }
        if self.arm(cell.arm).tuned and cell.lr is not None:  # one of several LRs tried
            tags["lr"] = f"{cell.lr:g}"
        return {f"run.tags.{key}": value for key, value in tags.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "base": str(self.base) if self.base else None,
            "config": self.config,
            "set": self.settings,
            "budgets": list(self.budgets),
            "seeds": list(self.seeds),
            "baseline": self.baseline,
            # Written only when the file had one: its presence is what tunes every arm.
            **(
                {
                    "tuning": {
                        "seeds": list(self.tuning_seeds),
                        "trials": self.spec.trials,
                        "factor": self.spec.factor,
                        "max_extensions": self.spec.max_extensions,
                        "budgets": list(self.spec.budgets),
                    }
                }
                if self.spec.given
                else {}
            ),
            "stats": vars(self.stats),
            # Each arm's resolved `tune` and `default_lr`: read back, the record means the
            # same experiment without building a config.
            "arms": [
                {
                    "name": a.name,
                    "description": a.description,
                    "method": a.method,
                    "optim": a.optim,
                    "set": a.settings,
                    "lr_grid": list(a.lr_grid) if a.grid_given else [],
                    "tune": a.tuned,
                    "default_lr": a.default_lr,
                }
                for a in self.arms
            ],
            "source": str(self.source) if self.source else None,
            "finetune": self.finetune,
        }


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text.strip())


def flatten_settings(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}: settings merge key by key into the base."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten_settings(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
