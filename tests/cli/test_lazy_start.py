"""Start-up stays light: numpy and the heavy libraries (numba, dask, matplotlib, Unicorn) are
imported only by the commands that use them, when they run, never by `kaiser` itself nor by any
command's --help (the options' names come from kaiser/choices.py; each command imports its model
in its body). Checked in a fresh interpreter, since this test process has them all loaded already;
the same interpreter then runs a command, which must still work (and load numpy: the probe sees
imports). Every import a command module makes inside a function names something that exists, so
a lazily imported name cannot break a path the tests do not run. `kaiser --help` imports no
command module, yet prints what the fully loaded tree prints; every package's lazy exports
(kaiser/lazy.py) resolve to the real objects. (How fast start-up is, is measured outside the
suite: `kaiser --help` CPU seconds, see the commit history; never asserted here.)"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from kaiser.cli import app as app_module
from kaiser.cli.app import app
from kaiser.lazy import _type_checking_imports as lazy_exports_of

HEAVY = ("numpy", "numba", "dask", "distributed", "matplotlib", "unicorn")
CLI = Path(app_module.__file__).parent

# Runs each argv in turn in one fresh interpreter (stdout silenced), recording after each its exit
# status and which of HEAVY are loaded by then.
PROBE = """
import contextlib, io, json, sys
from kaiser.cli.app import run
loaded = {{"import": [0, sorted(m for m in {heavy!r} if m in sys.modules)]}}
for argv in {argvs!r}:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            status = run(argv)
        except SystemExit as exc:
            status = exc.code
    loaded[" ".join(argv)] = [status, sorted(m for m in {heavy!r} if m in sys.modules)]
print(json.dumps(loaded))
"""


def _probe(*argvs: list[str]) -> dict[str, tuple[int, list[str]]]:
    code = PROBE.format(heavy=HEAVY, argvs=list(argvs))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {k: (status, mods) for k, (status, mods) in json.loads(proc.stdout.splitlines()[-1]).items()}


def _loaded(*argvs: list[str]) -> dict[str, list[str]]:
    return {k: mods for k, (_status, mods) in _probe(*argvs).items()}


def _commands() -> list[list[str]]:
    """Every command and subcommand path of the CLI (`["bench", "memory"]`, ...)."""
    paths: list[list[str]] = []
    for name, command in typer.main.get_command(app).commands.items():  # type: ignore[attr-defined]
        paths.append([name])
        paths += [[name, sub] for sub in getattr(command, "commands", {})]
    assert len(paths) >= 20 and all(all(p) for p in paths)
    return paths


def test_importing_the_cli_and_dump_help_load_nothing_heavy() -> None:
    loaded = _loaded(["--help"], ["dump", "--help"])
    assert loaded == {"import": [], "--help": [], "dump --help": []}


def test_no_command_help_loads_numpy_or_anything_heavy_and_commands_still_run() -> None:
    argvs = [[*path, "--help"] for path in _commands()]
    run = ["walk", "0xffff888000001000", "--user", "--json"]  # a command that needs the model
    got = _probe(*argvs, run)
    assert set(got) == {"import", " ".join(run)} | {" ".join(a) for a in argvs}
    assert {k: v for k, v in got.items() if k != " ".join(run) and v != (0, [])} == {}
    assert got[" ".join(run)] == (0, ["numpy"])  # it ran (the sample walk), importing numpy then


def _function_imports(path: Path) -> list[tuple[str, int, str, list[str]]]:
    """(file, line, module, names) of every `from M import N` inside a function of `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                    found.append((path.name, inner.lineno, inner.module, [a.name for a in inner.names]))
    return found


def _importable(module: str, name: str) -> bool:
    """`from module import name` works: an attribute, or a submodule of a package."""
    found = importlib.import_module(module)
    if hasattr(found, name):
        return True
    return hasattr(found, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None


def test_every_import_inside_a_command_names_what_exists() -> None:
    imports = [i for path in sorted(CLI.glob("*.py")) for i in _function_imports(path)]
    assert len(imports) > 40  # the commands' bodies import their model
    missing = [
        f"{file}:{line}: {module}.{name}"
        for file, line, module, names in imports
        for name in names
        if not _importable(module, name)
    ]
    assert missing == []


def _root_help() -> str:
    result = CliRunner().invoke(app_module.app, ["--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


def test_the_root_help_from_summaries_equals_the_loaded_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """A summary in COMMANDS that drifts from its command's own help fails here."""
    lazy = _root_help()
    # typer's own format_help: the listing asks get_command for every command, which loads it
    monkeypatch.setattr(app_module.KaiserGroup, "format_help", TyperGroup.format_help)
    loaded = _root_help()
    assert "bench" in lazy and lazy == loaded


def test_every_command_loads_under_its_name() -> None:
    for name in app_module.COMMANDS:
        command = app_module.load_command(name)
        assert command.name == name
        assert command.help, name


def test_help_imports_no_command_module_nor_numpy() -> None:
    code = (
        "import sys\n"
        "from kaiser.cli.app import run\n"
        "status = run(['--help'])\n"
        "heavy = sorted(m for m in sys.modules if m == 'numpy' or m.startswith(('kaiser.cli.', 'kaiser.linux')))\n"
        "print(status, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0 ['kaiser.cli.app', 'kaiser.cli.output']"


def test_a_command_still_reports_bad_input_in_one_line() -> None:
    """The user errors are imported at report time; a bad variant still exits 2 in one line."""
    result = CliRunner().invoke(app_module.app, ["dump", "--variant", "nosuch"])
    assert result.exit_code == 2
    assert "nosuch" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("package", ["x86", "attacks", "report", "referee", "sweep", "realcode"])
def test_lazy_exports_resolve_to_the_defining_modules(package: str) -> None:
    module = importlib.import_module(f"kaiser.{package}")
    where = lazy_exports_of(Path(str(module.__file__)))
    assert module.__all__ and where
    for name in module.__all__:  # lazy or imported at once (report's `load`, named as its module)
        value = getattr(module, name)
        assert name in dir(module) and not isinstance(value, types.ModuleType), name
        if name in where:
            assert value is getattr(importlib.import_module(where[name]), name)
    missing = "no_such_export"
    with pytest.raises(AttributeError, match="no attribute"):
        getattr(module, missing)
