"""The report's prose, shared by the HTML page and the Markdown file: how to read each part."""

from __future__ import annotations

from budgetlm.budget.clock import Budget
from budgetlm.compare.report.build import Downstream, Report, machine_name

CHARGED = (
    "every training pass (a dropped layer costs nothing), the selection forwards of "
    "selective backprop and RHO-loss, Sophia's Hessian passes, and each optimizer step with the "
    "loop's fixed overhead. Not charged: evaluation, checkpointing, and the RHO-loss "
    "irreducible-loss model (shown as 'uncharged')."
)

TRAIN_LOSS = (
    "Training loss is the loss of each run's last logged training step: one batch, as the "
    "method saw it (after selection or layer dropping), so it is not comparable across methods "
    "the way held-out loss is; a training loss far below the held-out loss means overfitting. "
    "Epochs are passes over the training data that the budget bought."
)

_UNIT_NAME = {
    "rst": "reference-system time (RST)",
    "seconds": "wall time",
    "steps": "a number of optimizer steps",
    "tokens": "a number of training tokens",
    "flops": "a number of FLOPs",
}


def intro(report: Report) -> str:
    when = f"Grid last run {report.updated}. " if report.updated else ""
    return (
        f"{when}Each arm is trained once per seed under each budget, with its schedule ending "
        f"at that budget, and judged on its final held-out loss against {report.exp.baseline}."
    )


def stats_note(report: Report) -> str:
    s = report.exp.stats
    test = "Welch's t-test" if s.test == "welch" else "a bootstrap of the difference of means"
    corr = (
        "Holm-adjusted across the arms of this budget" if s.correction == "holm" else "unadjusted"
    )
    return (
        f"Δ is the arm's mean minus the baseline's (negative = lower loss = better), with its "
        f"{round(100 * s.confidence)}% confidence interval from {test}; p is {corr}. A verdict "
        f"says better/worse only when p < {s.alpha}. With few seeds only large differences "
        "can be significant."
    )


def downstream_note(d: Downstream) -> str:
    p = d.protocol
    select = (
        "the best epoch on validation (max over epochs: optimistic, it selects on what it reports)"
        if p.get("select") == "max"
        else "the final epoch on validation"
    )
    return (
        f"Each pre-trained run (one per seed) fine-tuned on {d.suite}: lr {p.get('lr')}, batch "
        f"{p.get('batch_size')}, {p.get('epochs')} epochs, max length {p.get('max_length')}; "
        f"score of {select}, averaged over fine-tuning seeds; the suite average is the mean of "
        "the tasks' main metrics. Higher is better."
    )


def tuning_note(report: Report) -> str:
    seeds = ", ".join(map(str, report.exp.tuning_seeds))
    return (
        f"Arms with an LR grid ran every LR on seed(s) {seeds}; the LR with the lowest final "
        "held-out loss was then run on every seed. Selecting on the same held-out set the arms "
        "are judged on favours tuned arms slightly."
    )


FAILED_NOTE = "Failed cells are left out of the statistics above; their arms show fewer seeds (n)."


def machines(report: Report, budget: str) -> str:
    """Where the runs of one budget ran, in words ("unknown" without meta.json)."""
    names = sorted({machine_name(d) for d in report.devices(budget)})
    return " and ".join(names) or "an unknown machine"


def load(report: Report, budget: str) -> str:
    """What shared the machine, as far as the records tell."""
    threads = sorted({d["torch_threads"] for d in report.devices(budget) if "torch_threads" in d})
    parts = []
    if report.jobs is not None:
        parts.append(f"{report.jobs} run(s) at a time (--jobs {report.jobs})")
    if threads:
        parts.append(f"{'/'.join(map(str, threads))} torch thread(s) per run")
    return "load: " + (", ".join(parts) if parts else "not recorded")


def wall_caption(report: Report, budget: str) -> str:
    """What the wall-time chart shows, so that machine noise is not read as a speed result."""
    unit = Budget.parse(budget).unit
    where = f"Wall time on {machines(report, budget)}; {load(report, budget)}."
    if unit == "seconds":
        return (
            f"{where} This budget is wall time itself: every arm ran for the same seconds, and a "
            "busy or slow machine gave some runs less training. Prefer an RST budget."
        )
    return (
        f"{where} The budget is {_UNIT_NAME[unit]}, not wall time: every arm got the same "
        f"budget ({budget}) whatever this machine did. These bars show the machine and its "
        "load, not which method is faster; the chart of the budget shows what each arm spent "
        "it on."
    )


def protocol_items(report: Report) -> list[tuple[str, str]]:
    p = report.protocol
    machine = p.get("rst_machine") or {}
    machine_text = ", ".join(f"{k}={v}" for k, v in machine.items()) or "unknown"
    tuned = [a.name for a in report.exp.arms if a.tuned]
    return [
        ("Budgets", ", ".join(p["budgets"]) + " — each arm judged at the end of its own budget"),
        ("Seeds", ", ".join(map(str, p["seeds"]))),
        ("Baseline", p["baseline"]),
        ("Reference table", f"{p['rst_table']} (hash {p['rst_table_hash'] or 'n/a'})"),
        ("Reference machine", machine_text),
        ("Charged to the budget", CHARGED),
        (
            "Learning rates",
            f"tuned per budget for {', '.join(tuned)}; others fixed as configured"
            if tuned
            else "not tuned per arm: every arm runs at its configured LR",
        ),
        ("Statistics", stats_note(report)),
        ("Training loss and epochs", TRAIN_LOSS),
        ("Code version", ", ".join(p["code_versions"]) or "unknown"),
        ("budgetlm", str(p.get("budgetlm") or "unknown")),
        ("Ran on", "; ".join(p["machines_that_ran"]) or "unknown"),
        ("Base config", p.get("base_config") or "inline"),
        ("Command", p.get("command") or "unknown"),
    ]
