"""The report's prose, shared by the HTML page and the Markdown file: how to read each part."""

from __future__ import annotations

import math

from budgetlm.budget.clock import Budget
from budgetlm.compare.analysis import compute_saved, stats
from budgetlm.compare.analysis.compute_saved import BETTER_THAN_RANGE, OK, Interpolated
from budgetlm.compare.analysis.results import split_sizes
from budgetlm.compare.report.build import ArmResult, Downstream, Report, machine_name

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


def shape_note(report: Report) -> str:
    """How to read a shape study's column (tables.SHAPE_HEADER, tables.fmt_shape)."""
    grew = sorted(
        {
            r.arm
            for row in report.results.values()
            for r in row
            for c in r.finished
            if c.shapes and c.shapes["start"]["label"] != c.shapes["end"]["label"]
        }
    )
    text = (
        "Shape study: the arms train different model shapes. Beside the loss, a line each: "
        "the arm's non-embedding parameters (Kaplan et al.: without token and position "
        "embeddings or an untied output head), its training FLOPs per token (forward and "
        "backward matmuls per input token of a full sequence, as budgetlm shapes counts them) "
        "and the reference seconds one optimizer step cost (spent RST / steps, mean over its "
        "judged runs): at equal RST a slower step buys fewer steps."
    )
    if grew:
        text += (
            f" {', '.join(grew)} grew during training: start → end shape, from each run's "
            "shape.json; its RST per step is the mean over the whole run."
        )
    return text + " summary.csv also has the total parameters, embeddings included."


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


TEST_NAME = {
    "paired": "a paired t-test on the seeds both arms finished (scipy ttest_rel)",
    "permutation": (
        "an exact sign-flip permutation test of the per-seed differences (scipy "
        "permutation_test), with the paired t interval"
    ),
    "welch": "Welch's t-test (scipy ttest_ind, unequal variances)",
    "bootstrap": (
        "a percentile bootstrap over seeds (of the per-seed differences when the arms share seeds)"
    ),
}


def family_note(report: Report) -> str:
    """Which tests Holm adjusted together."""
    f = report.family
    if f is None or report.exp.stats.correction != "holm":
        return "p is not adjusted for multiple comparisons (stats.correction: none)"
    parts = [f"{f.loss_tests} held-out-loss tests (every arm against the baseline at "]
    parts.append(f"{'each of ' if f.budgets > 1 else ''}{f.budgets} budget{'s' * (f.budgets > 1)})")
    if f.downstream_tests:
        parts.append(f" and {f.downstream_tests} downstream suite-average tests")
    return f"p is Holm-adjusted over all {f.size} tests in this report: {''.join(parts)}"


def stats_note(report: Report) -> str:
    s = report.exp.stats
    conf = round(100 * s.confidence)
    f = report.family
    m = f.size if f else 0
    level = f"alpha / m = {s.alpha} / {m}" if s.correction == "holm" and m else f"{s.alpha}"
    fallback = (
        " Arms that share fewer than 2 seeds with the baseline fall back to Welch's t-test "
        "(the cell says so)."
        if s.test != "welch"
        else ""
    )
    return (
        f"Δ is the arm's mean minus the baseline's (negative = lower loss = better), with its "
        f"{conf}% confidence interval from {TEST_NAME[s.test]}; a seed fixes the "
        f"initialisation and the data order, so arms with the same seed are compared seed by "
        f'seed ("4 pairs").{fallback} {family_note(report)}. A verdict says better/worse '
        f"only when p < {s.alpha}. MDD is the minimum detectable difference: the smallest true "
        f"Δ the test finds with power {s.power} at the level of Holm's first step, {level} "
        f"(what a lone real effect must pass): MDD = (t(1 − a/2, df) + t({s.power}, df)) × se, "
        "with the t test's se and df (paired: sd of the differences / √n, n − 1). \"No "
        'significant difference" is not "equal": the interval says what it excludes.'
    )


def saved_note(report: Report) -> str:
    """How the compute-saved column was computed, or why it is empty."""
    fit = report.fit
    if fit is None:
        return f"Compute saved: not computed: {report.fit_note}."
    conf = round(100 * report.exp.stats.confidence)
    if isinstance(fit, Interpolated):
        curve = (
            f"{_rejected(report)}the baseline's mean final losses are joined by straight lines "
            f"in log budget ({report.fit_runs} runs), which pass through every one of them"
        )
    else:
        # The budget the fit divides by (the largest), as the experiment wrote it.
        scale = next(b for b in report.exp.budgets if Budget.parse(b).amount == fit.scale)
        curve = (
            f"the baseline's final loss is fitted against budget, L(B) = {fit.a:.3f} × "
            f"(B / {scale})^−{fit.b:.3g} + {fit.c:.3f} ({report.fit_runs} runs; scipy "
            "curve_fit, a, b > 0, c ≥ 0; it lies within "
            f"{compute_saved.MAX_MISFIT_Z:g} standard errors of every budget's mean)"
        )
    return (
        f"Compute saved: {curve}, and each arm's mean loss is read as the budget the baseline "
        "needs to reach it, as a multiple of the arm's budget: above 1× the arm saves compute "
        "(1.25×: the baseline needs 25% more), below 1× it wastes some. "
        f"Interval: {conf}% percentile bootstrap over seeds (resampled within each budget, "
        "the baseline's curve redrawn each time); per comparison, not Holm-adjusted, and too "
        "narrow with fewer than ~5 seeds, like any bootstrap. Losses outside the range of the "
        "baseline's budgets are not extrapolated."
    )


def _rejected(report: Report) -> str:
    """Why the power law was not used, when it was not."""
    m = report.rejected_fit
    if m is None:
        return ""
    budget = next(b for b in report.exp.budgets if Budget.parse(b).amount == m.amount)
    return (
        f"a power law with an offset misses the baseline's mean at {budget} by "
        f"{abs(m.residual):.3f} nats ({m.z:.1f} standard errors of that mean; the limit is "
        f"{compute_saved.MAX_MISFIT_Z:g}), so it does not describe this baseline and is not "
        "used; instead "
    )


def sensitivity_note(report: Report) -> str:
    e = f"{100 * report.exp.stats.price_error:g}%"
    return (
        f"Price sensitivity: would the verdict change if the arm's extra work cost ±{e}? Extra "
        "work: the arm's spend on purposes the baseline has none of (selection forwards, "
        "Hessian passes), and its training or optimizer spend when that costs per step more "
        "than 1% unlike the baseline's (layer dropping or stacking, selective backprop's "
        "smaller backward batch, another optimizer). At +e the budget buys 1 / (1 + e × share) "
        "of the work; the loss that costs comes from the baseline's curve (above; or the "
        "arm's own held-out curve without one), and the test and Holm are redone."
    )


def _unit(lower_is_better: bool) -> str:
    return " nats" if lower_is_better else ""


def _how_tested(c: stats.Comparison) -> str:
    if c.design == "paired":
        name = {"paired": "paired t-test", "permutation": "sign-flip test"}.get(
            c.test, "paired bootstrap"
        )
        return f"{name} on {c.n_pairs} paired seeds"
    name = "bootstrap" if c.test == "bootstrap" else "Welch's t-test"
    why = f" ({c.note})" if c.note else ""
    return f"{name}, {c.n_arm} vs {c.n_base} seeds{why}"


def comparison_sentence(report: Report, c: stats.Comparison) -> str:
    """A comparison in words: verdict, Δ, interval, test, p, what it excludes, the MDD."""
    if not c.tested:
        return f"{c.verdict}: {c.note or 'fewer than 2 seeds'}"
    unit = _unit(c.lower_is_better)
    conf = round(100 * report.exp.stats.confidence)
    holm = report.exp.stats.correction == "holm"
    adjusted = f"after Holm over {c.family_size} tests" if holm else "unadjusted"
    p = f"p {'< 0.001' if c.p_adjusted < 0.001 else f'= {c.p_adjusted:.3f}'} {adjusted}"
    text = (
        f"{c.verdict}: Δ {c.diff:+.3f}{unit} ({conf}% CI {c.ci_low:+.3f} to {c.ci_high:+.3f}; "
        f"{_how_tested(c)}; {p})"
    )
    if c.verdict == stats.NO_DIFFERENCE:
        beyond = stats.excluded_beyond(c)
        text += f"; the {conf}% CI excludes effects beyond ±{beyond:.3f}{unit}"
    if math.isinf(c.mdd):
        text += (
            f". A sign-flip test on {c.n_pairs} pairs cannot reach p < {c.mdd_alpha:.2g}: "
            "no effect is detectable"
        )
    elif not math.isnan(c.mdd):
        text += f". Detectable with power {report.exp.stats.power}: ±{c.mdd:.3f}{unit} (MDD)"
    return text + "."


def saved_sentence(report: Report, r: ArmResult) -> str | None:
    saved = r.saved
    if saved is None:
        return None
    if saved.status != OK:
        if saved.status == BETTER_THAN_RANGE:
            where = f"better than the baseline at its largest budget, {report.exp.budgets[-1]}"
        else:
            where = f"worse than the baseline at its smallest budget, {report.exp.budgets[0]}"
        return f"Compute saved: outside the fitted range ({where}); not extrapolated."
    budget = Budget.parse(r.budget)
    conf = round(100 * report.exp.stats.confidence)
    failed = f"; {saved.failed} of {saved.resamples} refits failed" if saved.failed else ""
    return (
        f"Compute saved: worth {saved.multiplier:.2f}× its budget in baseline compute — the "
        f"baseline's curve reaches this loss at {budget.format(saved.needed)} ({conf}% CI "
        f"{saved.ci_low:.2f}–{saved.ci_high:.2f}×{failed})."
    )


def sensitivity_sentence(report: Report, r: ArmResult) -> str | None:
    s = r.sensitivity
    if s is None:
        # Budgets that count steps, tokens or FLOPs price nothing: said once, not per arm.
        if not r.sensitivity_note or Budget.parse(r.budget).unit != "rst":
            return None
        return f"Price sensitivity: {r.sensitivity_note}."
    e = f"{100 * s.error:g}%"
    if not s.work.purposes:
        return f"Survives ±{e}: none of its work is priced unlike the baseline's."
    work = (
        f"its extra work ({' + '.join(s.work.purposes)}, {100 * s.work.share:.0f}% of its charge)"
    )
    source = "the baseline's curve" if s.source == "fit" else "its own held-out curve"
    if not (s.flips_up or s.flips_down):
        return (
            f"Survives ±{e}: priced {e} higher or lower, {work} would move its loss by "
            f"{s.shift_up:+.4f} / {s.shift_down:+.4f} nats ({source}) and the verdict stays."
        )
    flips = []
    if s.flips_up:
        flips.append(f"{e} higher: {s.shift_up:+.4f} nats, {s.verdict_up}")
    if s.flips_down:
        flips.append(f"{e} lower: {s.shift_down:+.4f} nats, {s.verdict_down}")
    return f"{s.label.capitalize()}: with {work} priced {'; '.join(flips)} ({source})."


def verdict_lines(report: Report, budget: str) -> list[tuple[str, str]]:
    """Each arm's verdict at one budget in words: (arm, sentences)."""
    out = []
    for r in report.results[budget]:
        if r.arm == report.exp.baseline or r.comparison is None:
            continue
        parts = [comparison_sentence(report, r.comparison)]
        parts += [t for t in (saved_sentence(report, r), sensitivity_sentence(report, r)) if t]
        out.append((r.arm, " ".join(parts)))
    return out


NGRAM_WARNING = "models are still in the n-gram regime: results say little about longer training"


def ngram_warning(report: Report, budget: str) -> str | None:
    """A visible warning when the baseline does not beat the bigram reference (or the unigram
    where there is no bigram)."""
    if not report.in_ngram_regime(budget):
        return None
    ref = report.references[budget]
    mean = report.arm_result(budget, report.exp.baseline).mean_std[0]
    which = "bigram" if ref["bigram"] is not None else "unigram"
    return (
        f"The baseline's mean held-out loss ({mean:.3f}) does not beat the {which} "
        f"reference ({ref[which]:.3f}): {NGRAM_WARNING}."
    )


REFERENCES_NOTE = (
    "What a unigram and a bigram count model, fitted on as many training tokens as the "
    "baseline saw, score on the same held-out targets (references.json). A baseline that does "
    "not beat the bigram has learned little beyond which token follows which."
)


def downstream_note(d: Downstream) -> str:
    p = d.protocol
    if p.get("metric") == "rougeL":  # an instruction suite (budgetlm.finetune.instructions)
        steps = f", at most {p['steps']} steps" if p.get("steps") else ""
        return (
            f"Each pre-trained run (one per seed) fine-tuned on the training tasks of {d.suite} "
            f"(nanoT5's Super-Natural Instructions protocol): {p.get('optimizer')} at a constant "
            f"lr {p.get('lr')}, batch {p.get('batch_size')}, {p.get('epochs')} epochs{steps}, "
            f"at most {p.get('max_instances')} instances per task, prompts of at most "
            f"{p.get('max_source_len')} tokens and targets of {p.get('max_target_len')} (cut "
            "further to the model's lengths); held-out tasks decoded greedily and scored with "
            "ROUGE-L (x100, best over each instance's references), averaged over fine-tuning "
            "seeds; the suite average is the mean over held-out tasks. Higher is better."
        )
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
    exp, spec = report.exp, report.exp.spec
    seeds = ", ".join(map(str, exp.tuning_seeds))
    untuned = [a.name for a in exp.arms if not a.tuned]
    where = (
        "at every budget"
        if set(spec.budgets) >= set(exp.budgets) or not spec.budgets
        else f"at {', '.join(spec.budgets)} and carried to the other budgets"
    )
    text = (
        f"Each tuned arm ran its LRs on seed(s) {seeds}, which are never judged, and was scored "
        "on the held-out tune split, which no judged run is scored on; the LR with the lowest "
        f"mean loss was then run on the judged seeds. Tuned {where}."
    )
    if spec.given:
        text += (
            f" Every arm's grid holds {spec.trials} LRs a factor {spec.factor:g} apart around "
            f"its own configured LR (unless the arm gives its own), widened by up to "
            f"{spec.max_extensions} LRs past an edge where the best sat."
        )
    if untuned and spec.given:
        text += f" Untuned (opted out): {', '.join(untuned)}."
    return text


def splits_note(report: Report) -> str:
    """The held-out splits' sizes, from a finished cell's dataset record."""
    cells = [c for arms in report.results.values() for r in arms for c in r.cells]
    sizes = split_sizes(cells)
    if not sizes:
        return "unknown (no finished cell recorded its dataset)"
    parts = [
        f"{name} {sizes[name].get('n_documents', '?')} documents / "
        f"{sizes[name].get('n_tokens', '?')} tokens"
        for name in ("tune", "test", "train")
        if name in sizes
    ]
    return "; ".join(parts) + " (tune: LR selection; test: every judged loss)"


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
            f"tuned alike for {', '.join(tuned)} (see Learning-rate tuning)"
            if tuned
            else "not tuned per arm: every arm runs at its configured LR",
        ),
        ("Held-out splits", splits_note(report)),
        ("Statistics", stats_note(report)),
        ("Compute saved", saved_note(report).removeprefix("Compute saved: ")),
        ("Price sensitivity", sensitivity_note(report).removeprefix("Price sensitivity: ")),
        ("Training loss and epochs", TRAIN_LOSS),
        ("Code version", ", ".join(p["code_versions"]) or "unknown"),
        ("budgetlm", str(p.get("budgetlm") or "unknown")),
        ("Ran on", "; ".join(p["machines_that_ran"]) or "unknown"),
        ("Base config", p.get("base_config") or "inline"),
        ("Command", p.get("command") or "unknown"),
    ]
