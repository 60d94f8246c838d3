"""The report's judgement from planted cells: one Holm family over every budget, the minimum
detectable difference and what a non-result excludes, compute saved on the baseline's fitted
loss-vs-budget curve, price sensitivity, and n-gram references."""

from __future__ import annotations

import csv
import json

import pytest

from budgetlm.compare.analysis import stats
from budgetlm.compare.report.build import build_report
from budgetlm.compare.report.tables import SUMMARY_HEADER
from budgetlm.compare.report.write import write_report
from budgetlm.compare.run.experiment import Cell

from ..html_check import check_html, tables
from ..planted import (
    LAW,
    POWER_ARMS,
    plant_cell,
    plant_power_law_grid,
    planted_experiment,
    planted_grid,
)


@pytest.fixture(scope="module")
def power(tmp_path_factory):
    """The planted power-law grid (4 budgets x 4 seeds x 5 arms), built and written once."""
    out = tmp_path_factory.mktemp("power") / "grid"
    plant_power_law_grid(out, POWER_ARMS)
    report = build_report(out)
    return report, write_report(report)


def page_rows(html: str, budget_index: int) -> dict[str, dict[str, str]]:
    """The summary table of one budget as arm -> column -> text."""
    header, *rows = tables(html)[budget_index]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def csv_rows(path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path) as f:
        return {(r["budget"], r["arm"]): r for r in csv.DictReader(f)}


# -- one Holm family over the report --------------------------------------------------------------


def two_budget_grid(out):
    """At 10steps one arm with raw p ~ 0.02; at 20steps three arms that do nothing."""
    arms = [{"name": n} for n in ("baseline", "x", "p", "q")]
    exp = planted_experiment(
        out, {"seeds": [1, 2, 3], "budgets": ["10steps", "20steps"], "arms": arms}
    )
    base = {1: 3.0, 2: 3.1, 3: 3.2}
    losses = {
        "10steps": {"baseline": base, "x": {1: 2.9, 2: 3.02, 3: 3.08}, "p": base, "q": base},
        "20steps": {
            "baseline": base,
            "x": {1: 3.05, 2: 3.05, 3: 3.25},
            "p": {1: 2.95, 2: 3.15, 3: 3.2},
            "q": {1: 3.0, 2: 3.08, 3: 3.25},
        },
    }
    for budget, arms_losses in losses.items():
        for arm, by_seed in arms_losses.items():
            for seed, loss in by_seed.items():
                plant_cell(exp, out, Cell(arm, budget, seed), loss)
    return exp


def test_holm_runs_over_every_test_of_every_budget(tmp_path):
    out = tmp_path / "grid"
    two_budget_grid(out)
    report = build_report(out)
    x = report.arm_result("10steps", "x").comparison
    # Per budget, x would be the only real test at 10steps (p and q tie the baseline exactly:
    # p = 1) and Holm would leave its p below 0.05.
    per_budget = stats.compare_arms(
        {r.arm: r.losses_by_seed for r in report.results["10steps"]}, "baseline"
    )
    assert per_budget[0].verdict == "better" and 0.0125 < x.p_value < 0.05
    # Over the report's family of 6 tests it is not.
    assert report.family.size == 6 and report.family.loss_tests == 6 and x.family_size == 6
    every = [r.comparison for row in report.results.values() for r in row if r.comparison]
    assert x.p_adjusted == pytest.approx(stats.holm([c.p_value for c in every])[0])
    assert x.verdict == "no significant difference"
    paths = write_report(report)
    page = paths["html"].read_text()
    assert "Holm-adjusted over all 6 tests in this report" in page
    assert "at each of 2 budgets" in page
    assert csv_rows(paths["summary_csv"])[("10steps", "x")]["holm_family_size"] == "6"


def test_downstream_tests_join_the_family(tmp_path):
    from budgetlm.finetune.store import write_results

    out = tmp_path / "grid"
    planted_grid(out)
    for seed in range(1, 5):
        for arm, average in (("baseline", 0.60 + seed / 1000), ("good", 0.70 + seed / 1000)):
            write_results(
                out / "cells" / arm / "20steps" / f"seed{seed}",
                "offline",
                {"average": average, "protocol": {"lr": 4e-5}, "tasks": {}},
            )
    report = build_report(out)
    assert (report.family.loss_tests, report.family.downstream_tests) == (3, 1)
    (d,) = report.downstream["20steps"]
    assert d.comparisons["good"].family_size == 4 and d.comparisons["good"].design == "paired"
    page = write_report(report)["html"].read_text()
    assert "3 held-out-loss tests" in page and "1 downstream suite-average tests" in page


# -- MDD and what a non-result excludes -----------------------------------------------------------


def test_each_cell_shows_p_the_pairs_and_the_mdd_and_a_non_result_says_what_it_excludes(tmp_path):
    out = tmp_path / "grid"
    planted_grid(out)
    report = build_report(out)
    paths = write_report(report)
    shown = page_rows(paths["html"].read_text(), 0)
    same = report.arm_result("20steps", "same").comparison
    assert same.verdict == "no significant difference" and same.design == "paired"
    delta = shown["same"][SUMMARY_HEADER[5]]
    assert f"p={same.p_adjusted:.3f} · 4 pairs" in delta and f"MDD {same.mdd:.4f}" in delta
    beyond = max(abs(same.ci_low), abs(same.ci_high))
    assert shown["same"]["verdict"].startswith("no significant difference")
    assert f"excludes ±{beyond:.3f}" in shown["same"]["verdict"]
    md = paths["markdown"].read_text()
    assert f"the 95% CI excludes effects beyond ±{beyond:.3f} nats" in md
    # sb lost its 4th seed: 3 pairs.
    assert "3 pairs" in shown["sb"][SUMMARY_HEADER[5]]
    # The MDD is the paired formula at Holm's first step (alpha / 3 tests).
    d = [
        a - b
        for a, b in zip(
            *stats.pair(
                report.arm_result("20steps", "same").losses_by_seed,
                report.arm_result("20steps", "baseline").losses_by_seed,
            ),
            strict=True,
        )
    ]
    sd = stats.mean_std(d)[1]
    assert same.mdd == pytest.approx(stats.mdd(sd / 2, 3, 0.05 / 3, 0.8))
    row = csv_rows(paths["summary_csv"])[("20steps", "same")]
    assert float(row["mdd"]) == pytest.approx(same.mdd, rel=1e-5)
    assert float(row["excludes_beyond"]) == pytest.approx(beyond, rel=1e-5)
    assert row["design"] == "paired" and row["n_pairs"] == "4"


# -- compute saved --------------------------------------------------------------------------------


def test_the_fit_recovers_the_planted_law(power):
    report, _ = power
    fit = report.fit
    assert (fit.a, fit.b, fit.c) == pytest.approx(LAW, rel=0.01)
    assert report.fit_runs == 16


@pytest.mark.parametrize("budget", ["30s-rst", "60s-rst", "120s-rst"])
def test_an_arm_worth_08x_is_recovered_with_an_interval_that_covers_it(power, budget):
    report, paths = power
    saved = report.arm_result(budget, "slow").saved
    assert saved.status == "ok" and saved.multiplier == pytest.approx(0.8, abs=0.01)
    assert saved.ci_low <= 0.8 <= saved.ci_high
    assert saved.failed == 0 and saved.resamples == 1000
    row = csv_rows(paths["summary_csv"])[(budget, "slow")]
    assert float(row["compute_saved"]) == pytest.approx(saved.multiplier, rel=1e-5)
    assert float(row["compute_saved_ci_low"]) <= 0.8 <= float(row["compute_saved_ci_high"])
    index = report.exp.budgets.index(budget)
    cell = page_rows(paths["html"].read_text(), index)["slow"]["compute saved"]
    assert cell == f"{saved.multiplier:.2f}× [{saved.ci_low:.2f},\u00a0{saved.ci_high:.2f}]"


def test_an_arm_outside_the_fitted_range_is_said_to_be(power):
    report, paths = power
    # "slow" at the smallest budget is worse than the baseline there; "fast" at the largest is
    # better than the baseline's best; "fast" at 15s-rst is worth 2x, inside the range.
    assert report.arm_result("15s-rst", "slow").saved.status == "worse than range"
    assert report.arm_result("120s-rst", "fast").saved.status == "better than range"
    assert report.arm_result("15s-rst", "fast").saved.multiplier == pytest.approx(2.0, abs=0.02)
    md = paths["markdown"].read_text()
    assert (
        "outside the fitted range (better than the baseline at its largest budget, 120s-rst)" in md
    )
    assert (
        "outside the fitted range (worse than the baseline at its smallest budget, 15s-rst)" in md
    )
    html = paths["html"].read_text()
    assert page_rows(html, 3)["fast"]["compute saved"] == "outside fit (better than at 120s-rst)"
    rows = csv_rows(paths["summary_csv"])
    assert rows[("120s-rst", "fast")]["compute_saved_status"] == "better than range"
    assert rows[("120s-rst", "fast")]["compute_saved"] == ""
    # The fit is drawn on the loss-vs-budget chart, in the baseline's colour.
    assert 'data-arm="baseline" data-part="fit"' in html
    assert "worth 0.80× its budget in baseline compute" in md


def test_with_fewer_than_three_budgets_the_column_says_why(tmp_path):
    out = tmp_path / "grid"
    planted_grid(out)
    report = build_report(out)
    assert report.fit is None and "needs 3 budgets" in report.fit_note
    paths = write_report(report)
    shown = page_rows(paths["html"].read_text(), 0)
    assert shown["good"]["compute saved"] == "needs 3 budgets"
    assert shown["baseline"]["compute saved"] == "–"
    assert csv_rows(paths["summary_csv"])[("20steps", "good")]["compute_saved_status"] == (
        "needs 3 budgets"
    )
    assert "<dt>Compute saved</dt><dd>not computed: needs 3 budgets" in paths["html"].read_text()


# -- price sensitivity ----------------------------------------------------------------------------


def test_a_small_gain_bought_with_much_selection_flips_a_large_one_survives(power):
    report, paths = power
    small = report.arm_result("60s-rst", "sel_small")
    large = report.arm_result("60s-rst", "sel_large")
    assert small.comparison.verdict == large.comparison.verdict == "better"
    for r in (small, large):
        assert r.sensitivity.work.purposes == ("selection",)
        assert r.sensitivity.work.share == pytest.approx(0.5)
        assert r.sensitivity.source == "fit"
    fit = report.fit
    assert small.sensitivity.shift_up == pytest.approx(fit.loss(60 / 1.025) - fit.loss(60))
    assert small.sensitivity.label == "flips at +5%" and small.sensitivity.verdict_up == "worse"
    assert large.sensitivity.label == "survives ±5%"
    # Arms with no extra work survive trivially.
    assert report.arm_result("60s-rst", "slow").sensitivity.work.share == 0.0
    shown = page_rows(paths["html"].read_text(), 2)
    assert shown["sel_small"]["verdict"] == "better flips at +5%"
    assert shown["sel_large"]["verdict"] == "better survives ±5%"
    rows = csv_rows(paths["summary_csv"])
    assert rows[("60s-rst", "sel_small")]["verdict_price_up"] == "worse"
    assert rows[("60s-rst", "sel_small")]["extra_work_purposes"] == "selection"
    assert "Flips at +5%: with its extra work (selection, 50% of its charge)" in (
        paths["markdown"].read_text()
    )


def test_without_a_fit_the_arms_own_curve_prices_the_work(tmp_path):
    from ..planted import SELECTION_SPEND, baseline_loss, small_gain_loss

    out = tmp_path / "grid"
    arms = {"baseline": (baseline_loss, None), "sel_small": (small_gain_loss, SELECTION_SPEND)}
    plant_power_law_grid(out, arms, budgets=("60s-rst",))
    r = build_report(out).arm_result("60s-rst", "sel_small")
    # The planted curves go from (8 + loss) / 2 at half the budget (30 RST s) to the loss at
    # its end: slope (loss - 8) / 60 per RST second, averaged over the seeds.
    slope = sum((x - 8.0) / 60.0 for x in r.losses) / len(r.losses)
    assert r.sensitivity.source == "curve" and slope < 0
    assert r.sensitivity.shift_up == pytest.approx(slope * (1 / 1.025 - 1) * 60, rel=1e-9)


def test_budgets_that_price_nothing_have_no_sensitivity(tmp_path):
    out = tmp_path / "grid"
    planted_grid(out)  # 20steps
    r = build_report(out).arm_result("20steps", "sb")
    assert r.sensitivity is None and "counts steps" in r.sensitivity_note


# -- n-gram references ----------------------------------------------------------------------------


def plant_references(out, bigram_15: float = 9.5) -> None:
    refs = {
        b: {"unigram": 10.0, "bigram": bg, "tokens": t, "split": "test", "note": "planted"}
        for b, bg, t in (
            ("15s-rst", bigram_15, 1000),
            ("30s-rst", 6.0, 2000),
            ("60s-rst", 5.5, 4000),
            ("120s-rst", None, 8000),
        )
    }
    refs["_inputs"] = {"15s-rst": {"dataset": "abc"}}  # bookkeeping, not a budget
    (out / "references.json").write_text(json.dumps(refs))


def test_references_are_drawn_listed_and_warn_in_the_ngram_regime(tmp_path):
    out = tmp_path / "grid"
    plant_power_law_grid(out, {k: POWER_ARMS[k] for k in ("baseline", "slow")})
    plant_references(out)
    report = build_report(out)
    assert set(report.references) == {"15s-rst", "30s-rst", "60s-rst", "120s-rst"}
    # Baseline means: 9.22 at 15s (bigram 9.5: beaten), 7.45 at 30s (bigram 6.0: not beaten),
    # 6.27 at 60s (bigram 5.5: not), 5.5 at 120s (no bigram; unigram 10: beaten).
    regime = [b for b in report.exp.budgets if report.in_ngram_regime(b)]
    assert regime == ["30s-rst", "60s-rst"]
    paths = write_report(report)
    html = paths["html"].read_text()
    assert check_html(html)["errors"] == []
    sections = html.split("<h2>Budget ")
    for section, budget in zip(sections[1:], report.exp.budgets, strict=True):
        warned = "models are still in the n-gram regime" in section.split("<h2>")[0]
        assert warned == (budget in regime), budget
    # The table of references, and lines on the charts (curves and loss vs budget).
    header, *rows = next(t for t in tables(html) if t[0][0] == "budget")
    assert [r[0] for r in rows] == list(report.exp.budgets)
    by_budget = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    assert by_budget["30s-rst"]["baseline beats"] == "unigram"
    assert by_budget["120s-rst"]["bigram"] == "–"
    assert html.count(">bigram</text>") >= 4  # legend of 3 curve charts + the budget chart
    md = paths["markdown"].read_text()
    assert "## N-gram references" in md and md.count("> **Warning:**") == 2


def test_a_malformed_references_file_is_reported_not_fatal(tmp_path):
    out = tmp_path / "grid"
    planted_grid(out)
    (out / "references.json").write_text(json.dumps({"20steps": {"bigram": 3.0}}))
    report = build_report(out)
    assert report.references == {} and "could not be read" in report.references_note
    assert "could not be read" in write_report(report)["html"].read_text()


def test_no_nan_or_inf_leaks_into_the_page(power):
    _, paths = power
    text = paths["html"].read_text() + paths["markdown"].read_text()
    assert not any(word in text.split() for word in ("nan", "inf", "None"))


def test_a_power_law_that_misses_the_baseline_is_replaced_by_its_joined_means(tmp_path):
    # Early training: each doubling lowers the loss more than the last (the measured
    # cpu-methods baseline), which no a * B^-b + c can follow. An arm 0.015 nats worse than the
    # baseline must then read below 1x, never "1.02x" next to a "worse" verdict.
    means = {25.0: 3.18, 50.0: 2.905, 100.0: 2.502}

    def early(amount, seed):
        return means[amount] + (seed - 2.5) / 200

    def worse(amount, seed):
        return early(amount, seed) + 0.015

    arms = {"baseline": (early, None), "worse": (worse, None)}
    plant_power_law_grid(tmp_path / "grid", arms, budgets=("25s-rst", "50s-rst", "100s-rst"))
    report = build_report(tmp_path / "grid")
    assert report.fit.kind == "interpolated" and report.rejected_fit.z > 3
    saved = report.arm_result("50s-rst", "worse").saved
    assert saved.status == "ok" and saved.multiplier < 1.0
    assert report.arm_result("25s-rst", "worse").saved.status == "worse than range"
    md = write_report(report)["markdown"].read_text()
    assert "a power law with an offset misses the baseline's mean at" in md
    assert "joined by straight lines in log budget" in md
