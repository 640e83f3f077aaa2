"""`kaiser report RESULTS --out report.html`: one self-contained HTML page of a bench or sweep run.

RESULTS is a `kaiser bench --json` file, a `kaiser sweep` output directory, or that directory's
results.csv. The page embeds its plots as base64 PNGs and loads nothing from the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kaiser.cli.options import non_empty, output_file
from kaiser.cli.output import console, fail


def report_command(
    results: Annotated[
        Path,
        typer.Argument(help="A `kaiser bench --json` file, a `kaiser sweep` output directory, or its results.csv."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", parser=output_file, help="The HTML file to write.")] = Path(
        "report.html"
    ),
    title: Annotated[
        str | None, typer.Option("--title", callback=non_empty, help="Page title (default: from the results).")
    ] = None,
) -> None:
    """Write one self-contained HTML page (plots inline, readable offline) of a bench or sweep run."""
    from kaiser.report import ReportError, load, render  # the page's plots (matplotlib): not for --help

    try:
        res = load(results)
    except ReportError as exc:
        fail(str(exc))
    page = render(res, title)
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        fail(f"{out}: cannot write the report ({exc.strerror})")
    console.print(
        f"report written to {out} ({len(page.encode()) // 1024} KiB, {page.count('<img ')} plots, "
        f"{page.count('<table ')} tables, {len(res.rows)} rows from {results})",
        highlight=False,
        soft_wrap=True,
    )
