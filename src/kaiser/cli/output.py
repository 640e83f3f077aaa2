"""Shared CLI plumbing: consoles, JSON output and one-line user errors."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from kaiser.linux.variants import VARIANTS, UnknownVariant, get_variant

console = Console()
err_console = Console(stderr=True)


def emit_json(data: Any) -> None:
    """Print `data` as JSON on stdout (the `--json` form of every reporting command)."""
    sys.stdout.write(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, int):
        return int(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def fail(message: str, code: int = 2) -> NoReturn:
    """A user mistake: one line on stderr, a non-zero exit, never a traceback."""
    err_console.print(f"[bold red]kaiser: error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def parse_int(text: str, what: str) -> int:
    """An integer given on the command line, in decimal or 0x-hex (underscores allowed)."""
    try:
        return int(text.replace("_", ""), 0)
    except ValueError:
        fail(f"{what} {text!r} is not a number (use decimal or 0x-hex)")


def variant_or_all(name: str) -> list[str]:
    """`--variant NAME`: that registered variant, or every one for `all`; else a one-line error."""
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
