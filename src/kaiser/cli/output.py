"""Shared CLI plumbing: consoles that know the terminal's width, tables that fit it, JSON output
and one-line user errors.

Width (`terminal_width`): ``COLUMNS`` when it is a positive number, else the size of the terminal
stdout is, else 80 (a pipe, a file, a CI log) -- so ``kaiser audit > file`` does not take the width
of whatever terminal stderr happens to be. `print_table` fits a table into that width without ever
cutting, wrapping or folding an address or a number: a boxed table when it fits unwrapped, else a
borderless one whose text columns wrap at spaces and whose headers break at spaces, dropping the
columns marked droppable (highest `Col.drop` first) while it is still too wide, and on a terminal
too narrow for even that one record per block (``name  value`` lines).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import typer
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

DEFAULT_WIDTH = 80  # CHOSEN: the width assumed without a terminal or COLUMNS (a pipe, a CI log)


def terminal_width() -> int:
    """Columns to print into: COLUMNS if it is a positive number, else stdout's terminal, else 80."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        if sys.stdout.isatty():
            return os.get_terminal_size(sys.stdout.fileno()).columns or DEFAULT_WIDTH
    except (OSError, ValueError):
        pass
    return DEFAULT_WIDTH


console = Console(width=terminal_width(), emoji=False)  # ":x:" in a file name stays text
err_console = Console(stderr=True, width=terminal_width(), emoji=False)


def emit_json(data: Any) -> None:
    """Print `data` as JSON on stdout (the `--json` form of every reporting command)."""
    sys.stdout.write(json_text(data))


def json_text(data: Any) -> str:
    """The text `emit_json` prints."""
    return json.dumps(data, indent=2, default=_jsonable) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, int):
        return int(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def fail(message: str, code: int = 2) -> NoReturn:
    """A user mistake: one line on stderr, a non-zero exit, never a traceback."""
    err_console.print(f"[bold red]kaiser: error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def parse_int(text: str, what: str) -> int:
    """An integer given on the command line, in decimal or 0x-hex (underscores allowed)."""
    try:
        return int(text.replace("_", ""), 0)
    except ValueError:
        fail(f"{what} {text!r} is not a number (use decimal or 0x-hex)")


def variant_or_all(name: str) -> list[str]:
    """`--variant NAME`: that registered variant, or every one for `all`; else a one-line error."""
    from kaiser.linux.variants import VARIANTS, UnknownVariant, get_variant  # not at start-up

    if name == "all":
        return list(VARIANTS)
    try:
        return [get_variant(name).name]
    except UnknownVariant as exc:
        fail(f"--variant: {exc} (or 'all')")


def progress_bar(*, disable: bool = False, label: str = "{task.description}") -> Progress:
    """The rich progress bar long commands show on stderr, so stdout keeps only the result
    (hidden for --json): `label`, the bar, done/total and the time remaining."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=disable,
    )


@dataclass(frozen=True)
class Col:
    """A column of `print_table`. `whole`: an address, a number or a name -- never wrapped, folded
    or cut (text columns wrap at spaces). `drop`: 0 for a column that is always shown; when the
    width is short the column with the highest `drop` goes first."""

    name: str
    whole: bool = True
    justify: Literal["left", "right"] = "left"
    drop: int = 0


def _lines_width(cell: str) -> int:
    return max((cell_len(line) for line in Text.from_markup(cell).plain.split("\n")), default=0)


def _word_width(cell: str) -> int:
    return max((cell_len(word) for word in Text.from_markup(cell).plain.split()), default=0)


def _needs(col: Col, cells: Sequence[str]) -> int:
    """The narrowest a column can be: its widest cell line (whole) or word (text), and its
    header's longest word (headers break at spaces)."""
    width = max((_lines_width(c) if col.whole else _word_width(c) for c in cells), default=0)
    return max(width, _word_width(col.name))


def print_table(
    cols: Sequence[Col],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    out: Console | None = None,
) -> None:
    """Print `rows` (rich markup allowed; a cell may hold several lines) under `title` so that it
    fits `out.width` (see the module docstring for the order of fallbacks)."""
    out = out or console
    width = out.width
    if title:
        out.print(title, highlight=False)
    keep = list(range(len(cols)))
    needs = [_needs(c, [r[i] for r in rows]) for i, c in enumerate(cols)]
    natural = [max([_lines_width(c.name), *(_lines_width(r[i]) for r in rows)]) for i, c in enumerate(cols)]

    def table_width(widths: list[int], idx: list[int], gap: int, edges: int) -> int:
        return sum(widths[i] for i in idx) + gap * (len(idx) - 1) + edges

    if table_width(natural, keep, 3, 4) <= width:  # boxed, nothing wrapped
        table, compact = Table(box=box.HEAVY_HEAD), False
    else:  # borderless; text columns wrap at spaces; then columns go; then blocks
        while table_width(needs, keep, 2, 0) > width and any(cols[i].drop for i in keep):
            keep.remove(max(keep, key=lambda i: (cols[i].drop, i)))
        if table_width(needs, keep, 2, 0) > width:
            print_blocks(cols, rows, out=out)
            return
        table, compact = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True), True
    widths: dict[int, int] = {}
    if compact:  # fixed widths: whole columns as wide as their widest cell, text columns share the rest
        text = [i for i in keep if not cols[i].whole]
        spare = width - table_width(needs, keep, 2, 0)
        for i in keep:
            widths[i] = needs[i]
        want = {i: natural[i] - needs[i] for i in text}
        total = sum(want.values())
        for i in text:
            widths[i] += min(want[i], spare * want[i] // total) if total else 0
    for i in keep:
        col = cols[i]
        cells = max((_lines_width(r[i]) if col.whole else _word_width(r[i]) for r in rows), default=0)
        table.add_column(
            col.name.replace(" ", "\n") if compact and cell_len(col.name) > cells else col.name,
            justify=col.justify,
            no_wrap=col.whole,
            overflow="ellipsis" if col.whole else "fold",  # never used: the widths fit (checked above)
            width=widths.get(i),
        )
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    out.print(table)


def print_blocks(cols: Sequence[Col], rows: Sequence[Sequence[str]], *, out: Console | None = None) -> None:
    """One record per block: a ``name  value`` line per column, a blank line between records."""
    out = out or console
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(overflow="fold")
    for n, row in enumerate(rows):
        if n:
            grid.add_row("", "")
        for col, cell in zip(cols, row, strict=True):
            grid.add_row(col.name, cell)
    out.print(grid)


def rule(title: str, out: Console | None = None) -> None:
    """A section heading: a rule with `title` in it when it fits, else the rule and then the title
    wrapped at spaces (rich's Rule would cut a long title with an ellipsis)."""
    from rich.rule import Rule

    out = out or console
    if cell_len(Text.from_markup(title).plain) + 6 <= out.width:
        out.print(Rule(title))
    else:
        out.print(Rule())
        out.print(f"[bold]{title}[/]", highlight=False)
