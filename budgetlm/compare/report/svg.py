"""Dependency-free inline SVG charts for the offline comparison report.

Every chart function returns one ``<svg>`` element as a string, to be pasted into an HTML5
page. The markup carries no ``xmlns`` attribute, no external references and no URLs of any kind
(not even ``url(#id)`` paint or clip references), so the report stays self-contained and
several charts can share a page without id clashes. Output is a pure function of the input:
the same call gives the same string, so reports can be diffed.

Values may be ``None``, NaN or infinite: such points are skipped and the line is broken there.
Each data series is drawn inside ``<g class="series" data-label="...">`` so tests (and people
reading the page source) can find it; the legend lives in ``<g class="legend">``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "Series",
    "bar_chart",
    "format_tick",
    "line_chart",
    "log_ticks",
    "nice_ticks",
    "palette",
    "points_chart",
]

# Okabe & Ito's colour-blind-safe palette; yellow goes last because it is faint on white.
_PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#000000",
    "#F0E442",
)
_FONT = "system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"
_GRID = "#e3e3e3"
_INK = "#333333"
_DASH = "6 4"
_BAND_OPACITY = "0.18"
# Rough advance width of one character as a fraction of the font size; good enough to lay out
# margins and legend rows without measuring text (which needs a browser).
_CHAR_W = 0.6

Point = tuple[float, float]
# One input index of a series: (x, y, low, high), each None where missing or non-finite.
_Row = tuple[float | None, float | None, float | None, float | None]


def palette(i: int) -> str:
    """Colour ``i`` of a fixed colour-blind-safe palette (cycles after 8)."""
    return _PALETTE[i % len(_PALETTE)]


@dataclass
class Series:
    """One curve: ``y`` against ``x``, with an optional band ``lower``..``upper`` around it."""

    label: str
    x: Sequence[float | None]
    y: Sequence[float | None]
    lower: Sequence[float | None] | None = None
    upper: Sequence[float | None] | None = None
    color: str | None = None
    dashed: bool = False


# ---------------------------------------------------------------------------------------------
# Ticks and number formatting


def _clean(v: float) -> float:
    # Drop float noise such as 0.30000000000000004 and turn -0.0 into 0.0.
    return float(f"{v:.12g}") + 0.0


def _nice_step(raw: float) -> float:
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 5.0, 10.0):
        if m * mag >= raw * (1 - 1e-9):
            return m * mag
    return 10.0 * mag


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """About ``target`` evenly spaced ticks on a 1-2-5 step; the first is <= lo, the last >= hi.

    A zero-width range is padded (by 10% of its magnitude, or by 1 around zero).
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got [{lo}, {hi}]")
    if lo > hi:
        lo, hi = hi, lo
    if lo == hi:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = _nice_step((hi - lo) / max(int(target), 1))
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    digits = max(0, 1 - math.floor(math.log10(step)))
    return [_clean(round(k * step, digits)) for k in range(first, last + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis that cover [lo, hi]: 1-2-5 within a decade for narrow ranges,
    powers of ten (every n-th decade for very wide ranges) otherwise."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi <= 0:
        raise ValueError(f"log ticks need a positive finite range, got [{lo}, {hi}]")
    if lo > hi:
        lo, hi = hi, lo
    if lo == hi:
        lo, hi = lo / math.sqrt(10.0), hi * math.sqrt(10.0)
    e0 = math.floor(math.log10(lo) + 1e-9)
    e1 = math.ceil(math.log10(hi) - 1e-9)
    if e1 - e0 <= 2:
        # One spare decade on each side so the covering ticks always exist.
        cands = [_clean(m * 10.0**e) for e in range(e0 - 1, e1 + 1) for m in (1, 2, 5)]
        cands.append(_clean(10.0 ** (e1 + 1)))
        start = max(i for i, c in enumerate(cands) if c <= lo * (1 + 1e-9))
        end = min(i for i, c in enumerate(cands) if c >= hi * (1 - 1e-9))
        if end <= start:
            end = start + 1
        return cands[start : end + 1]
    stride = math.ceil((e1 - e0) / 6)
    e1 = e0 + stride * math.ceil((e1 - e0) / stride)
    return [_clean(10.0**e) for e in range(e0, e1 + 1, stride)]


def format_tick(v: float) -> str:
    """Readable tick label: ``0.5``, ``2``, ``250``, ``1.5k``, ``20M``, ``3G``, ``1e+15``."""
    if v == 0:
        return "0"
    a = abs(v)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if scale <= a < scale * 1e3:
            return f"{v / scale:.6g}{suffix}"
    if 1e-3 <= a < 1e3:
        return f"{v:.6g}"
    return f"{v:.3g}"


def _value(v: float) -> str:
    # Values shown in hover tooltips: enough digits to compare losses, no float noise.
    return f"{v:.4g}"


def _c(v: float) -> str:
    # Pixel coordinates to 0.1 px: finer is invisible and only bloats the report.
    s = f"{v:.1f}"
    if s.endswith(".0"):
        s = s[:-2]
    return "0" if s == "-0" else s


def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def _num(v: object) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _text_w(s: str, size: float) -> float:
    return len(s) * size * _CHAR_W


# ---------------------------------------------------------------------------------------------
# Axes and frame


@dataclass
class _Axis:
    lo: float
    hi: float
    ticks: list[float]
    log: bool = False

    def frac(self, v: float) -> float:
        if self.log:
            a, b = math.log10(self.lo), math.log10(self.hi)
            return (math.log10(v) - a) / (b - a)
        return (v - self.lo) / (self.hi - self.lo)


def _covering_axis(values: list[float], log: bool, target: int) -> _Axis:
    lo, hi = min(values), max(values)
    ticks = log_ticks(lo, hi) if log else nice_ticks(lo, hi, target)
    return _Axis(ticks[0], ticks[-1], ticks, log)


def _fixed_axis(lo: float, hi: float, target: int) -> _Axis:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"y_range must be finite, got {(lo, hi)}")
    if lo > hi:
        raise ValueError(f"y_range must be (low, high) with low <= high, got {(lo, hi)}")
    if lo == hi:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    eps = (hi - lo) * 1e-9
    ticks = [t for t in nice_ticks(lo, hi, target) if lo - eps <= t <= hi + eps]
    return _Axis(lo, hi, ticks)


@dataclass
class _Frame:
    left: float
    top: float
    right: float
    bottom: float
    # Inset of the data from the frame; markers at the extreme ticks would be cut in half.
    pad: float = 0.0

    def px(self, ax: _Axis, v: float) -> float:
        return self.left + self.pad + ax.frac(v) * (self.right - self.left - 2 * self.pad)

    def py(self, ax: _Axis, v: float) -> float:
        return self.bottom - self.pad - ax.frac(v) * (self.bottom - self.top - 2 * self.pad)


def _y_target(height: int) -> int:
    return max(3, (height - 100) // 55)


def _x_target(width: int) -> int:
    return max(2, (width - 100) // 90)


def _left_margin(yaxis: _Axis, has_label: bool) -> float:
    widest = max((_text_w(format_tick(t), 11) for t in yaxis.ticks), default=0.0)
    return math.ceil(widest + 14 + (22 if has_label else 4))


def _open(width: int, height: int, title: str, kind: str) -> list[str]:
    w, h = int(width), int(height)
    return [
        f'<svg class="budgetlm-chart {kind}" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
        f'role="img" font-family="{_FONT}" font-size="12">',
        f"<title>{_esc(title)}</title>",
        f'<rect class="background" x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>',
        f'<text class="chart-title" x="{_c(w / 2)}" y="20" text-anchor="middle" '
        f'font-size="14" font-weight="600" fill="{_INK}">{_esc(title)}</text>',
    ]


def _placeholder(width: int, height: int, title: str, kind: str) -> str:
    parts = _open(width, height, title, kind)
    parts.append(
        f'<text class="no-data" x="{_c(width / 2)}" y="{_c(height / 2)}" text-anchor="middle" '
        f'font-size="14" fill="#888888">no data</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


def _y_axis(frame: _Frame, yaxis: _Axis, y_label: str) -> list[str]:
    out = []
    for t in yaxis.ticks:
        y = _c(frame.py(yaxis, t))
        out.append(
            f'<line x1="{_c(frame.left)}" y1="{y}" x2="{_c(frame.right)}" y2="{y}" '
            f'stroke="{_GRID}" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{_c(frame.left - 6)}" y="{y}" dy="0.32em" text-anchor="end" '
            f'font-size="11" fill="{_INK}">{_esc(format_tick(t))}</text>'
        )
    if y_label:
        cx, cy = _c(14), _c((frame.top + frame.bottom) / 2)
        out.append(
            f'<text class="axis-label" x="{cx}" y="{cy}" transform="rotate(-90 {cx} {cy})" '
            f'text-anchor="middle" fill="{_INK}">{_esc(y_label)}</text>'
        )
    return out


def _x_axis(frame: _Frame, xaxis: _Axis, x_label: str) -> list[str]:
    out = []
    for t in xaxis.ticks:
        x = _c(frame.px(xaxis, t))
        out.append(
            f'<line x1="{x}" y1="{_c(frame.top)}" x2="{x}" y2="{_c(frame.bottom)}" '
            f'stroke="{_GRID}" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{x}" y="{_c(frame.bottom + 16)}" text-anchor="middle" font-size="11" '
            f'fill="{_INK}">{_esc(format_tick(t))}</text>'
        )
    if x_label:
        out.append(
            f'<text class="axis-label" x="{_c((frame.left + frame.right) / 2)}" '
            f'y="{_c(frame.bottom + 34)}" text-anchor="middle" fill="{_INK}">'
            f"{_esc(x_label)}</text>"
        )
    return out


def _frame_box(frame: _Frame) -> str:
    return (
        f'<rect class="plot-area" x="{_c(frame.left)}" y="{_c(frame.top)}" '
        f'width="{_c(frame.right - frame.left)}" height="{_c(frame.bottom - frame.top)}" '
        f'fill="none" stroke="#999999" stroke-width="1"/>'
    )


# ---------------------------------------------------------------------------------------------
# Legend


@dataclass
class _LegendItem:
    label: str
    color: str
    kind: str  # "line", "points" or "bar"
    dashed: bool = False
    band: bool = False
    marker: int = 0


_ROW_H = 18


def _legend_rows(items: list[_LegendItem], max_w: float) -> list[list[tuple[_LegendItem, float]]]:
    # Greedy wrap: the widths are estimates, so keep a little slack between items.
    rows: list[list[tuple[_LegendItem, float]]] = []
    x = 0.0
    for item in items:
        w = 28 + _text_w(item.label, 12) + 16
        if not rows or (x + w > max_w and rows[-1]):
            rows.append([])
            x = 0.0
        rows[-1].append((item, x))
        x += w
    return rows


def _legend(rows: list[list[tuple[_LegendItem, float]]], left: float, top: float) -> list[str]:
    out = ['<g class="legend">']
    for r, row in enumerate(rows):
        cy = top + r * _ROW_H + _ROW_H / 2
        for item, dx in row:
            x0 = left + dx
            out.append(f'<g class="legend-item" data-label="{_esc(item.label)}">')
            if item.kind == "bar":
                out.append(
                    f'<rect x="{_c(x0 + 4)}" y="{_c(cy - 6)}" width="16" height="12" '
                    f'fill="{item.color}"/>'
                )
            else:
                if item.band:
                    out.append(
                        f'<rect x="{_c(x0)}" y="{_c(cy - 6)}" width="24" height="12" '
                        f'fill="{item.color}" fill-opacity="{_BAND_OPACITY}"/>'
                    )
                dash = f' stroke-dasharray="{_DASH}"' if item.dashed else ""
                out.append(
                    f'<line x1="{_c(x0)}" y1="{_c(cy)}" x2="{_c(x0 + 24)}" y2="{_c(cy)}" '
                    f'stroke="{item.color}" stroke-width="2"{dash}/>'
                )
                if item.kind == "points":
                    out.append(_marker(item.marker, x0 + 12, cy, item.color))
            out.append(
                f'<text x="{_c(x0 + 28)}" y="{_c(cy)}" dy="0.32em" fill="{_INK}">'
                f"{_esc(item.label)}</text>"
            )
            out.append("</g>")
    out.append("</g>")
    return out


# ---------------------------------------------------------------------------------------------
# Geometry: clipping to the plot area (a fixed y_range can cut curves) and markers


def _clip_segment(
    a: Point, b: Point, box: tuple[float, float, float, float]
) -> tuple[Point, Point] | None:
    # Liang-Barsky; returns the original end points when unclipped so runs can be re-joined.
    left, top, right, bottom = box
    dx, dy = b[0] - a[0], b[1] - a[1]
    t0, t1 = 0.0, 1.0
    for p, q in ((-dx, a[0] - left), (dx, right - a[0]), (-dy, a[1] - top), (dy, bottom - a[1])):
        if p == 0:
            if q < 0:
                return None
            continue
        t = q / p
        if p < 0:
            if t > t1:
                return None
            t0 = max(t0, t)
        else:
            if t < t0:
                return None
            t1 = min(t1, t)
    start = a if t0 == 0 else (a[0] + t0 * dx, a[1] + t0 * dy)
    end = b if t1 == 1 else (a[0] + t1 * dx, a[1] + t1 * dy)
    return start, end


def _clip_polyline(pts: list[Point], box: tuple[float, float, float, float]) -> list[list[Point]]:
    runs: list[list[Point]] = []
    cur: list[Point] = []
    for a, b in zip(pts, pts[1:], strict=False):
        seg = _clip_segment(a, b, box)
        if seg is None:
            if cur:
                runs.append(cur)
                cur = []
            continue
        p, q = seg
        if cur and cur[-1] == p:
            cur.append(q)
        else:
            if cur:
                runs.append(cur)
            cur = [p, q]
    if cur:
        runs.append(cur)
    return runs


def _clip_polygon(pts: list[Point], box: tuple[float, float, float, float]) -> list[Point]:
    # Sutherland-Hodgman against the four edges of the (convex) plot area.
    left, top, right, bottom = box

    def cut_x(p: Point, q: Point, x: float) -> Point:
        return (x, p[1] + (q[1] - p[1]) * (x - p[0]) / (q[0] - p[0]))

    def cut_y(p: Point, q: Point, y: float) -> Point:
        return (p[0] + (q[0] - p[0]) * (y - p[1]) / (q[1] - p[1]), y)

    edges = (
        (lambda p: p[0] >= left, lambda p, q: cut_x(p, q, left)),
        (lambda p: p[0] <= right, lambda p, q: cut_x(p, q, right)),
        (lambda p: p[1] >= top, lambda p, q: cut_y(p, q, top)),
        (lambda p: p[1] <= bottom, lambda p, q: cut_y(p, q, bottom)),
    )
    for inside, cut in edges:
        if not pts:
            break
        out: list[Point] = []
        for i, cur in enumerate(pts):
            prev = pts[i - 1]
            if inside(cur):
                if not inside(prev):
                    out.append(cut(prev, cur))
                out.append(cur)
            elif inside(prev):
                out.append(cut(prev, cur))
        pts = out
    return pts


def _points_attr(pts: list[Point]) -> str:
    return " ".join(f"{_c(x)},{_c(y)}" for x, y in pts)


def _marker(shape: int, x: float, y: float, color: str, tip: str = "") -> str:
    # Shapes differ per series so markers stay distinguishable without colour.
    r = 4.0
    style = f'fill="{color}" stroke="#ffffff" stroke-width="1"'
    shape %= 4
    if shape == 0:
        tag, geom = "circle", f'cx="{_c(x)}" cy="{_c(y)}" r="{_c(r)}"'
    else:
        if shape == 1:
            pts = [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
        elif shape == 2:
            q = r * 1.3
            pts = [(x, y - q), (x + q, y), (x, y + q), (x - q, y)]
        else:
            q = r * 1.25
            pts = [(x, y - q), (x + q, y + q * 0.8), (x - q, y + q * 0.8)]
        tag, geom = "polygon", f'points="{_points_attr(pts)}"'
    if not tip:
        return f"<{tag} {geom} {style}/>"
    return f"<{tag} {geom} {style}><title>{_esc(tip)}</title></{tag}>"


# ---------------------------------------------------------------------------------------------
# Series preparation


@dataclass
class _Prepared:
    label: str
    color: str
    dashed: bool
    has_band: bool
    rows: list[_Row]


def _prepare(series: Sequence[Series], log_x: bool) -> list[_Prepared]:
    out = []
    for i, s in enumerate(series):
        n = len(s.x)
        if len(s.y) != n:
            raise ValueError(f"series {s.label!r}: x has {n} values but y has {len(s.y)}")
        for name, arr in (("lower", s.lower), ("upper", s.upper)):
            if arr is not None and len(arr) != n:
                raise ValueError(f"series {s.label!r}: x has {n} values but {name} has {len(arr)}")
        xs = [_num(v) for v in s.x]
        if log_x:
            bad = next((v for v in xs if v is not None and v <= 0), None)
            if bad is not None:
                raise ValueError(
                    f"log_x needs positive x values, but series {s.label!r} has x={bad:g}"
                )
        ys = [_num(v) for v in s.y]
        # A band with only one side given is drawn between the curve and that side.
        lows = [_num(v) for v in s.lower] if s.lower is not None else ys
        highs = [_num(v) for v in s.upper] if s.upper is not None else ys
        rows = [
            (x, y, lo, hi) if x is not None else (None, None, None, None)
            for x, y, lo, hi in zip(xs, ys, lows, highs, strict=True)
        ]
        out.append(
            _Prepared(
                label=str(s.label),
                color=s.color or palette(i),
                dashed=bool(s.dashed),
                has_band=s.lower is not None or s.upper is not None,
                rows=rows,
            )
        )
    return out


def _runs(rows: list[_Row], ok: Callable[[_Row], bool]) -> list[list[int]]:
    # Maximal runs of consecutive indices satisfying ok(row): a missing point breaks the line.
    runs: list[list[int]] = []
    cur: list[int] = []
    for i, row in enumerate(rows):
        if ok(row):
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def _has_y(row: _Row) -> bool:
    return row[0] is not None and row[1] is not None


def _has_band(row: _Row) -> bool:
    return row[0] is not None and row[2] is not None and row[3] is not None


def _data_ranges(prepared: list[_Prepared]) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for p in prepared:
        for row in p.rows:
            if row[0] is None:
                continue
            vals = [v for v in row[1:] if v is not None]
            if vals:
                xs.append(row[0])
                ys.extend(vals)
    return xs, ys


def _layout(
    width: int,
    height: int,
    yaxis: _Axis,
    y_label: str,
    x_label: str,
    items: list[_LegendItem],
) -> tuple[_Frame, list[list[tuple[_LegendItem, float]]]]:
    left = _left_margin(yaxis, bool(y_label))
    right = width - 18
    rows = _legend_rows(items, max(right - left, 1))
    bottom_margin = 22 + (18 if x_label else 0) + 8 + len(rows) * _ROW_H + 4
    top = 34
    bottom = max(height - bottom_margin, top + 40)
    return _Frame(left, top, right, bottom), rows


def _xy_chart(
    kind: str,
    series: list[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int,
    height: int,
    log_x: bool,
    y_range: tuple[float, float] | None,
) -> str:
    prepared = _prepare(series, log_x)
    xs, ys = _data_ranges(prepared)
    if not xs:
        return _placeholder(width, height, title, kind)
    xaxis = _covering_axis(xs, log_x, _x_target(width))
    if y_range is not None:
        yaxis = _fixed_axis(float(y_range[0]), float(y_range[1]), _y_target(height))
    else:
        yaxis = _covering_axis(ys, False, _y_target(height))
    items = [
        _LegendItem(p.label, p.color, "points" if kind == "points" else "line", p.dashed,
                    p.has_band and kind == "line", i)
        for i, p in enumerate(prepared)
    ]  # fmt: skip
    frame, legend_rows = _layout(width, height, yaxis, y_label, x_label, items)
    if kind == "points":
        frame.pad = 10.0
    # A pixel of slack so values sitting exactly on the y_range bounds are not cut by rounding.
    box = (frame.left - 1, frame.top - 1, frame.right + 1, frame.bottom + 1)

    parts = _open(width, height, title, kind)
    parts.append('<g class="axes">')
    parts += _y_axis(frame, yaxis, y_label)
    parts += _x_axis(frame, xaxis, x_label)
    parts.append(_frame_box(frame))
    parts.append("</g>")
    for i, p in enumerate(prepared):
        parts.append(f'<g class="series" data-label="{_esc(p.label)}">')
        if kind == "line":
            parts += _draw_line_series(p, frame, xaxis, yaxis, box)
        else:
            parts += _draw_points_series(p, i, frame, xaxis, yaxis)
        parts.append("</g>")
    parts += _legend(legend_rows, frame.left, frame.bottom + 22 + (18 if x_label else 0) + 8)
    parts.append("</svg>")
    return "\n".join(parts)


def _draw_line_series(
    p: _Prepared, frame: _Frame, xaxis: _Axis, yaxis: _Axis, box: tuple[float, float, float, float]
) -> list[str]:
    out = []
    if p.has_band:
        for run in _runs(p.rows, _has_band):
            if len(run) < 2:
                continue
            upper = [(frame.px(xaxis, p.rows[i][0]), frame.py(yaxis, p.rows[i][3])) for i in run]
            lower = [(frame.px(xaxis, p.rows[i][0]), frame.py(yaxis, p.rows[i][2])) for i in run]
            poly = _clip_polygon(upper + lower[::-1], box)
            if len(poly) >= 3:
                out.append(
                    f'<polygon class="band" points="{_points_attr(poly)}" fill="{p.color}" '
                    f'fill-opacity="{_BAND_OPACITY}" stroke="none"/>'
                )
    dash = f' stroke-dasharray="{_DASH}"' if p.dashed else ""
    for run in _runs(p.rows, _has_y):
        pts = [(frame.px(xaxis, p.rows[i][0]), frame.py(yaxis, p.rows[i][1])) for i in run]
        if len(pts) == 1:
            # A lone point (single value, or isolated by missing neighbours) has no line.
            x, y = pts[0]
            if box[0] <= x <= box[2] and box[1] <= y <= box[3]:
                out.append(f'<circle cx="{_c(x)}" cy="{_c(y)}" r="2.5" fill="{p.color}"/>')
            continue
        for piece in _clip_polyline(pts, box):
            out.append(
                f'<polyline points="{_points_attr(piece)}" fill="none" stroke="{p.color}" '
                f'stroke-width="2" stroke-linejoin="round" stroke-linecap="round"{dash}/>'
            )
    return out


def _draw_points_series(
    p: _Prepared, shape: int, frame: _Frame, xaxis: _Axis, yaxis: _Axis
) -> list[str]:
    out = []
    dash = f' stroke-dasharray="{_DASH}"' if p.dashed else ""
    for run in _runs(p.rows, _has_y):
        if len(run) < 2:
            continue
        pts = [(frame.px(xaxis, p.rows[i][0]), frame.py(yaxis, p.rows[i][1])) for i in run]
        out.append(
            f'<polyline points="{_points_attr(pts)}" fill="none" stroke="{p.color}" '
            f'stroke-width="1.5" stroke-opacity="0.75"{dash}/>'
        )
    for x, y, lo, hi in p.rows:
        if x is None or y is None:
            continue
        cx = frame.px(xaxis, x)
        lo = y if lo is None else lo
        hi = y if hi is None else hi
        if lo != hi:
            y0, y1 = frame.py(yaxis, lo), frame.py(yaxis, hi)
            out.append(
                f'<path class="error-bar" d="M{_c(cx)} {_c(y0)}V{_c(y1)}'
                f"M{_c(cx - 4)} {_c(y0)}H{_c(cx + 4)}M{_c(cx - 4)} {_c(y1)}H{_c(cx + 4)}"
                f'" stroke="{p.color}" stroke-width="1.5" fill="none"/>'
            )
        tip = f"{p.label}: x={_value(x)}, y={_value(y)}"
        if lo != hi:
            tip += f" [{_value(lo)}, {_value(hi)}]"
        out.append(_marker(shape, cx, frame.py(yaxis, y), p.color, tip))
    return out


# ---------------------------------------------------------------------------------------------
# Public chart functions


def line_chart(
    series: list[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 640,
    height: int = 380,
    log_x: bool = False,
    y_range: tuple[float, float] | None = None,
) -> str:
    """Curves (e.g. loss against step or FLOPs) with optional shaded bands.

    ``y_range`` fixes the y axis (curves are clipped to it); otherwise the axis is widened to
    nice ticks covering every value, bands included. Raises ValueError when ``log_x`` is set
    and some x is not positive, or when a series' arrays differ in length.
    """
    return _xy_chart(
        "line",
        series,
        title=title,
        x_label=x_label,
        y_label=y_label,
        width=width,
        height=height,
        log_x=log_x,
        y_range=y_range,
    )


def points_chart(
    series: list[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 640,
    height: int = 380,
    log_x: bool = False,
) -> str:
    """Markers joined by a thin line, with vertical error bars from ``lower`` to ``upper``
    (e.g. final loss against budget, one series per arm)."""
    return _xy_chart(
        "points",
        series,
        title=title,
        x_label=x_label,
        y_label=y_label,
        width=width,
        height=height,
        log_x=log_x,
        y_range=None,
    )


def bar_chart(
    categories: list[str],
    stacks: dict[str, list[float]],
    *,
    title: str,
    y_label: str,
    width: int = 640,
    height: int = 380,
    colors: dict[str, str] | None = None,
) -> str:
    """Stacked bars: one bar per category, ``stacks`` maps each component (bottom first) to
    one value per category. Missing/NaN values count as zero; negative values are an error.
    ``colors`` optionally overrides a component's colour (e.g. grey for "uncharged")."""
    cats = [str(c) for c in categories]
    values: dict[str, list[float]] = {}
    for label, vals in stacks.items():
        if len(vals) != len(cats):
            raise ValueError(f"stack {label!r} has {len(vals)} values for {len(cats)} categories")
        clean = [_num(v) or 0.0 for v in vals]
        neg = next((v for v in clean if v < 0), None)
        if neg is not None:
            raise ValueError(f"stacked bars need non-negative values; {label!r} has {neg:g}")
        values[str(label)] = clean
    if not cats or not values:
        return _placeholder(width, height, title, "bar")
    totals = [sum(v[i] for v in values.values()) for i in range(len(cats))]
    top_value = max(totals)
    yaxis = _covering_axis([0.0, top_value if top_value > 0 else 1.0], False, _y_target(height))
    colors = colors or {}
    items = [
        _LegendItem(label, colors.get(label) or palette(j), "bar") for j, label in enumerate(values)
    ]

    # Category labels: shortened when very long (the full text stays in the tooltip), and
    # slanted when they would not fit under their bar.
    shown = [c if len(c) <= 32 else c[:31] + "\u2026" for c in cats]
    widest = max(_text_w(s, 11) for s in shown)
    frame, legend_rows = _layout(width, height, yaxis, y_label, "", items)
    slot = (frame.right - frame.left) / len(cats)
    slant = widest > slot - 6
    extra = min(widest * 0.57, 120.0) if slant else 0.0
    if extra:
        frame.bottom = max(frame.bottom - extra, frame.top + 40)
    bar_w = min(slot * 0.6, 90.0)

    parts = _open(width, height, title, "bar")
    parts.append('<g class="axes">')
    parts += _y_axis(frame, yaxis, y_label)
    for i, s in enumerate(shown):
        cx = frame.left + slot * (i + 0.5)
        y = frame.bottom + 16
        if slant:
            parts.append(
                f'<text class="category" x="{_c(cx)}" y="{_c(y)}" text-anchor="end" '
                f'transform="rotate(-35 {_c(cx)} {_c(y)})" font-size="11" fill="{_INK}">'
                f"<title>{_esc(cats[i])}</title>{_esc(s)}</text>"
            )
        else:
            parts.append(
                f'<text class="category" x="{_c(cx)}" y="{_c(y)}" text-anchor="middle" '
                f'font-size="11" fill="{_INK}"><title>{_esc(cats[i])}</title>{_esc(s)}</text>'
            )
    parts.append(_frame_box(frame))
    parts.append("</g>")

    base = [0.0] * len(cats)
    for item, (label, vals) in zip(items, values.items(), strict=True):
        parts.append(f'<g class="series" data-label="{_esc(label)}">')
        for i, v in enumerate(vals):
            if v <= 0:
                continue
            y_top = frame.py(yaxis, base[i] + v)
            y_bot = frame.py(yaxis, base[i])
            x0 = frame.left + slot * (i + 0.5) - bar_w / 2
            parts.append(
                f'<rect x="{_c(x0)}" y="{_c(y_top)}" width="{_c(bar_w)}" '
                f'height="{_c(y_bot - y_top)}" fill="{item.color}" '
                f'data-category="{_esc(cats[i])}" data-value="{_value(v)}">'
                f"<title>{_esc(cats[i])} \u2014 {_esc(label)}: {_value(v)}</title></rect>"
            )
            base[i] += v
        parts.append("</g>")
    parts.append('<g class="bar-totals">')
    for i, total in enumerate(totals):
        cx = frame.left + slot * (i + 0.5)
        parts.append(
            f'<text x="{_c(cx)}" y="{_c(frame.py(yaxis, total) - 4)}" text-anchor="middle" '
            f'font-size="10" fill="{_INK}">{_esc(format_tick(float(f"{total:.3g}")))}</text>'
        )
    parts.append("</g>")
    parts += _legend(legend_rows, frame.left, frame.bottom + 22 + extra + 8)
    parts.append("</svg>")
    return "\n".join(parts)
