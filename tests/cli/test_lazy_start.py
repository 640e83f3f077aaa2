"""Start-up stays light: the heavy libraries (numba, dask, matplotlib, Unicorn) are imported only by
the commands that use them, never by `kaiser` itself nor by any command's --help. Checked in a fresh
interpreter, since this test process has them all loaded already. (How fast start-up is, is measured
outside the suite: `kaiser --help` CPU seconds, see the commit history; never asserted here.)"""

from __future__ import annotations

import json
import subprocess
import sys

from kaiser.cli.app import app

HEAVY = ("numba", "dask", "distributed", "matplotlib", "unicorn")

PROBE = """
import json, sys
from kaiser.cli.app import run
loaded = {{"import": sorted(m for m in {heavy!r} if m in sys.modules)}}
for argv in {argvs!r}:
    try:
        run(argv)
    except SystemExit:
        pass
    loaded[" ".join(argv)] = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps(loaded))
"""


def _loaded(*argvs: list[str]) -> dict[str, list[str]]:
    code = PROBE.format(heavy=HEAVY, argvs=list(argvs))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result: dict[str, list[str]] = json.loads(proc.stdout.splitlines()[-1])
    return result


def _commands() -> list[list[str]]:
    """Every command and subcommand path of the CLI (`["bench", "memory"]`, ...)."""
    paths = [[info.name or ""] for info in app.registered_commands]
    for group in app.registered_groups:
        assert group.typer_instance is not None
        paths += [[group.name or "", info.name or ""] for info in group.typer_instance.registered_commands]
    assert len(paths) >= 12 and all(all(p) for p in paths)
    return paths


def test_importing_the_cli_and_dump_help_load_nothing_heavy() -> None:
    loaded = _loaded(["--help"], ["dump", "--help"])
    assert loaded == {"import": [], "--help": [], "dump --help": []}


def test_no_command_help_loads_anything_heavy() -> None:
    argvs = [[*path, "--help"] for path in _commands()]
    loaded = _loaded(*argvs)
    assert set(loaded) == {"import"} | {" ".join(a) for a in argvs}
    assert {k: v for k, v in loaded.items() if v} == {}
