"""docs/architecture.md's command table names every registered command, with the module that
defines it (README.md's table is tests/test_docs.py's), and names no command that is gone; every
module it says a command calls exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from kaiser.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
ROW = re.compile(r"^\| `kaiser ([a-z ]+)` \| `(cli/[a-z_]+\.py)` \| (.+) \|$", re.M)


def registered(group: Any, prefix: tuple[str, ...] = ()) -> dict[str, str]:
    """Every runnable command path -> the module file (relative to src/kaiser) of its callback; a
    group is a command itself only when it runs without a subcommand (`kaiser bench`)."""
    out: dict[str, str] = {}
    for name, cmd in sorted(group.commands.items()):
        path = (*prefix, name)
        is_group = hasattr(cmd, "commands")
        if not is_group or cmd.invoke_without_command:
            module = cmd.callback.__module__
            out[" ".join(path)] = module.removeprefix("kaiser.").replace(".", "/") + ".py"
        if is_group:
            out.update(registered(cmd, path))
    return out


def documented(doc: str) -> dict[str, tuple[str, str]]:
    return {m.group(1): (m.group(2), m.group(3)) for m in ROW.finditer(doc)}


def test_the_walk_sees_subcommands_and_the_bench_callback() -> None:
    """The check below can fail: it sees nested commands and a group that runs by itself."""
    cmds = registered(typer.main.get_command(app))
    assert {"bench", "bench memory", "attack meltdown", "recording check"} <= set(cmds)
    assert "attack" not in cmds and "recording" not in cmds  # groups that need a subcommand
    assert cmds["dump"] == "cli/dump.py"


def test_architecture_lists_every_command_with_its_module() -> None:
    cmds = registered(typer.main.get_command(app))
    rows = documented(DOC.read_text(encoding="utf-8"))
    missing = sorted(set(cmds) - set(rows))
    stale = sorted(set(rows) - set(cmds))
    assert not missing, f"docs/architecture.md's command table lacks: {', '.join(missing)}"
    assert not stale, f"docs/architecture.md lists commands that do not exist: {', '.join(stale)}"
    wrong = {c: (rows[c][0], m) for c, m in cmds.items() if rows[c][0] != m}
    assert not wrong, f"command rows naming another module than the one defining it: {wrong}"
    for command, (_, calls) in rows.items():
        for mod in re.findall(r"`([a-z_0-9/]+(?:\.py|/))`", calls):
            assert (ROOT / "src" / "kaiser" / mod).exists(), (command, mod)


def test_the_table_check_fails_on_a_missing_or_wrong_row() -> None:
    doc = DOC.read_text(encoding="utf-8")
    cmds = registered(typer.main.get_command(app))
    rows = documented(doc.replace("| `kaiser bench memory` |", "| `kaiser bench memoir` |"))
    assert "bench memory" not in rows and "bench memoir" in rows and "bench memoir" not in cmds
    rows = documented(doc.replace("| `kaiser dump` | `cli/dump.py`", "| `kaiser dump` | `cli/walk.py`"))
    assert rows["dump"][0] != cmds["dump"]
