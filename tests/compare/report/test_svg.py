"""Inline SVG charts: well-formed, escaped, URL-free, deterministic, and drawn where expected."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from budgetlm.compare.report.svg import (
    Series,
    bar_chart,
    format_tick,
    line_chart,
    log_ticks,
    nice_ticks,
    palette,
    points_chart,
)

from ..browser import need_browser, png_pixels, render

NASTY = 'a<b & "c"'


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == "svg"
    return root


def _series_groups(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter("g") if g.get("class") == "series"]


def _points(el: ET.Element) -> list[tuple[float, float]]:
    nums = [float(v) for v in re.split(r"[ ,]+", el.get("points", "").strip())]
    return list(zip(nums[::2], nums[1::2], strict=True))


def _plot_area(root: ET.Element) -> tuple[float, float, float, float]:
    rect = next(r for r in root.iter("rect") if r.get("class") == "plot-area")
    x, y = float(rect.get("x")), float(rect.get("y"))
    return x, y, x + float(rect.get("width")), y + float(rect.get("height"))


def _inside(pt: tuple[float, float], box: tuple[float, float, float, float], tol=1.0) -> bool:
    return box[0] - tol <= pt[0] <= box[2] + tol and box[1] - tol <= pt[1] <= box[3] + tol


def _loss_series() -> list[Series]:
    steps = [100.0, 200.0, 400.0, 800.0, 1600.0]
    return [
        Series(
            "baseline",
            steps,
            [4.1, 3.6, 3.2, 2.9, 2.7],
            lower=[4.0, 3.5, 3.1, 2.8, 2.6],
            upper=[4.2, 3.7, 3.3, 3.0, 2.8],
        ),
        Series(NASTY, steps, [4.3, 3.5, 3.0, 2.8, 2.65], dashed=True),
        Series("rho", steps, [4.2, 3.7, 3.1, 2.85, 2.6], color="#123456"),
    ]


def _budget_series() -> list[Series]:
    budgets = [1e15, 3e15, 1e16]
    return [
        Series(
            "baseline", budgets, [3.2, 2.9, 2.7], lower=[3.1, 2.85, 2.6], upper=[3.3, 2.95, 2.8]
        ),
        Series("layer_drop", budgets, [3.3, 2.95, 2.68], lower=[3.25, 2.9, 2.6], upper=None),
    ]


def _all_charts() -> list[str]:
    return [
        line_chart(_loss_series(), title=f"loss {NASTY}", x_label="step", y_label="loss"),
        line_chart(_loss_series(), title="t", x_label="s", y_label="l", log_x=True),
        points_chart(_budget_series(), title="final", x_label="FLOPs", y_label="loss", log_x=True),
        bar_chart(
            ["baseline", NASTY],
            {"training": [1.0, 0.8], "selection forwards": [0.0, 0.3], "uncharged": [0, 0.05]},
            title="cost",
            y_label="PFLOPs",
        ),
    ]


def test_charts_are_well_formed_svg_with_title_and_viewbox():
    for svg in _all_charts():
        root = _parse(svg)
        assert root.get("role") == "img"
        assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
        assert root[0].tag == "title" and root[0].text
        assert svg.count("<svg") == 1


def test_series_groups_match_input():
    root = _parse(line_chart(_loss_series(), title="t", x_label="x", y_label="y"))
    assert [g.get("data-label") for g in _series_groups(root)] == ["baseline", NASTY, "rho"]
    root = _parse(points_chart(_budget_series(), title="t", x_label="x", y_label="y"))
    groups = _series_groups(root)
    assert len(groups) == 2
    # One marker per finite point, one error bar per point with a non-empty band.
    assert all(len(g.findall("circle")) + len(g.findall("polygon")) == 3 for g in groups)
    assert len([p for p in groups[0].iter("path") if p.get("class") == "error-bar"]) == 3
    root = _parse(bar_chart(["a", "b"], {"x": [1, 2], "y": [3, 4]}, title="t", y_label="v"))
    assert [g.get("data-label") for g in _series_groups(root)] == ["x", "y"]


def test_labels_and_titles_are_escaped():
    svg = line_chart(
        [Series(NASTY, [1, 2], [1, 2])], title=NASTY, x_label=NASTY, y_label=f"{NASTY}'"
    )
    assert NASTY not in svg
    assert "a&lt;b &amp; &quot;c&quot;" in svg
    root = _parse(svg)
    assert root.find("title").text == NASTY
    assert _series_groups(root)[0].get("data-label") == NASTY
    texts = ["".join(t.itertext()) for t in root.iter("text")]
    assert NASTY in texts and f"{NASTY}'" in texts
    bar = bar_chart([NASTY], {NASTY: [1.0]}, title=NASTY, y_label=NASTY)
    assert NASTY not in bar
    assert _series_groups(_parse(bar))[0].get("data-label") == NASTY


def test_no_urls_or_namespace_anywhere():
    for svg in _all_charts():
        lowered = svg.lower()
        assert "http" not in lowered
        assert "xmlns" not in lowered
        assert "url(" not in lowered
        assert not re.search(r"\bnan\b|\binf", lowered)


def _is_nice(step: float) -> bool:
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
    return any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 5, 10))


@pytest.mark.parametrize(
    "lo, hi",
    [(0, 1), (2.31, 2.9), (-3.2, 7.7), (0, 1e15), (1234, 1290), (0.0012, 0.0019), (5, 5), (-1, -1)],
)
def test_nice_ticks_cover_range_with_1_2_5_steps(lo, hi):
    ticks = nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi
    assert 3 <= len(ticks) <= 12
    steps = np.diff(ticks)
    assert np.allclose(steps, steps[0], rtol=1e-9)
    assert _is_nice(float(steps[0]))
    # Ticks land on multiples of the step, so their labels stay short.
    assert all(math.isclose(t / steps[0], round(t / steps[0]), abs_tol=1e-6) for t in ticks)
    if lo < hi:
        assert ticks[-1] - ticks[0] < 3 * (hi - lo)


@pytest.mark.parametrize("lo, hi", [(1e15, 4e15), (10, 1e9), (3e-4, 0.2), (100, 100), (7, 7.5)])
def test_log_ticks_cover_range_with_nice_values(lo, hi):
    ticks = log_ticks(lo, hi)
    assert len(ticks) >= 2
    assert ticks[0] <= lo * (1 + 1e-12) and ticks[-1] >= hi * (1 - 1e-12)
    assert ticks == sorted(set(ticks))
    assert all(_is_nice(t) for t in ticks)


def test_format_tick():
    got = [format_tick(v) for v in (0, 0.5, 2, 2.5, 250, 1500, 2e6, 3e9, 1e15, 2e-5, -2000)]
    assert got == ["0", "0.5", "2", "2.5", "250", "1.5k", "2M", "3G", "1e+15", "2e-05", "-2k"]
    assert format_tick(0.1 + 0.2) == "0.3"


def test_data_lies_inside_plot_area():
    for log_x in (False, True):
        root = _parse(line_chart(_loss_series(), title="t", x_label="x", y_label="y", log_x=log_x))
        box = _plot_area(root)
        pts = [p for g in _series_groups(root) for el in g.iter("polyline") for p in _points(el)]
        pts += [p for g in _series_groups(root) for el in g.iter("polygon") for p in _points(el)]
        assert len(pts) > 15
        assert all(_inside(p, box) for p in pts)
        # The axes are widened to cover the data but not grossly: it fills most of the box.
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        assert max(xs) - min(xs) > 0.6 * (box[2] - box[0])
        assert max(ys) - min(ys) > 0.5 * (box[3] - box[1])


def test_y_range_clips_curves_and_bands():
    series = [Series("s", [0, 1, 2, 3], [0.0, 10.0, -10.0, 0.5], lower=[-1] * 4, upper=[11] * 4)]
    root = _parse(line_chart(series, title="t", x_label="x", y_label="y", y_range=(0.0, 1.0)))
    box = _plot_area(root)
    group = _series_groups(root)[0]
    pts = [p for el in group for p in _points(el)]
    assert pts and all(_inside(p, box) for p in pts)


def test_nan_and_none_points_are_skipped_and_break_the_line():
    nan = float("nan")
    s = Series("s", [1, 2, 3, 4, 5, 6], [1.0, 2.0, nan, 3.0, None, 4.0], lower=None, upper=None)
    svg = line_chart([s], title="t", x_label="x", y_label="y")
    group = _series_groups(_parse(svg))[0]
    for el in group:
        for name in ("points", "cx", "cy"):
            if el.get(name) is not None:
                nums = re.split(r"[ ,]+", el.get(name).strip())
                assert all(math.isfinite(float(v)) for v in nums), el.attrib
    lines = group.findall("polyline")
    assert [len(_points(p)) for p in lines] == [2]
    # Points 4 and 6 are isolated by missing neighbours, so they are drawn as dots.
    assert len(group.findall("circle")) == 2
    # A missing x also drops the point; infinities count as missing.
    s2 = Series("s", [1, None, 3, math.inf], [1.0, 2.0, 3.0, 4.0])
    root = _parse(points_chart([s2], title="t", x_label="x", y_label="y"))
    assert len(_series_groups(root)[0].findall("circle")) == 2


def test_log_x_rejects_non_positive_x():
    for bad in (0.0, -5.0):
        with pytest.raises(ValueError, match=r"log_x.*positive.*'s'"):
            line_chart(
                [Series("s", [bad, 1.0], [1, 2])], title="t", x_label="", y_label="", log_x=True
            )
        with pytest.raises(ValueError, match="log_x"):
            points_chart(
                [Series("s", [1.0, bad], [1, 2])], title="t", x_label="", y_label="", log_x=True
            )
    # A missing x is skipped, not rejected.
    line_chart(
        [Series("s", [None, 1.0, 2.0], [0, 1, 2])], title="t", x_label="", y_label="", log_x=True
    )


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="y has 1"):
        line_chart([Series("s", [1, 2], [1])], title="t", x_label="", y_label="")
    with pytest.raises(ValueError, match="upper"):
        points_chart([Series("s", [1, 2], [1, 2], upper=[1])], title="t", x_label="", y_label="")
    with pytest.raises(ValueError, match="2 categories"):
        bar_chart(["a", "b"], {"x": [1.0]}, title="t", y_label="")
    with pytest.raises(ValueError, match="non-negative"):
        bar_chart(["a"], {"x": [-1.0]}, title="t", y_label="")


@pytest.mark.parametrize(
    "make",
    [
        lambda: line_chart([], title="empty", x_label="x", y_label="y"),
        lambda: points_chart([], title="empty", x_label="x", y_label="y", log_x=True),
        lambda: line_chart(
            [Series("s", [1, 2], [None, math.nan])], title="e", x_label="", y_label=""
        ),
        lambda: bar_chart([], {}, title="empty", y_label="y"),
        lambda: bar_chart(["a"], {}, title="empty", y_label="y"),
    ],
)
def test_empty_input_renders_placeholder(make):
    root = _parse(make())
    assert _series_groups(root) == []
    assert any(t.get("class") == "no-data" and t.text == "no data" for t in root.iter("text"))


def test_single_point_and_constant_values_do_not_crash():
    cases = [
        line_chart([Series("one", [5.0], [2.0])], title="t", x_label="x", y_label="y"),
        line_chart([Series("one", [5.0], [2.0])], title="t", x_label="x", y_label="y", log_x=True),
        points_chart(
            [Series("one", [1e15], [2.0], [1.9], [2.1])], title="t", x_label="", y_label=""
        ),
        line_chart([Series("flat", [1, 2, 3], [0.0, 0.0, 0.0])], title="t", x_label="", y_label=""),
        line_chart(
            [Series("flat", [1, 2], [3, 3])], title="t", x_label="", y_label="", y_range=(3, 3)
        ),
        bar_chart(["a", "b"], {"x": [0.0, 0.0]}, title="t", y_label=""),
    ]
    for svg in cases:
        root = _parse(svg)
        assert "nan" not in svg.lower() and "inf" not in svg.lower()
        box = _plot_area(root)
        assert box[2] > box[0] and box[3] > box[1]
        for g in _series_groups(root):
            for el in g:
                if el.tag in ("polyline", "polygon"):
                    assert all(_inside(p, box) for p in _points(el))
                elif el.tag == "circle":
                    assert _inside((float(el.get("cx")), float(el.get("cy"))), box)
    # A constant series sits strictly inside the padded y axis, not on its edge.
    root = _parse(cases[3])
    box = _plot_area(root)
    (line,) = _series_groups(root)[0].findall("polyline")
    assert all(box[1] + 5 < y < box[3] - 5 for _, y in _points(line))


def test_bar_heights_are_proportional_to_stacked_values():
    cats = ["baseline", "rho", "drop"]
    stacks = {
        "training": [1.0, 0.6, 0.9],
        "selection forwards": [0.0, 0.35, 0.0],
        "uncharged": [0.1, 0.05, None],
    }
    root = _parse(bar_chart(cats, stacks, title="cost", y_label="PFLOPs"))
    rects: dict[tuple[str, str], tuple[float, float]] = {}
    for g in _series_groups(root):
        for r in g.findall("rect"):
            rects[(g.get("data-label"), r.get("data-category"))] = (
                float(r.get("y")),
                float(r.get("height")),
            )
    # Zero and missing values draw nothing.
    assert ("selection forwards", "baseline") not in rects and ("uncharged", "drop") not in rects
    scale = rects[("training", "baseline")][1] / 1.0
    for (label, cat), (_, h) in rects.items():
        value = stacks[label][cats.index(cat)]
        assert h == pytest.approx(value * scale, abs=0.15)
    for cat in cats:
        parts = [rects[(label, cat)] for label in stacks if (label, cat) in rects]
        total = sum(v or 0.0 for v in (stacks[label][cats.index(cat)] for label in stacks))
        assert sum(h for _, h in parts) == pytest.approx(total * scale, abs=0.3)
        # Components stack without gaps, bottom first in dict order.
        for (y_low, _), (y_up, h_up) in zip(parts, parts[1:], strict=False):
            assert y_up + h_up == pytest.approx(y_low, abs=0.15)
    # The tallest bar reaches at least 60% of the plot height (nice ticks, not a huge headroom).
    box = _plot_area(root)
    assert 1.1 * scale > 0.6 * (box[3] - box[1])


def test_output_is_deterministic():
    assert _all_charts() == _all_charts()


def test_palette_cycles_through_distinct_hex_colours():
    colours = [palette(i) for i in range(8)]
    assert len(set(colours)) == 8
    assert all(re.fullmatch(r"#[0-9A-Fa-f]{6}", c) for c in colours)
    assert palette(8) == palette(0)
    root = _parse(line_chart(_loss_series(), title="t", x_label="", y_label=""))
    strokes = [g.find("polyline").get("stroke") for g in _series_groups(root)]
    assert strokes == [palette(0), palette(1), "#123456"]


def test_charts_render_in_headless_chromium(tmp_path: Path):
    need_browser()
    line, _, points, bar = _all_charts()
    page = tmp_path / "charts.html"
    page.write_text(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>charts</title>'
        f"</head><body><div>{line}</div><div>{points}</div><div>{bar}</div></body></html>",
        encoding="utf-8",
    )
    shot = tmp_path / "charts.png"
    info = render(page, screenshot=shot)
    assert info["title"] == "charts"
    assert info["svg_count"] == 3
    assert info["errors"] == []
    # 3 line series + 2 point series + 3 bar components, each actually laid out with area.
    assert len(info["series_boxes"]) == 8
    assert all(w > 1 and h > 1 for w, h in info["series_boxes"]), info["series_boxes"]
    pixels = png_pixels(shot.read_bytes())
    rgb = pixels[..., :3].reshape(-1, 3).astype(np.int64)
    colours = np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2])
    assert len(colours) > 5
    assert (rgb != 255).any(axis=1).mean() > 0.01
    # The first palette colour (series lines, bars) is painted somewhere, near-exactly.
    blue = np.array([0x00, 0x72, 0xB2])
    assert (np.abs(rgb - blue).max(axis=1) <= 8).sum() > 50
