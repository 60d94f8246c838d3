"""The model shapes an experiment's arms train (docs/compare.md, "Shape studies").

Two uses:
- before a grid starts (and for `--dry-run`), `check_rst_coverage` refuses an experiment whose
  RST table cannot price every shape an arm with an RST budget will train: its configured shape
  fitted to the data, and every shape its methods grow it into (`Method.shapes_used`, e.g. staged
  growth's targets). Under `rst.fallback=refuse` every cell of such an arm would fail, one after
  another, so the experiment is refused up front, naming the arm, the shape and the
  `budgetlm calibrate` command that prices it;
- each finished cell writes `shape.json` (`write_shape_record`): the shape it started with and
  the one it ended with, with their parameter and FLOP counts, which the report shows beside
  the loss without loading torch.

Fitting a shape to its data (the tokenizer's vocabulary, T5's target length) needs the prepared
dataset: the check prepares it (once, cached; the grid would prepare it before any cell anyway).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from budgetlm.compare.run.experiment import (
    Arm,
    Cell,
    Experiment,
    ExperimentError,
    flatten_settings,
)

SHAPE_FILE = "shape.json"

# The settings of a cell that shape or time what `budgetlm calibrate` measures: the model and
# its data (which fit the vocabulary and T5's target length), the micro-batch sizes, the device
# and precision, and the optimizer's own options. Everything else (the budget, evaluation,
# logging, the LR) does not change a table entry.
_CALIBRATE_PREFIXES = ("model.", "data.", "optim.")
_CALIBRATE_KEYS = (
    "train.batch_size",
    "train.micro_batch_size",
    "train.device",
    "train.precision",
    "train.threads",
)
_NOT_CALIBRATED = ("optim.lr",)


def shape_label(shape: Any) -> str:
    """A shape in one short line: family, depth, widths, vocabulary, sequence length."""
    s = shape
    depth = f"{s.n_layers}/{s.n_decoder_layers}" if s.family == "t5" else str(s.n_layers)
    seq = f"{s.seq_len}/{s.target_len}" if s.family == "t5" else str(s.seq_len)
    return (
        f"{s.family} L{depth} d{s.d_model} h{s.n_heads}x{s.d_kv} ff{s.d_ff} "
        f"vocab{s.vocab_size} seq{seq}"
    )


def configured_shape(cfg: Any) -> Any:
    """The shape a config names, before it is fitted to its data."""
    from budgetlm.config import model_overrides
    from budgetlm.models import get_shape

    return get_shape(cfg.model.preset, **model_overrides(cfg.model))


def fitted_shape(cfg: Any, progress: bool = False) -> Any:
    """The shape a run of `cfg` builds: fitted to its prepared data (prepared if need be)."""
    from budgetlm.train.run_data import resolve_data

    return resolve_data(cfg, progress=progress).shape


@dataclass(frozen=True)
class UsedShape:
    shape: Any  # budgetlm.models.ModelShape
    source: str  # "configured", or the method spec whose run grows into it ("staged")


def shapes_used(cfg: Any, shape: Any) -> list[UsedShape]:
    """Every shape a run of `cfg` trains, given its fitted configured `shape`: that shape, then
    what its methods grow it into (`Method.shapes_used`), each shape once. The same list the
    run itself prices before it starts (train/pricing.py, `run_shapes`)."""
    from budgetlm.train.pricing import run_shapes

    used = run_shapes(cfg, shape)
    return [UsedShape(s, "configured" if i == 0 else cfg.method) for i, s in enumerate(used)]


# -- RST coverage ---------------------------------------------------------------------------------


@dataclass
class Uncovered:
    """One shape (or its optimizer) an arm trains that its RST table does not price."""

    arm: str
    budgets: list[str]
    used: UsedShape
    optimizer: str | None  # None: the shape itself is not in the table; else only this optimizer
    command: str | None  # the calibrate command that prices it (None: no config can build it)
    why_no_command: str = ""
    shipped_cover: list[str] = field(default_factory=list)  # shipped tables that price the shape

    def describe(self) -> str:
        where = (
            "its configured shape"
            if self.used.source == "configured"
            else f"a shape method={self.used.source} grows it into"
        )
        what = shape_label(self.used.shape)
        if self.optimizer is not None:
            what += f", optimizer {self.optimizer}"
        budgets = ", ".join(self.budgets)
        return f"arm {self.arm} (budget{'s' * (len(self.budgets) > 1)} {budgets}), {where}: {what}"


def check_rst_coverage(
    exp: Experiment,
    *,
    fit: Callable[[Any], Any] | None = None,
    progress: bool = False,
) -> None:
    """Refuse (ExperimentError, exit 2) an experiment whose RST table does not price every
    shape an arm trains under an RST budget with `rst.fallback=refuse`.

    `fit(cfg)` gives the run's fitted shape (default: prepare the data and fit it).
    """
    problems, tables = rst_coverage(exp, fit=fit, progress=progress)
    if problems:
        raise ExperimentError(coverage_message(problems, tables))


def rst_coverage(
    exp: Experiment,
    *,
    fit: Callable[[Any], Any] | None = None,
    progress: bool = False,
) -> tuple[list[Uncovered], dict[str, Any]]:
    """What the check refuses, and the tables it loaded (by their source)."""
    from budgetlm.budget.clock import Budget
    from budgetlm.budget.rst import CostTable, TableError, shape_key

    fit = fit or (lambda cfg: fitted_shape(cfg, progress=progress))
    fitted: dict[str, Any] = {}  # (model, data) of a config -> its fitted shape
    tables: dict[str, Any] = {}  # (rst.table, tolerance) -> CostTable
    found: dict[tuple[str, str, str | None], Uncovered] = {}
    for arm in exp.arms:
        for budget in exp.budgets:
            if Budget.parse(budget).unit != "rst":
                continue
            cfg = exp.config_for(_cell(exp, arm, budget))
            if cfg.rst.fallback != "refuse":
                continue
            d = cfg.to_dict()
            table_key = json.dumps([cfg.rst.table, cfg.rst.tolerance])
            if table_key not in tables:
                try:
                    tables[table_key] = CostTable.load(cfg.rst.table, tolerance=cfg.rst.tolerance)
                except TableError as e:
                    raise ExperimentError(f"arm {arm.name!r}: rst.table: {e}") from e
            table = tables[table_key]
            data_key = json.dumps([d["model"], d["data"]], sort_keys=True)
            if data_key not in fitted:
                if progress and not fitted:
                    print(
                        "compare: fitting the arms' model shapes to their data (prepared once, "
                        "as the grid would) to check that the RST table prices them",
                        file=sys.stderr,
                    )
                fitted[data_key] = fit(cfg)
            try:
                used_shapes = shapes_used(cfg, fitted[data_key])
            except ValueError as e:  # a method's options it cannot plan with
                raise ExperimentError(f"arm {arm.name!r}: {e}") from e
            for used in used_shapes:
                entry = table.entry_for(used.shape)
                optimizer = cfg.optim.name
                if entry is not None and entry.optimizer_step_seconds(optimizer, None) is not None:
                    continue
                missing = None if entry is None else optimizer
                key = (arm.name, shape_key(used.shape), missing)
                if key in found:
                    found[key].budgets.append(budget)
                    continue
                command, why = calibrate_command(exp, arm, cfg, fitted[data_key], used.shape)
                found[key] = Uncovered(
                    arm.name,
                    [budget],
                    used,
                    missing,
                    command,
                    why,
                    shipped_cover=_shipped_covering(used.shape, optimizer),
                )
    by_source = {t.source: t for t in tables.values()}
    return list(found.values()), by_source


def _cell(exp: Experiment, arm: Arm, budget: str) -> Cell:
    """A cell of the arm at the budget: seed and LR change no shape."""
    lr = arm.lr_grid[0] if arm.lr_grid else None
    return Cell(arm.name, budget, exp.seeds[0], lr)


def _shipped_covering(shape: Any, optimizer: str) -> list[str]:
    """The shipped tables that price `shape` with `optimizer` (read without fitting)."""
    from importlib import resources

    from budgetlm.budget.rst import shape_key, shipped_tables

    key = shape_key(shape)
    names = []
    for name in shipped_tables():
        text = (resources.files("budgetlm.budget") / "tables" / f"{name}.json").read_text()
        if any(
            shape_key(e["shape"]) == key and optimizer in e["optimizer_seconds"]
            for e in json.loads(text)["entries"]
        ):
            names.append(name)
    return names


def coverage_message(problems: list[Uncovered], tables: dict[str, Any]) -> str:
    from budgetlm.budget.rst import SHIPPED_PREFIX

    sources = sorted(tables)
    named = ", ".join(sources) if sources else "the RST table"
    lines = [
        f"the RST table ({named}) does not price every model shape the experiment's arms train "
        "under an RST budget; with rst.fallback=refuse each cell of such an arm would fail. "
        "Not covered:"
    ]
    for p in problems:
        lines.append(f"  {p.describe()}")
        if p.command is not None:
            lines.append(f"    {p.command}")
        else:
            lines.append(f"    no config builds it for `budgetlm calibrate`: {p.why_no_command}")
        if p.shipped_cover:
            lines.append(f"    (the shipped table {', '.join(p.shipped_cover)} prices it)")
    for source in sources:
        table = tables[source]
        covered = ", ".join(sorted(e.label for e in table.entries.values())) or "nothing"
        lines.append(f"{source} covers: {covered}.")
    shipped = [s.removeprefix(SHIPPED_PREFIX) for s in sources if s.startswith(SHIPPED_PREFIX)]
    if shipped:
        lines.append(
            f"A shipped table ({', '.join(shipped)}) is never extended: the commands write "
            "TABLE.json. Measure into it, on one reference machine, every shape the experiment "
            "trains (the covered arms' too: the same command with their settings) and set "
            "rst.table=TABLE.json in the experiment's `set:`."
        )
    if len(shipped) < len(sources):
        lines.append(
            "Run the commands on the machine the table was measured on: calibrate extends a "
            "table only with measurements of that machine."
        )
    lines.append(
        "Or set rst.fallback=flops to estimate uncovered shapes from FLOPs (each run records "
        "that as a warning)."
    )
    return "\n".join(lines)


def calibrate_command(
    exp: Experiment, arm: Arm, cfg: Any, fitted: Any, target: Any
) -> tuple[str | None, str]:
    """The `budgetlm calibrate` command that measures `target` as arm `arm` would train it: the
    experiment's base config, the arm's settings that shape or time a measurement, and the model
    knobs that turn its configured (fitted) shape into `target`. (None, why) when no config
    can build `target` (it differs in a field a config does not set)."""
    from budgetlm.budget.rst import shape_key
    from budgetlm.config import ModelConfig, load_config

    settings = _calibrate_settings(exp, arm)
    knobs = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "preset"]
    for name in knobs:
        if getattr(target, name) != getattr(fitted, name):
            settings[f"model.{name}"] = getattr(target, name)
    # The command is only given if it builds exactly `target` (the data fits the rest).
    check = load_config(exp.base, settings=settings)
    built = dataclasses.replace(
        configured_shape(check), vocab_size=fitted.vocab_size, target_len=fitted.target_len
    )
    if shape_key(built) != shape_key(target):
        differ = [
            f.name
            for f in dataclasses.fields(target)
            if getattr(built, f.name) != getattr(target, f.name)
        ]
        return None, f"it differs from the arm's configured shape in {', '.join(differ)}"
    table = cfg.rst.table
    out = table if table is not None and Path(table).is_file() else "TABLE.json"
    args = ["budgetlm", "calibrate"]
    items = [f"{key}={_render(value)}" for key, value in settings.items()]
    if exp.base is not None:
        args.append(_display_path(exp.base))
    elif items:
        args.append(items.pop(0))  # a first argument with "=" is an override, not a file
    else:
        args.append(f"model.preset={cfg.model.preset}")
    args += ["--out", str(out), "--optimizers", cfg.optim.name]
    if items:
        args += ["--set", *items]
    return " ".join(shlex.quote(a) for a in args), ""


def _calibrate_settings(exp: Experiment, arm: Arm) -> dict[str, Any]:
    """The experiment's and the arm's settings that shape or time what calibrate measures, in
    the order the cell applies them."""
    settings: dict[str, Any] = {
        **flatten_settings(exp.config),
        **flatten_settings(exp.settings),
    }
    if arm.optim is not None:
        settings["optim.name"] = arm.optim
    settings.update(flatten_settings(arm.settings))
    return {
        key: value
        for key, value in settings.items()
        if (key.startswith(_CALIBRATE_PREFIXES) or key in _CALIBRATE_KEYS)
        and key not in _NOT_CALIBRATED
    }


def _render(value: Any) -> str:
    """A setting as a command-line override parses it back (YAML)."""
    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)


def _display_path(path: Path) -> str:
    """Relative to the working directory when under it (where `compare` was run from)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# -- the cell's record ---------------------------------------------------------------------------


def shape_facts(shape: Any) -> dict[str, Any]:
    from budgetlm.models import count_params, flops_per_token

    return {
        "label": shape_label(shape),
        "params": count_params(shape),
        "params_non_embedding": count_params(shape, embeddings=False),
        "train_flops_per_token": flops_per_token(shape),
        "shape": dataclasses.asdict(shape),
    }


def write_shape_record(run_dir: Path, cfg: Any, end: Any) -> None:
    """`shape.json`: the shape the run started with (its config's, fitted to the data like
    `end`) and `end`, the one it finished with (grown, for staged growth)."""
    start = dataclasses.replace(
        configured_shape(cfg), vocab_size=end.vocab_size, target_len=end.target_len
    )
    record = {"start": shape_facts(start), "end": shape_facts(end)}
    tmp = run_dir / f".{SHAPE_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, run_dir / SHAPE_FILE)
