"""Open a local HTML file in headless Chromium and report what was actually drawn.

Uses Selenium with an explicitly given chromedriver, so Selenium Manager never tries to
download a driver or a browser (tests must run offline). The paths default to Debian's
packages and can be overridden with BUDGETLM_CHROMIUM and BUDGETLM_CHROMEDRIVER.
Tests call ``need_browser()``: it skips with the reason when something is missing.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

DEFAULT_CHROMIUM = "/usr/bin/chromium"
DEFAULT_CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1280, 1600)

# Per page: how many <svg> elements, the on-screen size of every chart series, the title, and
# what is wider than its box: each table against the box it sits in, and the whole document
# against the window (a page that scrolls sideways hides columns).
_PROBE = """
const boxes = Array.from(document.querySelectorAll('g.series')).map((g) => {
  const r = g.getBoundingClientRect();
  return [r.width, r.height];
});
const tables = Array.from(document.querySelectorAll('table')).map((t) => {
  const box = t.parentElement;
  return {
    header: Array.from(t.querySelectorAll('th')).map((th) => th.textContent),
    table_width: t.scrollWidth,
    box_scroll_width: box.scrollWidth,
    box_client_width: box.clientWidth,
    right: t.getBoundingClientRect().right,
  };
});
// Chart text that sticks out of its chart (a legend wider than the figure is cut off).
const clipped = [];
for (const svg of document.querySelectorAll('svg')) {
  const box = svg.getBoundingClientRect();
  for (const t of svg.querySelectorAll('text')) {
    const r = t.getBoundingClientRect();
    if (r.left < box.left - 1 || r.right > box.right + 1 ||
        r.top < box.top - 1 || r.bottom > box.bottom + 1) {
      clipped.push(t.textContent);
    }
  }
}
const doc = document.documentElement;
return {
  svg_count: document.querySelectorAll('svg').length,
  series_boxes: boxes,
  title: document.title,
  tables: tables,
  document_width: [doc.scrollWidth, doc.clientWidth],
  window_width: window.innerWidth,
  clipped_text: clipped,
};
"""


def chromium_path() -> str:
    return os.environ.get("BUDGETLM_CHROMIUM") or DEFAULT_CHROMIUM


def chromedriver_path() -> str:
    return os.environ.get("BUDGETLM_CHROMEDRIVER") or DEFAULT_CHROMEDRIVER


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def browser_unavailable_reason() -> str | None:
    """None when Selenium, Chromium and chromedriver are all present; otherwise why not."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install selenium)"
    for what, path, var in (
        ("chromium", chromium_path(), "BUDGETLM_CHROMIUM"),
        ("chromedriver", chromedriver_path(), "BUDGETLM_CHROMEDRIVER"),
    ):
        if not _executable(path):
            return f"{what} not found or not executable at {path} (set {var} to override)"
    return None


def need_browser() -> None:
    """Skip the calling test when no browser is available, with the reason; fail instead
    where BUDGETLM_REQUIRE_BROWSER=1 (CI installs Chromium, so a skip there would hide a gap)."""
    import pytest

    reason = browser_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("BUDGETLM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"BUDGETLM_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@contextmanager
def headless_chromium() -> Iterator[WebDriver]:
    """A headless Chromium session with a throwaway profile and no background networking."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    reason = browser_unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    profile = tempfile.mkdtemp(prefix="budgetlm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path()
    for arg in (
        "--headless=new",
        "--no-sandbox",  # containers often run as root, where the sandbox refuses to start
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",  # /dev/shm is tiny in many containers
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(arg)
    # Lets render() read console errors; harmless where the driver does not support it.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(chromedriver_path()), options=options)
        driver.set_window_size(*WINDOW)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _severe_logs(driver: WebDriver) -> list[str]:
    try:
        entries = driver.get_log("browser")
    except Exception:  # not every driver exposes logs; errors are then unknown, not absent
        return []
    return [str(e.get("message", e)) for e in entries if e.get("level") == "SEVERE"]


def _full_page_png(driver: WebDriver) -> bytes:
    # The DevTools call captures the whole document, not just the window; plain Selenium
    # screenshots are the fallback for drivers without CDP.
    try:
        size = driver.execute_script(
            "const e = document.documentElement;"
            "return [Math.max(e.scrollWidth, 1), Math.max(e.scrollHeight, 1)];"
        )
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
            },
        )
        return base64.b64decode(shot["data"])
    except Exception:
        return driver.get_screenshot_as_png()


def render(path: Path, screenshot: Path | None = None) -> dict[str, Any]:
    """Open ``path`` (file://) and return svg_count, series_boxes, errors, title and layout.

    ``series_boxes`` holds ``[width, height]`` of every ``g.series`` as laid out on screen;
    ``errors`` holds the browser console's SEVERE messages. ``tables`` holds per table its
    header and widths (its own, its box's scrollWidth and clientWidth, its right edge);
    ``document_width`` is the document's ``[scrollWidth, clientWidth]`` in a window
    ``WINDOW[0]`` px wide; ``clipped_text`` lists SVG text drawn outside its ``<svg>``.
    With ``screenshot`` a PNG of the full page is written there.
    """
    with headless_chromium() as driver:
        driver.get(Path(path).resolve().as_uri())
        info = dict(driver.execute_script(_PROBE))
        info["series_boxes"] = [[float(w), float(h)] for w, h in info["series_boxes"]]
        info["errors"] = _severe_logs(driver)
        if screenshot is not None:
            Path(screenshot).write_bytes(_full_page_png(driver))
    return info


def png_pixels(data: bytes) -> np.ndarray:
    """Decode an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes) to (h, w, c).

    Enough to check that a screenshot is not blank without adding an imaging library.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or color not in (2, 6) or interlace != 0:
        raise ValueError(
            f"unsupported PNG: depth {depth}, colour type {color}, interlace {interlace}"
        )
    bpp = 3 if color == 2 else 4
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(bytes(idat)), dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    for r in range(height):
        kind, line = int(raw[r, 0]), raw[r, 1:].astype(np.int64)
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: a running sum per channel, so it vectorises
            cur = np.cumsum(line.reshape(width, bpp), axis=0).reshape(stride) % 256
        elif kind == 2:  # Up
            cur = (line + prev) % 256
        elif kind in (3, 4):  # Average, Paeth: each byte depends on the decoded one before it
            vals, up = line.tolist(), prev.tolist()
            dec = [0] * stride
            for i in range(stride):
                a = dec[i - bpp] if i >= bpp else 0
                b = up[i]
                if kind == 3:
                    pred = (a + b) // 2
                else:
                    c = up[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                dec[i] = (vals[i] + pred) & 0xFF
            cur = np.array(dec, dtype=np.int64)
        else:
            raise ValueError(f"bad PNG filter type {kind} on row {r}")
        out[r] = cur
        prev = cur
    return out.reshape(height, width, bpp)
