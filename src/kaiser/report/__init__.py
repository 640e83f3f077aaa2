"""Reports: one self-contained HTML page from a `kaiser bench --json` file or a `kaiser sweep` output."""

from __future__ import annotations

from kaiser.report.html import render
from kaiser.report.load import ReportError, Results, Row, load

__all__ = ["ReportError", "Results", "Row", "load", "render"]
