"""The checks every command's options share, run by click while it parses the command line, so a
bad value is a one-line error with exit status 2 (`app.KaiserGroup`) before any work starts.

* Numbers: typer's ``min=``/``max=`` on every int option; the bounds shared by several commands
  live here (`SEED_MAX`). The fuzz suite (tests/fuzz/test_fuzz_options.py) checks that every int
  option of every command has both.
* Files and directories the command will *write* (`output_file`, `plot_file`, `output_dir`):
  typer ``parser=``s, which see the text as typed (an empty ``--out ''`` is an error, not ``.``),
  so `--plot /nonexistent/x.png` fails in a millisecond instead of after the whole run. Input
  files are `kaiser.inputs`' job.
* Names: `variant_name` / `variant_names` (an empty string is not "the default"), `non_empty`,
  `choice(...)`, `scheduler_address`.

Messages do not repeat the value: `app.usage_line` prints it after the option's name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Final

import typer

# CHOSEN: every --seed is a 32-bit unsigned number: numpy's legacy seeding takes 0..2**32-1, and one
# range for every command means a seed printed by one command can be given to any other.
SEED_MAX: Final = 2**32 - 1

# Pseudo file systems: writable-looking to root, but no place for a report, plot or trace.
_PSEUDO: Final = ("/proc", "/sys", "/dev")

# CHOSEN: formats matplotlib writes without extra backends, named by the file's suffix (without a
# suffix matplotlib would append ".png", and the file named on the command line would not exist).
PLOT_SUFFIXES: Final = (".png", ".pdf", ".svg")


def _pseudo(path: Path) -> str | None:
    for top in _PSEUDO:
        if path == Path(top) or Path(top) in path.parents:
            return top
    return None


def _absolute(text: str | Path) -> Path:
    if not str(text).strip():
        raise typer.BadParameter("empty path")
    try:
        return Path(text).expanduser().resolve(strict=False)
    except (OSError, RuntimeError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None


def _file_problem(path: Path) -> str | None:
    """Why `path` cannot be written as a regular file, or None. Probed by opening it for append
    (created files are removed again), which catches what stat cannot: read-only file systems,
    over-long names, permissions."""
    top = _pseudo(path)
    if top is not None:
        return f"is under {top}, not a place to write a file"
    try:
        if path.is_dir():
            return "is a directory"
        existed = path.exists()
        if existed and not path.is_file():
            return "is not a regular file"
        parent = path.parent
        if not existed:
            if not parent.exists():
                return f"directory {parent} does not exist"
            if not parent.is_dir():
                return f"{parent} is not a directory"
        with path.open("ab"):
            pass
        if not existed:
            path.unlink()
    except OSError as exc:
        return f"cannot be written ({exc.strerror or exc})"
    return None


def output_file(value: str | Path) -> Path:
    """Parser of an option naming a file to write (`--out`, `-o`)."""
    problem = _file_problem(_absolute(value))
    if problem:
        raise typer.BadParameter(problem)
    return Path(value)


def plot_file(value: str | Path) -> Path:
    """Parser of `--plot FILE`: a writable file whose suffix names an image format."""
    _absolute(value)  # an empty name first
    if Path(value).suffix.lower() not in PLOT_SUFFIXES:
        raise typer.BadParameter(f"the file name must end in {', '.join(PLOT_SUFFIXES)}")
    return output_file(value)


def output_dir(value: str | Path) -> Path:
    """Parser of an option naming a directory to write into (created with its parents when
    missing): it, or its nearest existing ancestor, must be a writable directory."""
    path = _absolute(value)
    top = _pseudo(path)
    if top is not None:
        raise typer.BadParameter(f"is under {top}, not a place to write files")
    try:
        probe = path
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise typer.BadParameter(f"{probe} is not a directory")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise typer.BadParameter(f"directory {probe} is not writable")
    except OSError as exc:
        raise typer.BadParameter(str(exc.strerror or exc)) from None
    return Path(value)


def variant_name(value: str | None) -> str | None:
    """Callback of `--variant NAME`: a registered variant (an empty string is an error, not the
    default)."""
    if value is None:
        return None
    from kaiser.linux.variants import UnknownVariant, get_variant  # the registry: not for --help

    try:
        return get_variant(value).name
    except UnknownVariant as exc:
        raise typer.BadParameter(str(exc)) from None


def variant_names(values: list[str] | None) -> list[str] | None:
    """Callback of a repeatable `--variant NAME`."""
    if values is None:
        return None
    return [name for name in (variant_name(v) for v in values) if name is not None]


def non_empty(value: str | None) -> str | None:
    """Callback of a free-text option that must say something."""
    if value is not None and not value.strip():
        raise typer.BadParameter("must not be empty")
    return value


def choice(*choices: str) -> Callable[[str | None], str | None]:
    """Callback of an option that takes one of `choices` (None: the option's own default)."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"not one of {', '.join(choices)}")
        return value

    return check


# A dask scheduler address: [PROTOCOL://]HOST:PORT (distributed.comm.addressing; HOST a name, an
# IPv4 address or a bracketed IPv6 one).
_SCHEDULER: Final = re.compile(r"(?:(tcp|tls|ucx|ws|wss)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(\d{1,5})")


def scheduler_address(value: str | None) -> str | None:
    """Callback of `--scheduler`: `tcp://HOST:PORT` (or tls/ucx/ws/wss, or HOST:PORT), port 1..65535."""
    if value is None:
        return None
    m = _SCHEDULER.fullmatch(value)
    if m is None or not 1 <= int(m.group(3)) <= 65535:
        raise typer.BadParameter("not a scheduler address (tcp://HOST:PORT)")
    return value


# `--path engine|reference` of every command that replays events (bench, bench published, replay).
ReplayPathOption = Annotated[
    str | None,
    typer.Option(
        "--path",
        callback=choice("engine", "reference"),
        help="Replay path: engine or reference (default: engine if available).",
    ),
]
