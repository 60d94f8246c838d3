"""How well an RST table predicts wall time here: `budgetlm calibrate --check TABLE CONFIG...`.

For each config, short RST-budgeted runs of the baseline and of each method alternate, round by
round (B M1 M2 ... B M1 M2 ...). Per run, ratio = RST / wall, wall being the training time the
loop measured (evaluation and checkpoints are off, and RST does not charge them either). The
baseline's ratio - 1 is the table's absolute error on this machine, which includes how much
faster or slower this machine is than the reference. A method's error is taken relative to the
baseline of its own round, ratio_m / ratio_b - 1: a machine uniformly faster or slower, or one
whose speed drifts between rounds (a shared VM), moves both alike and cancels; what is left is
what the table gets wrong about the method's own work, which is what decides a comparison.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetlm.config import ConfigError

OPTIM_PREFIX = "optim:"
DEFAULT_OPTIMIZERS = ("lion", "sophia")
DEFAULT_BUDGET = "20s-rst"
DEFAULT_REPEATS = 3
DEFAULT_MAX_ERROR = 0.05
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Arm:
    """One run to time: a config (with its overrides) under one method, an RST budget, a table."""

    config: str | None
    overrides: tuple[str, ...]
    method: str  # "baseline", a method name, or "optim:NAME" (the baseline with that optimizer)
    budget: str
    table: str
    run_dir: Path
    round: int = 0  # -1: the untimed warm-up run


@dataclass(frozen=True)
class RunResult:
    """What one run spent: reference seconds, the loop's training wall seconds, steps."""

    rst_s: float
    wall_s: float
    steps: int


RunArm = Callable[[Arm], RunResult]


def arm_overrides(arm: Arm) -> list[str]:
    """The config overrides of a timed run: the budget, the table, a run folder, nothing the
    budget does not charge (evaluation, checkpoints, per-step logging)."""
    overrides = [
        *arm.overrides,
        f"budget={arm.budget}",
        f"rst.table={arm.table}",
        f"run.dir={arm.run_dir}",
        f"run.out_dir={arm.run_dir.parent}",
        "train.progress_bar=false",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.log_every=1000000",
        "train.loggers=[]",
    ]
    if arm.method.startswith(OPTIM_PREFIX):  # its optimizer step (and Sophia's Hessian passes)
        overrides += ["method=none", f"optim.name={arm.method.removeprefix(OPTIM_PREFIX)}"]
    elif arm.method == "baseline":
        overrides.append("method=none")  # even when the config names a method
    else:
        overrides.append(f"method={arm.method}")
    return overrides


def run_arm(arm: Arm) -> RunResult:
    """Train one arm for real and read what its clock spent."""
    from budgetlm.config import load_config
    from budgetlm.train.session import open_run

    cfg = load_config(arm.config, arm_overrides(arm))
    if arm.method == "rho_loss":  # its irreducible-loss model first (reported, never charged)
        from budgetlm.train.irreducible import prepare_il_table

        prepare_il_table(cfg, progress=False)
    trainer = open_run(cfg, progress=False)
    try:
        trainer.run()
    finally:
        trainer.log.close()
    spent = trainer.state.clock.spent
    return RunResult(float(spent["rst"]), float(spent["seconds"]), int(trainer.state.step))


def _family(cfg: Any) -> str:
    from budgetlm.models import get_shape

    return get_shape(cfg.model.preset).family


def default_methods(cfg: Any) -> list[str]:
    """Every built-in method that fits the config's model family, then the optimizer arms
    (lion, sophia) other than the config's own optimizer."""
    from budgetlm.registry import METHODS, PluginError, method_class

    family = _family(cfg)
    names = []
    for name in METHODS:
        try:
            cls = method_class(name)
        except PluginError:
            continue  # not implemented
        if family in cls.families:
            names.append(name)
    return names + [OPTIM_PREFIX + o for o in DEFAULT_OPTIMIZERS if o != cfg.optim.name]


def check_methods(names: Sequence[str], cfg: Any, config: str) -> list[str]:
    """Validate `--methods` for one config before anything runs: a known method that fits the
    config's family, or `optim:NAME` with a known optimizer (a typo gets a did-you-mean)."""
    from budgetlm.registry import check_optimizer_name, method_class, parse_method_spec

    family = _family(cfg)
    checked = []
    for name in names:
        if name == "baseline":
            continue  # always run
        try:
            if name.startswith(OPTIM_PREFIX):
                check_optimizer_name(name.removeprefix(OPTIM_PREFIX))
            else:
                for part in parse_method_spec(name):  # unknown names: did-you-mean
                    families = method_class(part).families
                    if family not in families:
                        raise ConfigError(
                            f"method {part!r} does not fit {config} (a {family} model; it "
                            f"supports {', '.join(families)})"
                        )
        except ValueError as e:
            raise ConfigError(f"--methods: {e}") from e
        checked.append(name)
    return list(dict.fromkeys(checked))


def mean_ci(values: Sequence[float], level: float = CONFIDENCE) -> dict[str, Any]:
    """Mean and a t confidence interval (None with fewer than two values)."""
    from scipy import stats

    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"n": n, "mean": mean, "ci_low": None, "ci_high": None}
    half = stats.t.ppf((1 + level) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return {"n": n, "mean": mean, "ci_low": mean - half, "ci_high": mean + half}


@dataclass
class FidelityReport:
    """Per-run rows and per-(config, method) errors of one `calibrate --check`."""

    table: str
    table_hash: str
    machine: dict[str, Any]
    command: str
    budget: str
    repeats: int
    max_error: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def summarise(self) -> None:
        """The baseline's absolute error and each method's error relative to its round's
        baseline, with their confidence intervals."""
        self.errors = []
        configs = list(dict.fromkeys(r["config"] for r in self.rows))
        for config in configs:
            rows = [r for r in self.rows if r["config"] == config]
            base = [r["ratio"] - 1 for r in rows if r["method"] == "baseline"]
            self.errors.append(
                {"config": config, "method": "baseline", "kind": "absolute", **mean_ci(base)}
            )
            for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "baseline"):
                rel = [r["vs_baseline"] for r in rows if r["method"] == method]
                entry = {"config": config, "method": method, "kind": "relative", **mean_ci(rel)}
                entry["within"] = abs(entry["mean"]) <= self.max_error
                self.errors.append(entry)

    @property
    def outside(self) -> list[dict[str, Any]]:
        """The methods whose mean relative error is beyond ±max_error."""
        return [e for e in self.errors if e["kind"] == "relative" and not e["within"]]

    @property
    def exit_code(self) -> int:
        return 1 if self.outside else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "table_hash": self.table_hash,
            "machine": self.machine,
            "command": self.command,
            "budget": self.budget,
            "repeats": self.repeats,
            "max_error": self.max_error,
            "confidence": CONFIDENCE,
            "errors": self.errors,
            "rows": self.rows,
        }

    def write(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    def render(self) -> str:
        """The errors as a text table, and a verdict line."""

        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{x:+.1%}"

        lines = [
            f"RST/wall on this machine, table {self.table} ({self.table_hash[:12]}), "
            f"budget {self.budget}, {self.repeats} round(s), {CONFIDENCE:.0%} t intervals",
            f"{'config':<28} {'method':<22} {'error':<24} {'mean':>7}  {'CI':>17}",
        ]
        for e in self.errors:
            kind = "RST/wall - 1" if e["kind"] == "absolute" else "vs baseline of round"
            ci = f"[{pct(e['ci_low'])}, {pct(e['ci_high'])}]"
            mark = "" if e.get("within", True) else "  OUTSIDE"
            lines.append(
                f"{e['config']:<28} {e['method']:<22} {kind:<24} {pct(e['mean']):>7}  {ci:>17}"
                + mark
            )
        if self.outside:
            names = ", ".join(f"{e['method']} ({e['config']})" for e in self.outside)
            lines.append(f"outside ±{self.max_error:.0%} relative to the baseline: {names}")
        else:
            lines.append(f"every method within ±{self.max_error:.0%} of the baseline")
        return "\n".join(lines)


def check_fidelity(
    table: str,
    configs: Sequence[tuple[str | None, Sequence[str]]],
    *,
    methods: Sequence[str] | None = None,
    repeats: int = DEFAULT_REPEATS,
    budget: str = DEFAULT_BUDGET,
    max_error: float = DEFAULT_MAX_ERROR,
    run: RunArm | None = None,
    command: str = "",
    progress: Callable[[str], None] | None = None,
    warmup: bool = True,
) -> FidelityReport:
    """Alternate RST-budgeted runs of the baseline and each method, `repeats` rounds per config.

    `configs`: (config file, overrides) pairs. `run` does one run (default `run_arm`; tests plant
    (rst, wall) per run). Every name, the table and the budget are checked before any run.
    `warmup`: one untimed baseline run per config first.
    """
    from budgetlm.budget.clock import Budget
    from budgetlm.budget.rst import CostTable
    from budgetlm.budget.timing import machine_description
    from budgetlm.config import load_config
    from budgetlm.train.runtime import resolve_device

    if repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, not {repeats}")
    if not max_error > 0:
        raise ConfigError(f"--max-error must be positive, not {max_error}")
    if Budget.parse(budget).unit != "rst":
        raise ConfigError(f"--budget must be in RST (like 20s-rst), not {budget!r}")
    loaded = CostTable.load(table)  # refuses a broken table before any run
    plans = []
    for config, overrides in configs:
        cfg = load_config(config, [*overrides, f"rst.table={table}"])
        names = default_methods(cfg) if methods is None else check_methods(methods, cfg, config)
        plans.append((config, tuple(overrides), cfg, ["baseline", *names]))
    run = run or run_arm  # looked up at call time: a test may replace it
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    report = FidelityReport(
        table=table,
        table_hash=loaded.hash,
        machine=machine_description(resolve_device(plans[0][2].train.device)),
        command=command,
        budget=budget,
        repeats=repeats,
        max_error=max_error,
    )
    total = sum(len(arms) for *_, arms in plans) * repeats
    with tempfile.TemporaryDirectory(prefix="budgetlm-check-") as tmp:
        for i, (config, overrides, _, arms) in enumerate(plans):
            label = config or " ".join(overrides)
            if warmup:
                # The first run of a config pays one-off costs that are no step's (the device's
                # context and kernels, allocator and thread pools, the data's first read): with a
                # budget of seconds they would land on round 1's baseline alone.
                arm = Arm(config, overrides, "baseline", budget, table, Path(tmp) / f"warmup-{i}")
                result = run(dataclasses.replace(arm, round=-1))
                say(f"[warm-up] {label} baseline: {result.steps} steps, not counted")
            for round_ in range(repeats):
                base_ratio = None
                for method in arms:
                    arm = Arm(
                        config,
                        overrides,
                        method,
                        budget,
                        table,
                        Path(tmp) / f"run-{len(report.rows)}",
                        round_,
                    )
                    result = run(arm)
                    ratio = result.rst_s / result.wall_s
                    row = {
                        "config": label,
                        "round": round_,
                        "method": method,
                        "steps": result.steps,
                        "rst_s": result.rst_s,
                        "wall_s": result.wall_s,
                        "ratio": ratio,
                    }
                    if method == "baseline":
                        base_ratio = ratio
                    else:
                        row["vs_baseline"] = ratio / base_ratio - 1
                    report.rows.append(row)
                    vs = f"  vs baseline {row['vs_baseline']:+.1%}" if "vs_baseline" in row else ""
                    say(
                        f"[{len(report.rows)}/{total}] {label} round {round_ + 1} {method}: "
                        f"{result.steps} steps, RST {result.rst_s:.2f}s, "
                        f"wall {result.wall_s:.2f}s, RST/wall {ratio:.3f}{vs}"
                    )
    report.summarise()
    return report
