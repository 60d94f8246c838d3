"""The report's charts, drawn with matplotlib, one arm -> colour map for all of them.

Per budget: final held-out loss by arm (the at-a-glance comparison), held-out loss during
training, where the budget went, and wall time; across budgets, final loss against budget.
Every function returns one inline ``<svg>`` element (see figure.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from matplotlib import colormaps, rcParams
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from budgetlm.budget.clock import Budget
from budgetlm.compare.report.build import PURPOSES, ArmResult, Report
from budgetlm.compare.report.curves import curve_unit, seed_band
from budgetlm.compare.report.figure import WIDTH, render_svg, series_gid
from budgetlm.compare.report.notes import machines

# matplotlib's tab10: ten distinct colours that read well on white.
TAB10 = tuple(to_hex(c) for c in colormaps["tab10"].colors)
NEUTRAL = "#555555"  # legend keys that stand for a kind of mark, not for an arm
REFERENCE = "#8c8c8c"  # n-gram reference lines: context, not an arm
REFERENCE_STYLE = {"unigram": (0, (1, 1.5)), "bigram": (0, (4, 1.5, 1, 1.5))}
# Opacity of each purpose's part of an arm's bar: the arm keeps its colour in every chart.
PURPOSE_ALPHA = {"training": 1.0, "selection": 0.6, "hessian": 0.4, "optimizer": 0.22}
PURPOSE_LABEL = {
    "training": "training passes",
    "selection": "selection forwards",
    "hessian": "Hessian passes",
    "optimizer": "optimizer steps",
    "uncharged": "uncharged (RHO-loss IL model)",
}
SHORT_VERDICT = {
    "better": "better",
    "worse": "worse",
    "no significant difference": "no sig. diff.",
    "not tested": "not tested",
}


def arm_colors(report: Report) -> dict[str, str]:
    """One colour per arm for the whole report: the baseline always tab10's first (blue), the
    other arms the next ones in experiment order (repeating after ten arms)."""
    names = [a.name for a in report.exp.arms]
    others = [n for n in names if n != report.exp.baseline]
    colors = {report.exp.baseline: TAB10[0]}
    colors.update({n: TAB10[(i + 1) % len(TAB10)] for i, n in enumerate(others)})
    return {n: colors[n] for n in names}


class Charts:
    """Draws the report's charts; ids are unique per chart, colours fixed per arm."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.colors = arm_colors(report)
        self.names = [a.name for a in report.exp.arms]

    def _svg(self, draw: Callable[[Figure], None], *, height: float, key: str, title: str) -> str:
        return render_svg(draw, height=height, key=key, title=title, arms=self.names)

    def _key(self, budget: str, kind: str) -> str:
        return f"b{self.report.exp.budgets.index(budget)}-{kind}"

    def _gid(self, arm: str, part: str) -> str:
        return series_gid(self.names.index(arm), part)

    def _rows_height(self, rows: int) -> float:
        return max(2.6, 1.5 + 0.36 * rows)

    # -- per budget ------------------------------------------------------------------------------

    def final_losses(self, budget: str) -> str:
        """Each arm's final held-out losses: seeds, mean ± std, and the baseline's mean."""
        arms = self.report.results[budget]
        baseline = self.report.arm_result(budget, self.report.exp.baseline)

        def draw(fig: Figure) -> None:
            ax = fig.add_subplot()
            for y, r in enumerate(arms):
                self._seed_row(ax, y, r)
                shown = "baseline" if r.arm == baseline.arm else _short_verdict(r)
                ax.text(
                    1.01,
                    y,
                    shown,
                    transform=ax.get_yaxis_transform(),
                    va="center",
                    fontsize=8,
                    color=NEUTRAL,
                )
            if baseline.mean_std:  # a reference, not one of the arm's marks: no series gid
                ax.axvline(baseline.mean_std[0], color=self.colors[baseline.arm], ls="--", lw=1)
            ax.set_yticks(range(len(arms)), [r.arm for r in arms])
            ax.set_ylim(len(arms) - 0.5, -0.5)  # first arm on top
            ax.grid(axis="y", visible=False)
            ax.set_xlabel("final held-out loss (lower is better)")
            ax.set_title("Final held-out loss by arm")
            keys = [
                Line2D([], [], ls="", marker="o", mfc="none", mec=NEUTRAL, label="one seed"),
                Line2D([], [], color=NEUTRAL, lw=2, marker="D", label="mean ± std"),
                Line2D([], [], color=NEUTRAL, ls="--", lw=1, label="baseline mean"),
            ]
            _legend(fig, keys, [k.get_label() for k in keys], ncols=3)

        return self._svg(
            draw,
            height=self._rows_height(len(arms)),
            key=self._key(budget, "final"),
            title=f"Final held-out loss by arm at budget {budget}",
        )

    def _seed_row(self, ax: Axes, y: float, r: ArmResult) -> None:
        """One arm's row of the final-loss chart: its seeds (spread out a little vertically,
        so that equal losses stay visible), their mean and ± std."""
        color, losses = self.colors[r.arm], r.losses
        if not losses:
            ax.text(0.5, y, "no finished runs", transform=ax.get_yaxis_transform(), va="center")
            return
        k = len(losses)
        jitter = [0.0] if k == 1 else [0.24 * (i / (k - 1) - 0.5) for i in range(k)]
        ax.plot(
            losses,
            [y + j for j in jitter],
            "o",
            ms=4,
            mfc="none",
            mec=color,
            alpha=0.8,
            gid=self._gid(r.arm, "seeds"),
        )
        mean, std = r.mean_std
        if std > 0:  # end ticks make the bar readable (and give it a height on the page)
            ax.plot(
                [mean - std, mean + std],
                [y, y],
                color=color,
                lw=2,
                marker="|",
                ms=7,
                gid=self._gid(r.arm, "spread"),
            )
        ax.plot([mean], [y], "D", ms=6, color=color, gid=self._gid(r.arm, "mean"))

    def loss_curves(self, budget: str) -> str:
        """Held-out loss against the budget spent: mean over seeds, band from min to max."""
        key, label = curve_unit(budget)
        arms = self.report.results[budget]

        def draw(fig: Figure) -> None:
            ax = fig.add_subplot()
            later: list[float] = []
            for r in arms:
                xs, mean, lo, hi = seed_band(r.finished, key)
                if not xs:
                    continue
                color = self.colors[r.arm]
                ax.fill_between(
                    xs, lo, hi, color=color, alpha=0.18, lw=0, gid=self._gid(r.arm, "band")
                )
                ax.plot(xs, mean, color=color, lw=1.8, label=r.arm, gid=self._gid(r.arm, "curve"))
                later += [v for x, a, b in zip(xs, lo, hi, strict=True) if x > 0 for v in (a, b)]
            # The evaluation before the first step is the same for every arm (near log(vocab))
            # and would squash the differences at the end; the curves run off the top instead.
            # The n-gram references stay in view: whether the arms beat them is the point.
            later += self._references(ax, budget)
            finite = [v for v in later if math.isfinite(v)]
            if finite:
                low, high = min(finite), max(finite)
                pad = 0.06 * (high - low or abs(high) or 1.0)
                ax.set_ylim(low - pad, high + pad)
            ax.set_xlabel(label)
            ax.set_ylabel("held-out loss")
            ax.set_title("Held-out loss during training")
            _legend(fig, *ax.get_legend_handles_labels())

        return self._svg(
            draw,
            height=3.6,
            key=self._key(budget, "curves"),
            title=f"Held-out loss during training at budget {budget}, band: min–max over seeds",
        )

    def _references(self, ax: Axes, budget: str) -> list[float]:
        """The budget's n-gram references as horizontal lines; returns their values."""
        ref = self.report.references.get(budget)
        if ref is None:
            return []
        shown = []
        for kind in ("unigram", "bigram"):
            if ref[kind] is not None:
                ax.axhline(ref[kind], color=REFERENCE, lw=1.2, ls=REFERENCE_STYLE[kind], label=kind)
                shown.append(ref[kind])
        return shown

    def spending(self, budget: str) -> str:
        """Mean spending per purpose, one bar per arm in the arm's colour."""
        arms = self.report.results[budget]
        unit = "rst" if all(r.mean_of("rst") for r in arms if r.finished) else "flops"
        label = "reference-system seconds" if unit == "rst" else "FLOPs"
        parts = {r.arm: r.spend(unit) for r in arms}
        shown = [p for p in (*PURPOSES, "uncharged") if any(parts[a].get(p) for a in parts)]

        def draw(fig: Figure) -> None:
            ax = fig.add_subplot()
            for y, r in enumerate(arms):
                color, left = self.colors[r.arm], 0.0
                for purpose in shown:
                    width = parts[r.arm].get(purpose, 0.0)
                    if width <= 0:
                        continue
                    gid = self._gid(r.arm, purpose)
                    if purpose == "uncharged":
                        ax.barh(
                            y,
                            width,
                            left=left,
                            height=0.6,
                            facecolor="white",
                            edgecolor=color,
                            ls="--",
                            gid=gid,
                        )
                    else:
                        ax.barh(
                            y,
                            width,
                            left=left,
                            height=0.6,
                            color=color,
                            alpha=PURPOSE_ALPHA[purpose],
                            lw=0,
                            gid=gid,
                        )
                    left += width
            ax.set_yticks(range(len(arms)), [r.arm for r in arms])
            ax.set_ylim(len(arms) - 0.5, -0.5)
            ax.grid(axis="y", visible=False)
            ax.set_xlabel(f"{label}, mean over seeds")
            ax.set_title("Budget spent, by purpose")
            keys = [_purpose_key(p) for p in shown]
            _legend(fig, keys, [k.get_label() for k in keys], ncols=3)

        return self._svg(
            draw,
            height=self._rows_height(len(arms)) + 0.2,
            key=self._key(budget, "spent"),
            title=f"Budget {budget} spent by purpose, in {label}",
        )

    def wall_time(self, budget: str) -> str:
        """Mean wall seconds per arm, labelled as the machine's time, not the budget."""
        arms = self.report.results[budget]

        def draw(fig: Figure) -> None:
            ax = fig.add_subplot()
            for y, r in enumerate(arms):
                seconds = r.mean_of("seconds")
                if seconds:
                    bars = ax.barh(
                        y,
                        seconds,
                        height=0.6,
                        color=self.colors[r.arm],
                        gid=self._gid(r.arm, "wall"),
                    )
                    ax.bar_label(bars, fmt="%.1f s", padding=3, fontsize=8, color=NEUTRAL)
            ax.set_yticks(range(len(arms)), [r.arm for r in arms])
            ax.set_ylim(len(arms) - 0.5, -0.5)
            ax.margins(x=0.15)
            ax.grid(axis="y", visible=False)
            ax.set_xlabel(f"wall seconds per run on {machines(self.report, budget)}", wrap=True)
            ax.set_title("Wall time: the machine's, not the budget")

        return self._svg(
            draw,
            height=self._rows_height(len(arms)),
            key=self._key(budget, "wall"),
            title=f"Wall time per run at budget {budget}; the budget is {budget}, not wall time",
        )

    # -- across budgets -----------------------------------------------------------------------

    def loss_vs_budget(self) -> str | None:
        """Final held-out loss against budget, when there are several budgets of one unit."""
        budgets = self.report.exp.budgets
        units = {Budget.parse(b).unit for b in budgets}
        if len(budgets) < 2 or len(units) != 1:
            return None
        amounts = [Budget.parse(b).amount for b in budgets]

        def draw(fig: Figure) -> None:
            ax = fig.add_subplot()
            for arm in self.names:
                points = [
                    (amount, ms)
                    for budget, amount in zip(budgets, amounts, strict=True)
                    if (ms := self.report.arm_result(budget, arm).mean_std)
                ]
                if not points:
                    continue
                xs = [x for x, _ in points]
                ys = [m for _, (m, _) in points]
                color = self.colors[arm]
                ax.plot(
                    xs, ys, "o-", color=color, lw=1.5, ms=5, label=arm, gid=self._gid(arm, "final")
                )
                for x, (m, s) in points:
                    if s > 0:
                        ax.plot(
                            [x, x],
                            [m - s, m + s],
                            color=color,
                            lw=1.5,
                            marker="_",
                            ms=7,
                            gid=self._gid(arm, "spread"),
                        )
            self._fit_line(ax)
            self._reference_steps(ax, budgets, amounts)
            if max(amounts) / min(amounts) > 4:
                ax.set_xscale("log")
            ax.set_xlabel(f"budget ({units.pop()})")
            ax.set_ylabel("final held-out loss")
            ax.set_title("Final held-out loss vs budget (mean ± std over seeds)")
            _legend(fig, *ax.get_legend_handles_labels())

        return self._svg(
            draw, height=3.8, key="all-budgets", title="Final held-out loss against budget"
        )

    def _fit_line(self, ax: Axes) -> None:
        """The baseline's curve over its budgets (dashed): the fitted power law, or the means
        joined in log budget when the power law missed them."""
        fit = self.report.fit
        if fit is None:
            return
        xs = np.geomspace(fit.low, fit.high, 64)
        power_law = fit.kind == "power law"
        ax.plot(
            xs,
            [fit.loss(float(x)) for x in xs],
            color=self.colors[self.report.exp.baseline],
            ls="--",
            lw=1.2,
            label="baseline fit a·B^−b + c" if power_law else "baseline, joined in log budget",
            gid=self._gid(self.report.exp.baseline, "fit"),
        )

    def _reference_steps(self, ax: Axes, budgets: tuple[str, ...], amounts: list[float]) -> None:
        """Each budget's n-gram references: a horizontal line when one value holds for every
        budget, else a dotted line through the budgets' values."""
        refs = self.report.references
        for kind in ("unigram", "bigram"):
            points = [
                (x, refs[b][kind])
                for b, x in zip(budgets, amounts, strict=True)
                if b in refs and refs[b][kind] is not None
            ]
            if not points:
                continue
            style = {"color": REFERENCE, "lw": 1.2, "ls": REFERENCE_STYLE[kind], "label": kind}
            if len({y for _, y in points}) == 1:
                ax.axhline(points[0][1], **style)
            else:
                ax.plot([x for x, _ in points], [y for _, y in points], marker="_", **style)


def _legend(fig: Figure, handles: list[Artist], labels: list[str], ncols: int = 4) -> None:
    """A legend under the plot, as many columns as fit the figure, read row by row."""
    if not handles:
        return
    font = FontProperties(size=rcParams["legend.fontsize"])
    renderer = fig.canvas.get_renderer()
    widest = max(renderer.get_text_width_height_descent(t, font, ismath=False)[0] for t in labels)
    # An entry is its text plus the key, the gaps around it and the space between columns,
    # about 5 font sizes in all.
    entry = widest / fig.dpi + 5 * font.get_size_in_points() / 72
    ncols = max(1, min(ncols, len(handles), int((WIDTH - 0.3) // entry)))
    rows = math.ceil(len(handles) / ncols)
    # matplotlib fills a legend's columns first; this order makes its rows read left to right.
    order = [
        r * ncols + c for c in range(ncols) for r in range(rows) if r * ncols + c < len(handles)
    ]
    fig.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="outside lower center",
        ncols=ncols,
    )


def _short_verdict(r: ArmResult) -> str:
    return SHORT_VERDICT.get(r.comparison.verdict, "") if r.comparison else ""


def _purpose_key(purpose: str) -> Patch:
    if purpose == "uncharged":
        return Patch(facecolor="white", edgecolor=NEUTRAL, ls="--", label=PURPOSE_LABEL[purpose])
    return Patch(color=NEUTRAL, alpha=PURPOSE_ALPHA[purpose], lw=0, label=PURPOSE_LABEL[purpose])
