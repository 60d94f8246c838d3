"""The comparison report's data, built only from the cells' own files (`budgetlm report DIR`).

`build_report` gathers what the grid produced: per budget and arm the final held-out losses
over seeds, the statistics against the baseline (one Holm family over every test the report
shows), the compute each arm saved on the baseline's fitted loss-vs-budget curve, whether each
verdict survives a price error, the curves and where the budget went. The renderings (html.py,
markdown.py, the CSV tables) only format what is here; write.py writes them. Nothing here
imports torch, so `budgetlm report` stays light.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from budgetlm.budget.clock import Budget
from budgetlm.compare.analysis import compute_saved, sensitivity, stats
from budgetlm.compare.analysis.compute_saved import Curve, Misfit, Saved
from budgetlm.compare.analysis.control import ControlResult, read_control
from budgetlm.compare.analysis.references import read_references
from budgetlm.compare.analysis.results import CellResult, Tuning, judged_cells, read_cell, tuning
from budgetlm.compare.analysis.sensitivity import Sensitivity
from budgetlm.compare.report.curves import CURVE_KEY
from budgetlm.compare.run.cell import CELL_CONFIG
from budgetlm.compare.run.experiment import Experiment
from budgetlm.compare.run.experiment_file import experiment_from_dict
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
    saved: Saved | None = None  # compute saved on the baseline's fit
    saved_note: str = ""  # why there is no `saved`, in a few words (Report.fit_note: in full)
    sensitivity: Sensitivity | None = None  # the verdict with the extra work re-priced
    sensitivity_note: str = ""  # why there is no `sensitivity`

    @property
    def finished(self) -> list[CellResult]:
        return [c for c in self.cells if c.status == "finished" and c.final_loss is not None]

    @property
    def losses(self) -> list[float]:
        return [float(c.final_loss) for c in self.finished]

    @property
    def losses_by_seed(self) -> dict[int, float]:
        """seed -> final held-out loss: what pairs the arm with the baseline's same seed."""
        return {c.cell.seed: float(c.final_loss) for c in self.finished}

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
        return list(self.downstream_by_seed(suite, task).values())

    def downstream_by_seed(self, suite: str, task: str | None = None) -> dict[int, float]:
        """seed -> the suite average (or one task's mean main metric) after fine-tuning."""
        values = {}
        for c in self.finished:
            scores = c.downstream.get(suite)
            if scores is None:
                continue
            if task is None:
                values[c.cell.seed] = float(scores["average"])
            elif task in scores["tasks"]:
                values[c.cell.seed] = float(scores["tasks"][task]["mean"])
        return values

    @property
    def steps(self) -> float | None:
        values = [c.summary["steps"] for c in self.finished]
        return sum(values) / len(values) if values else None

    def shape_values(self, which: str, key: str) -> list[float]:
        """Per finished run with a shape record (shape.json): `key` (params,
        params_non_embedding, train_flops_per_token) of the shape it started or ended with
        (`which`: "start" or "end")."""
        return [c.shapes[which][key] for c in self.finished if c.shapes and which in c.shapes]

    @property
    def rst_per_step(self) -> float | None:
        """Reference seconds per optimizer step: spent RST / steps, mean over finished runs."""
        values = [
            c.summary["spent"]["rst"] / c.summary["steps"]
            for c in self.finished
            if c.summary["spent"].get("rst") and c.summary.get("steps")
        ]
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
class Control:
    """The random-init control on one suite (compare/run/control.py): the baseline's
    architecture fine-tuned from random weights, one initialisation per fine-tuning seed. A
    sanity check of pre-training, not a method comparison: outside the Holm family."""

    n: int
    mean: float
    std: float
    task_means: dict[str, float | None]
    diffs: dict[str, float]  # arm -> its mean suite average minus the control's
    baseline_diff: float | None  # the baseline's (None: no baseline scores on this suite)
    # The baseline against the control (Welch, unpaired: pre-training seeds against
    # fine-tuning seeds); None when either side has fewer than two scores.
    test: stats.TestResult | None
    confidence: float
    other_model: list[str]  # arms whose model section differs from the control's

    @property
    def helped(self) -> bool | None:
        """Pre-training beat random initialisation: the baseline is ahead, beyond the interval
        when there is one. None: the baseline has no scores on this suite."""
        diff = self.baseline_diff
        if diff is None:
            return None
        if self.test is not None:
            return self.test.ci_low > 0
        return diff > 0


@dataclass
class Downstream:
    """Fine-tuning scores of every arm at one budget on one suite (higher is better)."""

    suite: str
    tasks: list[str]
    comparisons: dict[str, stats.Comparison]  # arm -> against the baseline (suite average)
    protocol: dict[str, Any]
    control: Control | None = None  # the random-init control, when it has scores here

    def verdict(self, arm: str) -> str | None:
        c = self.comparisons.get(arm)
        return c.verdict if c else None


@dataclass(frozen=True)
class Family:
    """The tests Holm adjusted together: every test the report shows a verdict for."""

    correction: str
    loss_tests: int  # held-out loss, arm vs baseline, over every budget
    downstream_tests: int  # fine-tuning suite averages, arm vs baseline, over every budget
    budgets: int

    @property
    def size(self) -> int:
        return self.loss_tests + self.downstream_tests


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
    family: Family | None = None
    tests: list[stats.Comparison] = field(default_factory=list)  # the family, judged
    fit: Curve | None = None  # the baseline's final loss against budget
    rejected_fit: Misfit | None = None  # where a power law missed the baseline (fit: interpolated)
    fit_note: str = ""  # why there is no fit
    fit_runs: int = 0  # baseline runs the fit used
    # budget -> {"unigram", "bigram", "tokens", "split", "note"} from references.json
    references: dict[str, dict[str, Any]] = field(default_factory=dict)
    references_note: str = ""  # what was wrong with references.json, if anything
    control: ControlResult | None = None  # the random-init control (with `finetune:`)

    def arm_result(self, budget: str, arm: str) -> ArmResult:
        return next(r for r in self.results[budget] if r.arm == arm)

    @property
    def shape_study(self) -> bool:
        """The runs trained more than one model shape, or some run grew (shape.json): the
        tables then show each arm's parameters, FLOPs per token and RST per step."""
        starts = set()
        for row in self.results.values():
            for r in row:
                for c in r.finished:
                    if c.shapes is None:
                        continue
                    start, end = c.shapes["start"]["label"], c.shapes["end"]["label"]
                    if start != end:
                        return True
                    starts.add(start)
        return len(starts) > 1

    def in_ngram_regime(self, budget: str) -> bool:
        """The baseline's mean loss does not beat the bigram reference of this budget (the
        unigram where there is no bigram: masked and span objectives)."""
        ref = self.references.get(budget)
        ms = self.arm_result(budget, self.exp.baseline).mean_std
        if ref is None or ms is None:
            return False
        return ms[0] >= (ref["bigram"] if ref["bigram"] is not None else ref["unigram"])

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
                lr = t.chosen
                if not t.carried:  # a carried LR was chosen (and is listed) at `tuned_at`
                    tunings.append(t)
                    for cell in t.cells(exp):  # the first grid and every extension
                        c = read_cell(cell, out_dir, with_curve=False)
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
        results[budget] = row
    control = read_control(out_dir)
    suite = (exp.finetune or {}).get("suite")
    if control is not None and control.error is None and suite and suite not in control.downstream:
        missing.append("the random-init control (controls/random-init)")
    downstream = {budget: _downstream(exp, row, control) for budget, row in results.items()}
    family, tests = _judge(exp, results, downstream)
    references, references_note = read_references(out_dir, exp.budgets)
    report = Report(
        exp=exp,
        out_dir=out_dir,
        record=record,
        results=results,
        tunings=tunings,
        downstream=downstream,
        failed=list(seen_failed.values()),
        missing=missing,
        family=family,
        tests=tests,
        references=references,
        references_note=references_note,
        control=control,
    )
    _compute_saved(report)
    _sensitivity(report)
    report.protocol = _protocol(report)
    return report


def _raw_tests(
    exp: Experiment, data: dict[str, dict[int, float]], lower_is_better: bool = True
) -> list[stats.Comparison]:
    """Every arm with results against the baseline, unadjusted (Holm comes over the family)."""
    if exp.baseline not in data:
        return []
    return stats.run_tests(
        data,
        exp.baseline,
        test=exp.stats.test,
        confidence=exp.stats.confidence,
        lower_is_better=lower_is_better,
    )


def _judge(
    exp: Experiment, results: dict[str, list[ArmResult]], downstream: dict[str, list[Downstream]]
) -> tuple[Family, list[stats.Comparison]]:
    """Holm over every test the report shows: the held-out loss of every arm at every budget,
    and every fine-tuning suite average. Per budget the family would be smaller and an arm
    could "win" one budget of several by chance."""
    family: list[stats.Comparison] = []
    owners: list[tuple[str, Any]] = []  # what each test belongs to, to put the verdicts back
    for row in results.values():
        data = {r.arm: r.losses_by_seed for r in row if r.losses}
        by_arm = {r.arm: r for r in row}
        for c in _raw_tests(exp, data):
            family.append(c)
            owners.append(("loss", by_arm[c.arm]))
    loss_tests = len(family)
    for suites in downstream.values():
        for d in suites:
            for c in d.comparisons.values():
                family.append(c)
                owners.append(("downstream", (d, c.arm)))
    s = exp.stats
    judged = stats.judge(family, alpha=s.alpha, correction=s.correction, power=s.power)
    for (kind, owner), c in zip(owners, judged, strict=True):
        if kind == "loss":
            owner.comparison = c
        else:
            d, arm = owner
            d.comparisons[arm] = c
    # Untested comparisons (one seed) carry no p-value and do not count.
    n_loss = sum(c.tested for c in judged[:loss_tests])
    counts = Family(s.correction, n_loss, sum(c.tested for c in judged[loss_tests:]), len(results))
    return counts, judged


def _downstream(
    exp: Experiment, row: list[ArmResult], control: ControlResult | None = None
) -> list[Downstream]:
    """Each suite's scores at one budget, tested but not yet judged (see `_judge`)."""
    suites: dict[str, dict[str, Any]] = {}
    for r in row:
        for c in r.finished:
            for suite, scores in c.downstream.items():
                suites.setdefault(suite, scores)
    out = []
    for suite, example in sorted(suites.items()):
        data = {r.arm: r.downstream_by_seed(suite) for r in row if r.downstream(suite)}
        raw = _raw_tests(exp, data, lower_is_better=False)
        comparisons = {c.arm: c for c in raw}
        tasks = list(example["tasks"])
        d = Downstream(suite, tasks, comparisons, example["protocol"])
        d.control = _control(exp, row, control, suite, tasks)
        out.append(d)
    return out


def _control(
    exp: Experiment,
    row: list[ArmResult],
    control: ControlResult | None,
    suite: str,
    tasks: list[str],
) -> Control | None:
    """The control's scores on `suite` and each arm's difference to them."""
    values = control.scores(suite) if control is not None else []
    if control is None or not values:
        return None
    mean, std = stats.mean_std(values)
    task_means = {}
    for task in tasks:
        scores = control.scores(suite, task)
        task_means[task] = sum(scores) / len(scores) if scores else None
    diffs = {
        r.arm: stats.mean_std(r.downstream(suite))[0] - mean for r in row if r.downstream(suite)
    }
    base = row_of(row, exp.baseline)
    base_values = base.downstream(suite) if base is not None else []
    test = None
    if len(base_values) >= 2 and len(values) >= 2:
        with contextlib.suppress(ValueError):  # a non-finite score: no interval
            test = stats.welch(base_values, values, confidence=exp.stats.confidence)
    other = [
        r.arm
        for r in row
        if r.downstream(suite)
        and control.model is not None
        and (saved_config(r.finished).get("model") or control.model) != control.model
    ]
    return Control(
        n=len(values),
        mean=mean,
        std=std,
        task_means=task_means,
        diffs=diffs,
        baseline_diff=diffs.get(exp.baseline),
        test=test,
        confidence=exp.stats.confidence,
        other_model=other,
    )


def row_of(row: list[ArmResult], arm: str) -> ArmResult | None:
    return next((r for r in row if r.arm == arm), None)


# -- compute saved and price sensitivity -------------------------------------------------------


def _amounts(exp: Experiment) -> tuple[dict[str, float], str]:
    """Each budget's amount, or why the budgets cannot share one loss-vs-budget curve."""
    parsed = {b: Budget.parse(b) for b in exp.budgets}
    if len({b.unit for b in parsed.values()}) > 1:
        return {}, "the budgets are in different units"
    return {name: b.amount for name, b in parsed.items()}, ""


def _compute_saved(report: Report) -> None:
    """Fit the baseline's final loss against budget and express every arm's mean loss as the
    baseline budget that reaches it (compute_saved.py)."""
    exp = report.exp
    amounts, why = _amounts(exp)
    base = {
        amounts[b]: report.arm_result(b, exp.baseline).losses_by_seed
        for b in exp.budgets
        if amounts and report.arm_result(b, exp.baseline).losses
    }
    need = compute_saved.MIN_BUDGETS
    short = "mixed budget units" if why else ""
    if not why and len(exp.budgets) < need:
        why = f"needs {need} budgets to fit the baseline's loss against budget; this experiment "
        why += f"has {len(exp.budgets)}"
        short = f"needs {need} budgets"
    elif not why and len(base) < need:
        why = f"needs the baseline's results at {need} budgets; it has them at {len(base)}"
        short = f"baseline at {len(base)} budgets"
    fit = None
    if not why:
        xs = [a for a, seeds in base.items() for _ in seeds]
        ys = [v for seeds in base.values() for v in seeds.values()]
        fit = compute_saved.fit_power_law(xs, ys)
        report.fit_runs = len(xs)
        misfit = compute_saved.worst_misfit(fit, base) if fit is not None else None
        if misfit is not None and misfit.z > compute_saved.MAX_MISFIT_Z:
            report.rejected_fit = misfit
            fit = compute_saved.interpolate(xs, ys)
        if fit is None:
            why = "the baseline's loss does not fall with budget at every step"
            why += "" if report.rejected_fit else " (the power-law fit failed)"
            short = "no falling baseline curve"
    report.fit, report.fit_note = fit, why
    if fit is None:
        for row in report.results.values():
            for r in row:
                r.saved_note = short
        return
    draws = compute_saved.draw_seeds({a: list(seeds) for a, seeds in base.items()})
    fits = compute_saved.refit(base, draws, start=fit)
    for j, budget in enumerate(exp.budgets):
        for i, r in enumerate(report.results[budget]):
            if r.arm == exp.baseline or not r.losses:
                continue
            r.saved = compute_saved.compute_saved(
                fit,
                fits,
                draws,
                r.losses_by_seed,
                amounts[budget],
                confidence=exp.stats.confidence,
                seed=1 + j * len(exp.arms) + i,
            )


def _charged(r: ArmResult, unit: str) -> dict[str, float]:
    return {k: v for k, v in r.spend(unit).items() if k != "uncharged"}


def _sensitivity(report: Report) -> None:
    """Re-decide every verdict with the arm's extra work priced ± stats.price_error."""
    exp = report.exp
    for budget, row in report.results.items():
        unit = Budget.parse(budget).unit
        base = report.arm_result(budget, exp.baseline)
        for r in row:
            c = r.comparison
            if r.arm == exp.baseline or c is None:
                continue
            if not c.tested:
                r.sensitivity_note = "not tested"
            elif unit != "rst":
                r.sensitivity_note = f"the budget counts {unit}: nothing is priced"
            elif not base.steps or not r.steps:
                r.sensitivity_note = "no spending recorded"
            else:
                r.sensitivity = _arm_sensitivity(report, r, base)
                if r.sensitivity is None:
                    r.sensitivity_note = "no fit and no held-out curve to price the work by"


def _arm_sensitivity(report: Report, r: ArmResult, base: ArmResult) -> Sensitivity | None:
    s = report.exp.stats
    work = sensitivity.extra_work(_charged(r, "rst"), _charged(base, "rst"), r.steps, base.steps)
    key = CURVE_KEY["rst"]
    curves = [
        [
            (p[key], p["val_loss"])
            for p in cell.curve
            if p.get(key) is not None and p.get("val_loss") is not None
        ]
        for cell in r.finished
    ]
    index = next(k for k, f in enumerate(report.tests) if f is r.comparison)
    again = partial(
        sensitivity.rejudge,
        report.tests,
        index,
        r.losses_by_seed,
        base.losses_by_seed,
        test=s.test,
        confidence=s.confidence,
        alpha=s.alpha,
        correction=s.correction,
        power=s.power,
    )
    return sensitivity.sensitivity(
        r.comparison.verdict,
        work,
        Budget.parse(r.budget).amount,
        again,
        fit=report.fit,
        slope=sensitivity.curve_slope(curves),
        error=s.price_error,
    )


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
