"""Deterministic matplotlib figures, turned into SVG elements to inline in the HTML page.

Two renders of the same results must give the same bytes (reports are diffed), and the page
must stay one self-contained file. So every figure is drawn under one fixed set of rcParams,
inside ``rc_context`` (no global matplotlib state is read or left behind), on an explicit Agg
canvas (no pyplot, no GUI backend), at a fixed size and dpi, with:

- ``svg.hashsalt`` fixed: matplotlib otherwise salts its element ids with a random uuid;
- metadata ``Date`` and ``Creator`` off: they carry the time and the matplotlib version;
- ``svg.fonttype = "none"``: text stays ``<text>`` in DejaVu Sans (shipped with matplotlib, so
  the layout is computed the same everywhere) instead of glyph outlines: smaller, searchable.

:func:`render_svg` then makes the SVG fit for inlining: no XML prolog, no namespace
declarations or RDF metadata (their URLs would be the page's only ones), ids prefixed per chart
so that several charts share a page without clashes, and every artist drawn for an arm marked
``class="series" data-arm="NAME"`` (from its gid, see :func:`series_gid`), so that tests and
readers of the page source can tell which arm each element belongs to.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from html import escape

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

WIDTH = 5.8  # inches: two charts side by side on the page
DPI = 100
RC = {
    "svg.hashsalt": "budgetlm-report",
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e4e4e4",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
    "legend.frameon": False,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}
METADATA = {"Date": None, "Creator": None}

_TAG = re.compile(r"<[^<>]+>")
_ID = re.compile(r'\sid="([^"]*)"')
_SERIES = re.compile(r"arm-(\d+)-([a-z_]+)")
_REFERENCE = re.compile(r'href="#([^"]+)"|url\(#([^)]+)\)')


def series_gid(arm_index: int, part: str) -> str:
    """The gid of an artist drawn for arm ``arm_index`` (``part``: what it is, e.g. "curve")."""
    return f"arm-{arm_index}-{part}"


def render_svg(
    draw: Callable[[Figure], None],
    *,
    height: float,
    key: str,
    title: str,
    arms: Sequence[str],
) -> str:
    """Draw a figure with ``draw`` and return it as one inline ``<svg>`` element.

    ``key`` must be unique on the page (it prefixes the chart's ids); ``arms`` are the names
    that the series gids index.
    """
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        draw(fig)
        out = io.StringIO()
        fig.savefig(out, format="svg", metadata=METADATA)
    return _inline(out.getvalue(), key, title, arms)


def _inline(svg: str, key: str, title: str, arms: Sequence[str]) -> str:
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)
    # matplotlib's one style sheet is a global "*" rule; on a page it would apply to every
    # element, so it moves onto the root as inherited attributes instead.
    svg = re.sub(r"\s*<defs>\s*<style[^>]*>[^<]*</style>\s*</defs>", "", svg, count=1)
    referenced = {a or b for a, b in _REFERENCE.findall(svg)}
    view_box = re.search(r'viewBox="([^"]+)"', svg).group(1)
    root_end = svg.index(">") + 1
    root = (
        f'<svg class="chart" viewBox="{view_box}" role="img" stroke-linejoin="round" '
        f'stroke-linecap="butt"><title>{escape(title)}</title>'
    )

    def tag(match: re.Match[str]) -> str:
        text = match.group(0)
        # SVG 2 href: the xlink: prefix would need a namespace declaration, which is a URL.
        text = text.replace('xlink:href="#', 'href="#').replace('href="#', f'href="#{key}-')
        text = text.replace("url(#", f"url(#{key}-")
        found = _ID.search(text)
        if found is None:
            return text
        ident, new = found.group(1), ""
        if series := _SERIES.fullmatch(ident):
            arm = escape(arms[int(series.group(1))])
            new = f' class="series" data-arm="{arm}" data-part="{series.group(2)}"'
        elif ident in referenced:
            new = f' id="{key}-{ident}"'
        # Other ids (figure_1, text_12, ...) are matplotlib's labels of its own groups; they
        # repeat in every chart, so they are dropped.
        return text[: found.start()] + new + text[found.end() :]

    return root + _TAG.sub(tag, svg[root_end:]).strip()
