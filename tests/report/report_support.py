"""Shared helpers of the report tests: fixtures' paths, a PNG's size, and an HTML outline.

The fixtures in data/ were made with (and can be remade with):

    kaiser bench --json -n 20 --warmup 5 -v linux -v kaiser-rfc -v fixed-trampoline \\
        > tests/report/data/bench-syscall-loop.json
    kaiser sweep tests/report/data/sweep-spec.toml --out /tmp/sw --workers 2
    cp /tmp/sw/results.csv tests/report/data/sweep/   # and sessions.log, spec= path edited
"""

from __future__ import annotations

import base64
import struct
from html.parser import HTMLParser
from pathlib import Path

DATA = Path(__file__).parent / "data"
BENCH_JSON = DATA / "bench-syscall-loop.json"
SWEEP_DIR = DATA / "sweep"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "wbr", "source"}


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert data.startswith(PNG_MAGIC), data[:8]
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


class Outline(HTMLParser):
    """What the report tests look at: images, tables (id -> body rows of cell texts), attributes,
    text, and whether every non-void element was closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict[str, str]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.body_attrs: dict[str, str] = {}
        self.text: list[str] = []
        self.errors: list[str] = []
        self.stack: list[str] = []
        self._table: str | None = None
        self._in_body_rows = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "img":
            self.images.append(a)
        elif tag == "body":
            self.body_attrs = a
        elif tag == "table":
            self._table = a.get("id", f"table{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body_rows = True
        elif tag == "tr" and self._in_body_rows and self._table:
            self.tables[self._table].append([])
        elif tag == "td" and self._in_body_rows:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()
        if tag == "td" and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._in_body_rows = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def outline(page: str) -> Outline:
    parser = Outline()
    parser.feed(page)
    parser.close()
    return parser


def image_pngs(o: Outline) -> list[bytes]:
    """Every image's PNG bytes (each must be an inline base64 PNG)."""
    prefix = "data:image/png;base64,"
    out = []
    for img in o.images:
        assert img["src"].startswith(prefix), img["src"][:60]
        out.append(base64.b64decode(img["src"][len(prefix) :], validate=True))
    return out
