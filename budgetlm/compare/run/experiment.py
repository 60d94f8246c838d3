"""Experiment files: a base run config, arms, budgets, seeds, optional LR grids (docs/compare.md).

An experiment expands into cells, one training run each: every arm at every budget and seed.
An arm with an `lr_grid` is first run at each of its learning rates on the tuning seeds; its
other seeds then run at the learning rate that was best at that budget (`results.chosen_lr`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from budgetlm.config import Config, ConfigError, _suggest, load_config

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
)
ARM_KEYS = ("name", "description", "method", "optim", "set", "lr_grid")
STATS_KEYS = ("test", "confidence", "alpha", "correction")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExperimentError(ConfigError):
    """The experiment file is malformed."""


@dataclass(frozen=True)
class Arm:
    name: str
    method: str = "none"
    optim: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    lr_grid: tuple[float, ...] = ()
    description: str = ""

    @property
    def tuned(self) -> bool:
        return len(self.lr_grid) > 1


@dataclass(frozen=True)
class StatsSpec:
    test: str = "welch"
    confidence: float = 0.95
    alpha: float = 0.05
    correction: str = "holm"


@dataclass(frozen=True, order=True)
class Cell:
    """One training run of the grid. `lr` is set only for arms with an LR grid."""

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
    base: Path | None = None  # the base run config (absolute)
    config: dict[str, Any] = field(default_factory=dict)  # inline config on top of `base`
    settings: dict[str, Any] = field(default_factory=dict)  # for every arm
    stats: StatsSpec = field(default_factory=StatsSpec)
    description: str = ""
    source: Path | None = None
    finetune: dict[str, Any] | None = None  # fine-tune every finished cell (docs/finetune.md)

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(name)

    # -- cells ----------------------------------------------------------------------------------
    def tuning_cells(self) -> list[Cell]:
        return [
            Cell(arm.name, budget, seed, lr)
            for arm in self.arms
            if arm.tuned
            for budget in self.budgets
            for lr in arm.lr_grid
            for seed in self.tuning_seeds
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
        settings: dict[str, Any] = {**_flatten(self.config), **_flatten(self.settings)}
        settings["method"] = arm.method
        if arm.optim is not None:
            settings["optim.name"] = arm.optim
        settings.update(_flatten(arm.settings))
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
        settings.update(self._tags(cell))
        if threads is not None:
            settings["train.threads"] = threads
        try:
            return load_config(self.base, settings=settings)
        except ConfigError as e:
            raise ExperimentError(f"arm {arm.name!r}, budget {cell.budget}: {e}") from e

    def _tags(self, cell: Cell) -> dict[str, str]:
        """Tracker labels (`run.tags`) that group a grid's runs: they change nothing trained
        (the run section is outside the config hash), and merge with the base config's tags."""
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
            "tuning": {"seeds": list(self.tuning_seeds)},
            "stats": vars(self.stats),
            "arms": [
                {
                    "name": a.name,
                    "description": a.description,
                    "method": a.method,
                    "optim": a.optim,
                    "set": a.settings,
                    "lr_grid": list(a.lr_grid),
                }
                for a in self.arms
            ],
            "source": str(self.source) if self.source else None,
            "finetune": self.finetune,
        }


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text.strip())


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}: settings merge key by key into the base."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# -- loading ------------------------------------------------------------------------------------


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file; every cell's config is built once to fail early."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"experiment file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ExperimentError(f"{path}: not valid YAML: {e}") from e
    exp = experiment_from_dict(raw, path.parent, default_name=path.stem, source=path.resolve())
    check_cells(exp)
    return exp


def experiment_from_dict(
    raw: Any, root: Path, default_name: str = "experiment", source: Path | None = None
) -> Experiment:
    """Validate an experiment file's content (relative paths resolved against `root`)."""
    if not isinstance(raw, dict):
        raise ExperimentError("an experiment file is a mapping (name, base, arms, budgets, ...)")
    _check_keys(raw, EXPERIMENT_KEYS, "")
    arms = _arms(raw)
    seeds = _seeds(raw)
    name = str(raw.get("name", default_name))
    if not _NAME.match(name):
        raise ExperimentError(f"name {name!r}: use letters, digits, '.', '_' or '-'")
    return Experiment(
        name=name,
        description=str(raw.get("description", "")),
        arms=arms,
        budgets=_budgets(raw),
        seeds=seeds,
        baseline=_baseline(raw, arms),
        tuning_seeds=_tuning_seeds(raw, seeds),
        base=_base_config(raw, root),
        config=_mapping(raw, "config", "a mapping of config sections"),
        settings=dict(_mapping(raw, "set", "a mapping of dotted config keys to values")),
        stats=_stats(raw),
        source=source,
        finetune=_finetune(raw.get("finetune"), root),
    )


def _mapping(raw: dict, key: str, what: str) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ExperimentError(f"{key}: must be {what}")
    return value


def _base_config(raw: dict, root: Path) -> Path | None:
    base = raw.get("base")
    if base is None:
        return None
    base = Path(base)
    base = (base if base.is_absolute() else root / base).resolve()
    if not base.is_file():
        raise ExperimentError(f"base: config file not found: {base}")
    return base


def _arms(raw: dict) -> tuple[Arm, ...]:
    arms = tuple(_arm(a, i) for i, a in enumerate(_list(raw, "arms")))
    if not arms:
        raise ExperimentError("arms: give at least one arm")
    names = [a.name for a in arms]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ExperimentError(f"arms: names must be unique, repeated: {dupes}")
    return arms


def _budgets(raw: dict) -> tuple[str, ...]:
    budgets = tuple(str(b) for b in _list(raw, "budgets"))
    if not budgets:
        raise ExperimentError("budgets: give at least one budget, e.g. [60s-rst]")
    if len(set(map(slug, budgets))) != len(budgets):
        raise ExperimentError(f"budgets: repeated budget in {list(budgets)}")
    return budgets


def _seeds(raw: dict) -> tuple[int, ...]:
    seeds = tuple(_int(s, "seeds") for s in _list(raw, "seeds", default=[1]))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ExperimentError(f"seeds: give distinct integer seeds, got {list(seeds)}")
    return seeds


def _baseline(raw: dict, arms: tuple[Arm, ...]) -> str:
    names = [a.name for a in arms]
    baseline = str(raw.get("baseline", names[0]))
    if baseline not in names:
        raise ExperimentError(f"baseline: no arm named {baseline!r}{_suggest(baseline, names)}")
    return baseline


def _tuning_seeds(raw: dict, seeds: tuple[int, ...]) -> tuple[int, ...]:
    tuning = _mapping(raw, "tuning", "a mapping (seeds: [...])")
    _check_keys(tuning, ("seeds",), "tuning.")
    tuning_seeds = tuple(_int(s, "tuning.seeds") for s in tuning.get("seeds", seeds[:1]))
    if not tuning_seeds:
        raise ExperimentError("tuning.seeds: give at least one seed")
    return tuning_seeds


def _stats(raw: dict) -> StatsSpec:
    stats_raw = _mapping(raw, "stats", "a mapping")
    _check_keys(stats_raw, STATS_KEYS, "stats.")
    stats = StatsSpec(**stats_raw)
    if stats.test not in ("welch", "bootstrap"):
        raise ExperimentError(f"stats.test must be welch or bootstrap, got {stats.test!r}")
    if stats.correction not in ("holm", "none"):
        raise ExperimentError(f"stats.correction must be holm or none, got {stats.correction!r}")
    for key in ("confidence", "alpha"):
        value = getattr(stats, key)
        if not isinstance(value, int | float) or not 0 < value < 1:
            raise ExperimentError(f"stats.{key} must be a number in (0, 1), got {value!r}")
    return stats


def check_cells(exp: Experiment) -> None:
    """Build every distinct cell config once: a typo in one arm fails before anything runs."""
    from budgetlm.budget.clock import Budget, BudgetError

    for budget in exp.budgets:
        try:
            Budget.parse(budget)
        except BudgetError as e:
            raise ExperimentError(f"budgets: {e}") from e
    for arm in exp.arms:
        for lr in arm.lr_grid or (None,):
            exp.config_for(Cell(arm.name, exp.budgets[0], exp.seeds[0], lr))


def _arm(raw: Any, index: int) -> Arm:
    if isinstance(raw, str):
        raw = {"name": raw, "method": raw}
    if not isinstance(raw, dict):
        raise ExperimentError(f"arms[{index}]: an arm is a mapping (name, method, optim, set)")
    _check_keys(raw, ARM_KEYS, f"arms[{index}].")
    if "name" not in raw:
        raise ExperimentError(f"arms[{index}]: every arm needs a name")
    name = str(raw["name"])
    if not _NAME.match(name):
        raise ExperimentError(f"arms[{index}].name {name!r}: use letters, digits, '.', '_', '-'")
    settings = raw.get("set") or {}
    if not isinstance(settings, dict):
        raise ExperimentError(f"arm {name!r}: set must be a mapping of dotted keys to values")
    grid = raw.get("lr_grid") or []
    if not isinstance(grid, list):
        raise ExperimentError(f"arm {name!r}: lr_grid must be a list of learning rates")
    try:
        lr_grid = tuple(float(v) for v in grid)
    except (TypeError, ValueError) as e:
        raise ExperimentError(f"arm {name!r}: lr_grid must hold numbers, got {grid!r}") from e
    if any(v <= 0 for v in lr_grid) or len(set(lr_grid)) != len(lr_grid):
        raise ExperimentError(f"arm {name!r}: lr_grid needs distinct positive values")
    if lr_grid and "optim.lr" in _flatten(settings):
        raise ExperimentError(f"arm {name!r}: give either optim.lr in set or an lr_grid")
    return Arm(
        name=name,
        method=str(raw.get("method", "none")),
        optim=None if raw.get("optim") is None else str(raw["optim"]),
        settings=dict(settings),
        lr_grid=lr_grid,
        description=str(raw.get("description", "")),
    )


def _finetune(raw: Any, root: Path) -> dict[str, Any] | None:
    """The fine-tuning spec, checked now: a bad protocol should not surface after training."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ExperimentError("finetune: must be a mapping (suite, tasks, seeds, epochs, ...)")
    _check_keys(raw, FINETUNE_KEYS, "finetune.")
    from budgetlm.finetune.protocol import Protocol
    from budgetlm.finetune.suites import suite_tasks
    from budgetlm.finetune.tasks import TaskError

    spec = dict(raw)
    spec.setdefault("suite", "offline")
    try:
        known = suite_tasks(spec["suite"])
        unknown = [t for t in spec.get("tasks") or [] if t not in known]
        if unknown:
            raise TaskError(f"suite {spec['suite']!r} has no task {unknown}")
        Protocol(**{k: v for k, v in spec.items() if k in Protocol.__dataclass_fields__})
    except (TaskError, ValueError, TypeError) as e:
        raise ExperimentError(f"finetune: {e}") from e
    if spec.get("data_dir"):
        data_dir = Path(spec["data_dir"])
        spec["data_dir"] = str(data_dir if data_dir.is_absolute() else (root / data_dir).resolve())
    seeds = spec.get("seeds", [1])
    spec["seeds"] = [
        _int(s, "finetune.seeds") for s in (seeds if isinstance(seeds, list) else [seeds])
    ]
    return spec


def _check_keys(raw: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in allowed:
            full = [f"{where}{k}" for k in allowed]
            raise ExperimentError(
                f"unknown experiment key {where}{key!r}{_suggest(f'{where}{key}', full)}"
            )


def _list(raw: dict, key: str, default: list | None = None) -> list:
    value = raw.get(key, default)
    if value is None:
        return []
    if not isinstance(value, list):
        return [value]
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExperimentError(f"{where}: seeds are integers, got {value!r}")
    return value
