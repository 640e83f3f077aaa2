"""Reports: one self-contained HTML page from a `kaiser bench --json` file or a `kaiser sweep` output."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kaiser.lazy import lazy_exports

# `load` is also the name of its module: imported now, since importing the module kaiser.report.load
# (by anyone) would bind the package's `load` to the module (light: standard library only).
from kaiser.report.load import ReportError, Results, Row, load

if TYPE_CHECKING:
    from kaiser.report.html import render


__all__ = ["ReportError", "Results", "Row", "load", "render"]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
