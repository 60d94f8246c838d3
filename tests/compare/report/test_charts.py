"""matplotlib charts of the report: series, legends and labels, self-contained inline SVG,
deterministic, one colour per arm across every chart, and drawn in a real browser."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from budgetlm.compare.report.build import build_report
from budgetlm.compare.report.charts import TAB10, Charts, arm_colors
from budgetlm.compare.report.figure import render_svg
from budgetlm.compare.report.write import write_report

from ..browser import need_browser, png_pixels, render
from ..html_check import check_html
from ..planted import planted_grid

ARMS = ["baseline", "good", "same", "sb"]
NASTY = 'a<b & "c"'


@pytest.fixture(scope="module")
def charts(tmp_path_factory) -> Charts:
    out = tmp_path_factory.mktemp("charts") / "grid"
    planted_grid(out)
    return Charts(build_report(out))


def all_charts(charts: Charts) -> dict[str, str]:
    return {
        "final": charts.final_losses("20steps"),
        "curves": charts.loss_curves("20steps"),
        "spent": charts.spending("20steps"),
        "wall": charts.wall_time("20steps"),
    }


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # inline SVG without namespaces is plain XML
    assert root.tag == "svg"
    return root


def texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter("text")]


def series(root: ET.Element) -> dict[str, list[ET.Element]]:
    found: dict[str, list[ET.Element]] = {}
    for g in root.iter("g"):
        if g.get("class") == "series":
            found.setdefault(g.get("data-arm"), []).append(g)
    return found


def colours(groups: list[ET.Element]) -> set[str]:
    """Fill and stroke colours drawn inside an arm's groups, except white (hollow marks)."""
    found = set()
    for g in groups:
        for el in g.iter():
            found.update(re.findall(r"(?:fill|stroke): (#[0-9a-f]{6})", el.get("style", "")))
    return found - {"#ffffff"}


def test_each_chart_has_its_series_legend_axis_labels_and_title(charts):
    for kind, svg in all_charts(charts).items():
        root = parse(svg)
        assert root.get("role") == "img" and root[0].tag == "title" and root[0].text, kind
        assert set(series(root)) == set(ARMS), kind
        words = texts(root)
        assert all(arm in words for arm in ARMS), kind  # legend or axis, every arm is named
    final = texts(parse(charts.final_losses("20steps")))
    assert "Final held-out loss by arm" in final
    assert "final held-out loss (lower is better)" in final
    assert {"one seed", "mean ± std", "baseline mean"} <= set(final)  # the legend
    assert {"better", "worse", "no sig. diff."} <= set(final)  # the verdicts
    curves = texts(parse(charts.loss_curves("20steps")))
    assert {"optimizer steps", "held-out loss", "Held-out loss during training"} <= set(curves)
    spent = texts(parse(charts.spending("20steps")))
    assert {"training passes", "selection forwards", "optimizer steps"} <= set(spent)
    assert "reference-system seconds, mean over seeds" in spent
    wall = texts(parse(charts.wall_time("20steps")))
    assert "wall seconds per run on Planted CPU 9000 (8 cores)" in wall


def test_the_final_loss_chart_draws_every_seed(charts):
    root = parse(charts.final_losses("20steps"))
    for arm, n in (("baseline", 4), ("sb", 3)):
        (seeds,) = [g for g in series(root)[arm] if g.get("data-part") == "seeds"]
        # One marker per finished seed (matplotlib draws each as a <use> of one marker path).
        assert len(list(seeds.iter("use"))) == n


def test_one_colour_per_arm_in_every_chart(charts):
    expected = arm_colors(charts.report)
    assert expected == dict(zip(ARMS, TAB10[:4], strict=True))
    for kind, svg in all_charts(charts).items():
        for arm, groups in series(parse(svg)).items():
            assert colours(groups) == {expected[arm]}, (kind, arm)


def test_the_baseline_keeps_its_colour_wherever_it_is_listed(tmp_path):
    from ..planted import planted_experiment

    arms = [{"name": "a"}, {"name": "b"}, {"name": "base"}]
    planted_experiment(tmp_path / "grid", {"arms": arms, "baseline": "base"})
    report = build_report(tmp_path / "grid")  # no cells yet: colours come from the experiment
    assert arm_colors(report) == {"a": TAB10[1], "b": TAB10[2], "base": TAB10[0]}


def test_charts_are_self_contained_with_ids_unique_on_the_page(charts):
    page = "".join(all_charts(charts).values())
    lowered = page.lower()
    assert "http" not in lowered and "xmlns" not in lowered and "<?xml" not in lowered
    assert "xlink" not in lowered and "<metadata" not in lowered
    assert "<style" not in lowered  # matplotlib's global "*" rule would style the whole page
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert ids and len(ids) == len(set(ids))
    # Every reference points at an id of the page; nothing else is referenced.
    refs = re.findall(r'href="([^"]*)"|url\(([^)]*)\)', page)
    assert refs
    for ref in (a or b for a, b in refs):
        assert ref.startswith("#") and ref[1:] in ids, ref
    assert not re.search(r"\bnan\b|\binf\b", lowered)


def test_text_is_escaped_and_stays_text():
    def draw(fig):
        ax = fig.add_subplot()
        ax.plot([1, 2], [3, 4], gid="arm-0-curve")
        ax.set_xlabel(NASTY)
        ax.set_title(NASTY)

    svg = render_svg(draw, height=3, key="t", title=NASTY, arms=[NASTY])
    root = parse(svg)
    assert root.find("title").text == NASTY
    assert NASTY in texts(root)  # svg.fonttype "none": a <text>, not glyph outlines
    assert series(root).keys() == {NASTY}
    assert "DejaVu Sans" in svg


def test_rendering_is_deterministic_and_leaves_matplotlib_as_it_was(charts):
    before = dict(matplotlib.rcParams)
    first = all_charts(charts)
    assert all_charts(charts) == first
    assert dict(matplotlib.rcParams) == before  # rc_context: no global state leaks


def test_a_fresh_process_draws_the_same_bytes(charts, tmp_path):
    code = (
        "import sys; from budgetlm.compare.report.build import build_report; "
        "from budgetlm.compare.report.charts import Charts; "
        "sys.stdout.write(Charts(build_report(sys.argv[1])).final_losses('20steps'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(charts.report.out_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    assert out.stdout == charts.final_losses("20steps")


def test_the_report_renders_its_charts_in_headless_chromium(charts, tmp_path: Path):
    need_browser()
    page = write_report(charts.report)["html"]
    assert check_html(page.read_text())["external"] == []
    shot = tmp_path / "report.png"
    info = render(page, screenshot=shot)
    assert info["errors"] == []
    assert info["svg_count"] == 4
    # Every arm's marks in every chart are laid out on screen, with an area.
    assert len(info["series_boxes"]) >= 4 * len(ARMS)
    assert all(w > 0 and h > 0 for w, h in info["series_boxes"]), info["series_boxes"]
    rgb = png_pixels(shot.read_bytes())[..., :3].reshape(-1, 3).astype(np.int64)
    # Each arm's colour is painted, near-exactly, on a good number of pixels.
    for colour in TAB10[:4]:
        target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(rgb - target).max(axis=1) <= 6).sum() > 200, colour
