"""Structural checks of a generated HTML page: balanced tags, and nothing loaded from outside;
and the page's tables as text, to compare with planted values."""

from __future__ import annotations

import re
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
# SVG elements written self-closing (<path .../>) are reported by HTMLParser as start+end.
URL_ATTRIBUTES = {"src", "href", "xlink:href", "action", "poster", "data", "srcset"}
_OUTSIDE_URL = re.compile(r"url\(\s*(?!#)", re.I)


class _Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.external: list[str] = []
        self.counts: dict[str, int] = {}
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if "svg" not in self.stack:  # an SVG's own <title> is its accessible name, not the page's
            self.counts[tag] = self.counts.get(tag, 0) + 1
        for name, value in attrs:
            # "#id" and url(#id) point inside the page (an SVG's clip paths and markers).
            if name in URL_ATTRIBUTES and value and not value.startswith("#"):
                self.external.append(f"{tag} {name}={value}")
            if value and _OUTSIDE_URL.search(value):
                self.external.append(f"{tag} {name} url()")
        if tag in ("script", "iframe", "object", "embed"):
            self.external.append(f"<{tag}> element")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] == "style" and re.search(r"url\(|@import", data):
            self.external.append("CSS url()/@import")


def check_html(text: str) -> dict:
    """{'errors': [...], 'external': [...], 'counts': {tag: n}} for a complete page."""
    checker = _Checker()
    checker.feed(text)
    checker.close()
    errors = list(checker.errors)
    if not checker.doctype:
        errors.append("no <!DOCTYPE html>")
    if checker.stack:
        errors.append(f"unclosed tags: {checker.stack}")
    for tag in ("html", "head", "body", "title"):
        if checker.counts.get(tag) != 1:
            errors.append(f"expected one <{tag}>, found {checker.counts.get(tag, 0)}")
    if re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I):
        checker.external.append("a URL in the text")
    return {"errors": errors, "external": checker.external, "counts": checker.counts}


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "span" and self.cell is not None and self.cell:
            self.cell.append(" ")  # a cell's second line (<span class="sub">) reads as a space

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def tables(text: str) -> list[list[list[str]]]:
    """Every <table> of a page as rows of cell texts (header row first)."""
    parser = _Tables()
    parser.feed(text)
    parser.close()
    return parser.tables
