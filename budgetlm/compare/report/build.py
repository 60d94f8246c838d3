"""The comparison report's data, built only from the cells' own files (`budgetlm report DIR`).

`build_report` gathers what the grid produced: per budget and arm the final held-out losses
over seeds, the statistics against the baseline, the curves and where the budget went. The
renderings (html.py, markdown.py, the CSV tables) only format what is here; write.py writes
them. Nothing here imports torch, so `budgetlm report` stays light.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from budgetlm.compare.analysis import stats
from budgetlm.compare.analysis.results import CellResult, Tuning, judged_cells, read_cell, tuning
from budgetlm.compare.run.cell import CELL_CONFIG
from budgetlm.compare.run.experiment import Cell, Experiment, experiment_from_dict
from budgetlm.compare.run.grid import EXPERIMENT_FILE
from budgetlm.errors import UserError

PURPOSES = ("training", "selection", "hessian", "optimizer")


@dataclass
class ArmResult:
    """One arm at one budget: its judged runs and their statistics against the baseline."""

    arm: str
    budget: str
    method: str
    optim: str
    lr: float | None
    tuned: bool
    cells: list[CellResult]
    comparison: stats.Comparison | None = None

    @property
    def finished(self) -> list[CellResult]:
        return [c for c in self.cells if c.status == "finished" and c.final_loss is not None]

    @property
    def losses(self) -> list[float]:
        return [float(c.final_loss) for c in self.finished]

    @property
    def mean_std(self) -> tuple[float, float] | None:
        return stats.mean_std(self.losses) if self.losses else None

    @property
    def train_loss(self) -> tuple[float, float] | None:
        """Mean and std over seeds of the last logged training-step loss."""
        values = [c.train_loss for c in self.finished if c.train_loss is not None]
        return stats.mean_std(values) if values else None

    @property
    def epochs(self) -> float | None:
        """Mean passes over the training data that the budget bought."""
        values = [c.summary["epochs"] for c in self.finished if c.summary.get("epochs") is not None]
        return sum(values) / len(values) if values else None

    def mean_of(self, key: str) -> float | None:
        values = [c.summary["spent"][key] for c in self.finished if c.summary["spent"].get(key)]
        return sum(values) / len(values) if values else None

    def downstream(self, suite: str, task: str | None = None) -> list[float]:
        """Per seed: the suite average (or one task's mean main metric) after fine-tuning."""
        values = []
        for c in self.finished:
            scores = c.downstream.get(suite)
            if scores is None:
                continue
            if task is None:
                values.append(float(scores["average"]))
            elif task in scores["tasks"]:
                values.append(float(scores["tasks"][task]["mean"]))
        return values

    @property
    def steps(self) -> float | None:
        values = [c.summary["steps"] for c in self.finished]
        return sum(values) / len(values) if values else None

    def spend(self, unit: str) -> dict[str, float]:
        """Mean spending per purpose in `unit`, plus work the budget did not charge."""
        totals: dict[str, float] = {}
        for c in self.finished:
            parts = (c.summary.get("spent_by_purpose") or {}).get(unit, {})
            for purpose, amount in parts.items():
                totals[purpose] = totals.get(purpose, 0.0) + amount
            including = (c.summary.get("spent_including_uncharged") or {}).get(unit)
            if including is not None:
                extra = including - c.summary["spent"].get(unit, 0.0)
                totals["uncharged"] = totals.get("uncharged", 0.0) + extra
        n = max(1, len(self.finished))
        return {k: v / n for k, v in totals.items()}

    @property
    def overhead_share(self) -> float | None:
        """Share of the charged budget spent on selection forwards and Hessian passes."""
        unit = "rst" if self.mean_of("rst") else "flops"
        parts = self.spend(unit)
        total = sum(v for k, v in parts.items() if k != "uncharged")
        if not total:
            return None
        return (parts.get("selection", 0.0) + parts.get("hessian", 0.0)) / total


@dataclass
class Downstream:
    """Fine-tuning scores of every arm at one budget on one suite (higher is better)."""

    suite: str
    tasks: list[str]
    comparisons: dict[str, stats.Comparison]  # arm -> against the baseline (suite average)
    protocol: dict[str, Any]

    def verdict(self, arm: str) -> str | None:
        c = self.comparisons.get(arm)
        return c.verdict if c else None


@dataclass
class Report:
    exp: Experiment
    out_dir: Path
    record: dict[str, Any]
    results: dict[str, list[ArmResult]]  # budget -> one per arm, in experiment order
    tunings: list[Tuning]
    downstream: dict[str, list[Downstream]]  # budget -> one per suite any cell was scored on
    failed: list[CellResult]
    missing: list[str]  # cells not finished yet (report of an unfinished grid)
    protocol: dict[str, Any] = field(default_factory=dict)

    def arm_result(self, budget: str, arm: str) -> ArmResult:
        return next(r for r in self.results[budget] if r.arm == arm)

    @property
    def updated(self) -> str | None:
        """When the grid last ran (from experiment.json): the report shows this rather than
        when it was written, so that two reports of the same results are byte-identical."""
        return self.record.get("updated")

    @property
    def jobs(self) -> int | None:
        """Cells that ran side by side (`--jobs` of the recorded command), if known."""
        found = re.search(r"--jobs[= ](\d+)", self.record.get("command") or "")
        return int(found.group(1)) if found else None

    def devices(self, budget: str) -> list[dict[str, Any]]:
        """The meta.json device record of every attempt of every finished run at `budget`."""
        return [
            attempt.get("device") or {}
            for r in self.results[budget]
            for c in r.finished
            for attempt in (c.meta or {}).get("attempts", [])
        ]


def machine_name(device: dict[str, Any]) -> str:
    """A meta.json device record in words: the GPU, or the CPU and its core count."""
    if device.get("gpu"):
        return f"{device['gpu']} GPU"
    cpu = device.get("cpu") or device.get("type") or "unknown machine"
    cores = device.get("cpu_count")
    return f"{cpu} ({cores} cores)" if cores else str(cpu)


class ReportError(UserError, ValueError):
    """DIR is not a compare output folder."""


def load_experiment_record(out_dir: Path) -> tuple[Experiment, dict[str, Any]]:
    path = out_dir / EXPERIMENT_FILE
    if not path.is_file():
        raise ReportError(f"{out_dir} is not a compare folder (no {EXPERIMENT_FILE})")
    record = json.loads(path.read_text())
    raw = {k: v for k, v in record.items() if k not in ("source", "command", "updated")}
    raw["base"] = raw.get("base")
    exp = experiment_from_dict(raw, out_dir, source=record.get("source"))
    return exp, record


def saved_config(cells: list[CellResult]) -> dict[str, Any]:
    """The config the first of `cells` that has one was run with, as plain YAML: the grid's
    copy (cell.yaml) or the run's own (config.yaml). Loading it as a Config would validate
    it, which imports the model code and with it torch; the report needs neither."""
    for c in cells:
        for name in (CELL_CONFIG, "config.yaml"):
            if (c.run_dir / name).is_file():
                return yaml.safe_load((c.run_dir / name).read_text()) or {}
    return {}


def build_report(out_dir: str | Path) -> Report:
    out_dir = Path(out_dir)
    exp, record = load_experiment_record(out_dir)
    judged = judged_cells(exp, out_dir)
    results: dict[str, list[ArmResult]] = {}
    tunings: list[Tuning] = []
    seen_failed: dict[str, CellResult] = {}
    missing: list[str] = []
    for budget in exp.budgets:
        row: list[ArmResult] = []
        for arm in exp.arms:
            lr = None
            if arm.tuned:
                t = tuning(exp, arm, budget, out_dir)
                tunings.append(t)
                lr = t.chosen
                for grid_lr in arm.lr_grid:
                    for seed in exp.tuning_seeds:
                        c = read_cell(
                            Cell(arm.name, budget, seed, grid_lr), out_dir, with_curve=False
                        )
                        if c.status == "failed":
                            seen_failed[c.cell.id] = c
            elif arm.lr_grid:
                lr = arm.lr_grid[0]
            cells = [read_cell(c, out_dir) for c in judged[arm.name, budget] or []]
            for c in cells:
                if c.status == "failed" or c.error is not None:  # incl. failed fine-tuning
                    seen_failed[c.cell.id] = c
                elif c.status != "finished":
                    missing.append(c.cell.id)
            if judged[arm.name, budget] is None:
                missing.append(f"{arm.name}/{budget} (LR tuning unfinished)")
            # What the arm trains with, as its runs saved it (LR: the chosen one if tuned).
            optim = saved_config(cells).get("optim") or {}
            row.append(
                ArmResult(
                    arm=arm.name,
                    budget=budget,
                    method=arm.method,
                    optim=optim.get("name") or arm.optim or "?",
                    lr=optim.get("lr", lr),
                    tuned=arm.tuned,
                    cells=cells,
                )
            )
        _judge(exp, row)
        results[budget] = row
    downstream = {budget: _downstream(exp, row) for budget, row in results.items()}
    report = Report(
        exp=exp,
        out_dir=out_dir,
        record=record,
        results=results,
        tunings=tunings,
        downstream=downstream,
        failed=list(seen_failed.values()),
        missing=missing,
    )
    report.protocol = _protocol(report)
    return report


def _against_baseline(
    exp: Experiment, data: dict[str, list[float]], lower_is_better: bool = True
) -> dict[str, stats.Comparison]:
    """Every arm with results against the baseline, by the experiment's statistics settings."""
    if exp.baseline not in data:
        return {}
    found = stats.compare_arms(
        data,
        exp.baseline,
        test=exp.stats.test,
        confidence=exp.stats.confidence,
        alpha=exp.stats.alpha,
        correction=exp.stats.correction,
        lower_is_better=lower_is_better,
    )
    return {c.arm: c for c in found}


def _judge(exp: Experiment, row: list[ArmResult]) -> None:
    by_arm = _against_baseline(exp, {r.arm: r.losses for r in row if r.losses})
    for r in row:
        r.comparison = by_arm.get(r.arm)


def _downstream(exp: Experiment, row: list[ArmResult]) -> list[Downstream]:
    suites: dict[str, dict[str, Any]] = {}
    for r in row:
        for c in r.finished:
            for suite, scores in c.downstream.items():
                suites.setdefault(suite, scores)
    out = []
    for suite, example in sorted(suites.items()):
        data = {r.arm: r.downstream(suite) for r in row if r.downstream(suite)}
        comparisons = _against_baseline(exp, data, lower_is_better=False)
        out.append(Downstream(suite, list(example["tasks"]), comparisons, example["protocol"]))
    return out


def _protocol(report: Report) -> dict[str, Any]:
    """What a reader needs to trust (or reproduce) the comparison."""
    from budgetlm.budget.rst import CostTable, TableError

    exp = report.exp
    finished = [c for row in report.results.values() for r in row for c in r.finished]
    revisions, machines, tables = set(), set(), set()
    for c in finished:
        for attempt in (c.meta or {}).get("attempts", []):
            git = attempt.get("git") or {}
            rev = git.get("revision")
            revisions.add(f"{rev[:12]}{' (dirty)' if git.get('dirty') else ''}" if rev else "?")
            machines.add(machine_name(attempt.get("device") or {}))
    cells = [c for row in report.results.values() for r in row for c in r.cells]
    table_name = (saved_config(cells).get("rst") or {}).get("table")
    table = None
    try:
        table = CostTable.load(table_name)
        tables.add(table.hash[:16])
    except TableError:
        pass
    version = None
    if finished and finished[0].meta:
        version = finished[0].meta["attempts"][-1].get("budgetlm")
    return {
        "budgets": list(exp.budgets),
        "seeds": list(exp.seeds),
        "baseline": exp.baseline,
        "rst_table": table_name or "shipped CPU reference (cpu-reference)",
        "rst_table_hash": ", ".join(sorted(tables)) or None,
        "rst_machine": table.machine if table else None,
        "code_versions": sorted(revisions),
        "budgetlm": version,
        "machines_that_ran": sorted(machines),
        "stats": vars(exp.stats),
        "tuning_seeds": list(exp.tuning_seeds),
        "command": report.record.get("command"),
        "base_config": str(exp.base) if exp.base else None,
    }
