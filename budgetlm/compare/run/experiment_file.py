"""Reading an experiment file: YAML in, a checked `Experiment` out (docs/compare.md).

Every key is checked with a did-you-mean, every arm's LR grid is filled in around its own
configured LR, and every cell's config is built once so a bad setting fails before any cell
runs. The data model (arms, cells, the tuning protocol) is in experiment.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from budgetlm.compare.run.experiment import (
    ARM_KEYS,
    EXPERIMENT_KEYS,
    FINETUNE_KEYS,
    NAME_PATTERN,
    RECORD_ARM_KEYS,
    STATS_KEYS,
    TUNING_KEYS,
    Arm,
    Cell,
    Experiment,
    ExperimentError,
    StatsSpec,
    TuningSpec,
    flatten_settings,
    slug,
)
from budgetlm.config import _suggest


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file; every cell's config is built once to fail early."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"experiment file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ExperimentError(f"{path}: not valid YAML: {e}") from e
    _refuse_record_keys(raw)
    exp = experiment_from_dict(raw, path.parent, default_name=path.stem, source=path.resolve())
    check_cells(exp)
    return exp


def _refuse_record_keys(raw: Any) -> None:
    """What `compare` writes into experiment.json for the report is not for experiment files."""
    arms = raw.get("arms") if isinstance(raw, dict) else None
    for i, arm in enumerate(arms if isinstance(arms, list) else []):
        if isinstance(arm, dict) and "default_lr" in arm:
            raise ExperimentError(
                f"arms[{i}].default_lr is what compare records in experiment.json; set the "
                "arm's optim.lr (its grid is centred on it) or give an lr_grid"
            )


def experiment_from_dict(
    raw: Any, root: Path, default_name: str = "experiment", source: Path | None = None
) -> Experiment:
    """Validate an experiment file's content (relative paths resolved against `root`)."""
    if not isinstance(raw, dict):
        raise ExperimentError("an experiment file is a mapping (name, base, arms, budgets, ...)")
    _check_keys(raw, EXPERIMENT_KEYS, "")
    seeds, budgets = _seeds(raw), _budgets(raw)
    spec = _tuning(raw, seeds, budgets)
    arms = _arms(raw, spec)
    name = str(raw.get("name", default_name))
    if not NAME_PATTERN.match(name):
        raise ExperimentError(f"name {name!r}: use letters, digits, '.', '_' or '-'")
    exp = Experiment(
        name=name,
        description=str(raw.get("description", "")),
        arms=arms,
        budgets=budgets,
        seeds=seeds,
        baseline=_baseline(raw, arms),
        tuning_seeds=spec.seeds,
        tuning=spec,
        base=_base_config(raw, root),
        config=_mapping(raw, "config", "a mapping of config sections"),
        settings=dict(_mapping(raw, "set", "a mapping of dotted config keys to values")),
        stats=_stats(raw),
        source=source,
        finetune=_finetune(raw.get("finetune"), root),
        executor=_executor(raw),
    )
    return _with_default_grids(exp)


def _with_default_grids(exp: Experiment) -> Experiment:
    """Give each tuned arm without an `lr_grid` its grid around its own configured LR. An
    experiment record carries `default_lr`; otherwise one config per such arm is built."""
    arms = []
    for arm in exp.arms:
        if arm.tuned and not arm.grid_given:
            lr0 = arm.default_lr
            if lr0 is None:
                lr0 = exp.config_for(Cell(arm.name, exp.budgets[0], exp.seeds[0])).optim.lr
            arm = replace(arm, default_lr=lr0, lr_grid=exp.spec.grid(lr0))
        arms.append(arm)
    return replace(exp, arms=tuple(arms))


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


def _arms(raw: dict, spec: TuningSpec) -> tuple[Arm, ...]:
    arms = tuple(_arm(a, i, spec) for i, a in enumerate(_list(raw, "arms")))
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


def _tuning(raw: dict, seeds: tuple[int, ...], budgets: tuple[str, ...]) -> TuningSpec:
    """The `tuning:` section. Its presence makes every arm tuned by default; without it only
    arms with an `lr_grid` (or `tune: true`) are, with the same defaults."""
    given = "tuning" in raw
    tuning = _mapping(raw, "tuning", "a mapping (seeds, trials, factor, max_extensions, budgets)")
    _check_keys(tuning, TUNING_KEYS, "tuning.")
    spec = TuningSpec(
        seeds=_tuning_seeds(tuning, seeds),
        trials=_count(tuning.get("trials", 3), "tuning.trials", minimum=2),
        factor=_factor(tuning.get("factor", 2.0)),
        max_extensions=_count(tuning.get("max_extensions", 2), "tuning.max_extensions", 0),
        budgets=_tuning_budgets(tuning.get("budgets", "all"), budgets),
        given=given,
    )
    return spec


def _tuning_seeds(tuning: dict, seeds: tuple[int, ...]) -> tuple[int, ...]:
    # Default: one seed no arm is judged on, far from the judged ones.
    raw = _list(tuning, "seeds", default=[max(seeds) + 1000])
    tuning_seeds = tuple(_int(s, "tuning.seeds") for s in raw)
    if not tuning_seeds or len(set(tuning_seeds)) != len(tuning_seeds):
        raise ExperimentError(f"tuning.seeds: give distinct integer seeds, got {raw}")
    if shared := sorted(set(tuning_seeds) & set(seeds)):
        raise ExperimentError(
            f"tuning.seeds {list(tuning_seeds)} share {shared} with the judged seeds "
            f"{list(seeds)}: an LR chosen on a seed would be judged on that same run. Use "
            f"seeds no arm is judged on (default: [{max(seeds) + 1000}])"
        )
    return tuning_seeds


def _tuning_budgets(raw: Any, budgets: tuple[str, ...]) -> tuple[str, ...]:
    """`all` (tune at every budget), `first`, or a list of the experiment's budgets."""
    if raw == "all":
        return budgets
    if raw == "first":
        return budgets[:1]
    chosen = [str(b) for b in (raw if isinstance(raw, list) else [raw])]
    for budget in chosen:
        if budget not in budgets:
            hint = _suggest(budget, [*budgets, "all", "first"])
            raise ExperimentError(
                f"tuning.budgets: {budget!r} is not one of the budgets {list(budgets)} (or "
                f"`all`, `first`){hint}"
            )
    if not chosen:
        raise ExperimentError("tuning.budgets: give `all`, `first` or a list of budgets")
    return tuple(b for b in budgets if b in chosen)  # in the experiment's order


def _count(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ExperimentError(f"{where}: an integer >= {minimum}, got {value!r}")
    return value


def _factor(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 1:
        raise ExperimentError(
            f"tuning.factor: a number > 1 (the ratio of neighbouring LRs), got {value!r}"
        )
    return float(value)


def _stats(raw: dict) -> StatsSpec:
    stats_raw = _mapping(raw, "stats", "a mapping")
    _check_keys(stats_raw, STATS_KEYS, "stats.")
    stats = StatsSpec(**stats_raw)
    # analysis/stats.TESTS; the run layer does not import the analysis above it.
    if stats.test not in ("paired", "permutation", "welch", "bootstrap"):
        raise ExperimentError(
            f"stats.test must be paired, permutation, welch or bootstrap, got {stats.test!r}"
        )
    if stats.correction not in ("holm", "none"):
        raise ExperimentError(f"stats.correction must be holm or none, got {stats.correction!r}")
    for key in ("confidence", "alpha", "power", "price_error"):
        value = getattr(stats, key)
        if not isinstance(value, int | float) or not 0 < value < 1:
            raise ExperimentError(f"stats.{key} must be a number in (0, 1), got {value!r}")
    return stats


def _executor(raw: dict) -> dict[str, Any]:
    """The `executor:` section: where cells run unless the command line says otherwise. Its
    options must be ones its executor (`name`, default local) uses."""
    from budgetlm.compare.run.executors import (
        SECTION_KEYS,
        ExecutorError,
        check_applies,
        check_jobs,
        check_name,
        check_option,
    )

    section = _mapping(raw, "executor", "a mapping (name, jobs, gpus, partition, ...)")
    _check_keys(section, SECTION_KEYS, "executor.")
    try:
        name = check_name(section.get("name", "local"), "executor.name")
        out: dict[str, Any] = {"name": name} if "name" in section else {}
        if section.get("jobs") is not None:
            out["jobs"] = check_jobs(section["jobs"], "executor.jobs")
        options = {
            key: check_option(key, value, f"executor.{key}")
            for key, value in section.items()
            if key not in ("name", "jobs")
        }
        check_applies(name, options, flags=False)
    except ExecutorError as e:
        raise ExperimentError(str(e)) from e
    return {**out, **{k: v for k, v in options.items() if v is not None}}


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
        if arm.tuned:
            exp.config_for(Cell(arm.name, exp.budgets[0], exp.tuning_seeds[0], arm.lr_grid[0]))


def _arm(raw: Any, index: int, spec: TuningSpec) -> Arm:
    if isinstance(raw, str):
        raw = {"name": raw, "method": raw}
    if not isinstance(raw, dict):
        raise ExperimentError(f"arms[{index}]: an arm is a mapping (name, method, optim, set)")
    _check_keys(raw, ARM_KEYS + RECORD_ARM_KEYS, f"arms[{index}].")
    if "name" not in raw:
        raise ExperimentError(f"arms[{index}]: every arm needs a name")
    name = str(raw["name"])
    if not NAME_PATTERN.match(name):
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
    if lr_grid and "optim.lr" in flatten_settings(settings):
        raise ExperimentError(f"arm {name!r}: give either optim.lr in set or an lr_grid")
    tuned = _tuned(raw, name, lr_grid, spec)
    default_lr = raw.get("default_lr")
    return Arm(
        name=name,
        method=str(raw.get("method", "none")),
        optim=None if raw.get("optim") is None else str(raw["optim"]),
        settings=dict(settings),
        lr_grid=lr_grid,
        description=str(raw.get("description", "")),
        tuned=tuned,
        grid_given=bool(lr_grid),
        default_lr=None if default_lr is None else float(default_lr),
    )


def _tuned(raw: dict, name: str, lr_grid: tuple[float, ...], spec: TuningSpec) -> bool:
    """An arm's own `tune:` decides; else a `tuning:` section tunes every arm; else (files
    from before the section existed) an arm with an LR grid is tuned."""
    tune = raw.get("tune")
    if tune is not None and not isinstance(tune, bool):
        raise ExperimentError(f"arm {name!r}: tune must be true or false, got {tune!r}")
    tuned = tune if tune is not None else (spec.given or len(lr_grid) > 1)
    if tuned and len(lr_grid) == 1:
        raise ExperimentError(
            f"arm {name!r}: an lr_grid to tune needs at least 2 LRs; to fix the arm's LR, give "
            "it optim.lr in set and tune: false"
        )
    if not tuned and len(lr_grid) > 1:
        raise ExperimentError(
            f"arm {name!r}: tune: false with an lr_grid of {len(lr_grid)} LRs; give one LR "
            "(optim.lr in set) or let the arm be tuned"
        )
    return tuned


def _finetune(raw: Any, root: Path) -> dict[str, Any] | None:
    """The fine-tuning spec, checked now: a bad protocol should not surface after training."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ExperimentError("finetune: must be a mapping (suite, tasks, seeds, epochs, ...)")
    _check_keys(raw, FINETUNE_KEYS, "finetune.")
    from budgetlm.finetune.instructions.protocol import protocol_from_spec
    from budgetlm.finetune.suites import suite_tasks
    from budgetlm.finetune.tasks import TaskError

    spec = dict(raw)
    spec.setdefault("suite", "offline")
    try:
        known = suite_tasks(spec["suite"])
        unknown = [t for t in spec.get("tasks") or [] if t not in known]
        if unknown:
            raise TaskError(f"suite {spec['suite']!r} has no task {unknown}")
        protocol_from_spec(spec)
    except (TaskError, ValueError, TypeError) as e:
        raise ExperimentError(f"finetune: {e}") from e
    if spec.get("data_dir"):
        data_dir = Path(spec["data_dir"])
        spec["data_dir"] = str(data_dir if data_dir.is_absolute() else (root / data_dir).resolve())
    dropped = spec.get("max_dropped")
    if dropped is not None and not (
        isinstance(dropped, int | float) and not isinstance(dropped, bool) and 0 <= dropped <= 1
    ):
        raise ExperimentError(
            f"finetune.max_dropped: a fraction of a split's rows, 0 to 1, not {dropped!r}"
        )
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
