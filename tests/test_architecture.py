"""docs/architecture.md is true to the tree, and the import contracts of pyproject.toml hold and
catch a new upward import.

How the doc names a module (the convention checked here, strictly): a package by its folder
(`cost/`) as an entry of the tree block at the top; a module by its path relative to src/kaiser
(`x86/bits.py`, `sample.py`) anywhere in the doc, or by its file name (`spec.py`) inside its own
package's entry of the tree block. Globs (`x86/engine*.py`) and abbreviations name nothing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "kaiser"
DOC = ROOT / "docs" / "architecture.md"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def modules() -> list[str]:
    """Every module of src/kaiser by its path relative to it, packages as `folder/`."""
    out = []
    for p in sorted(SRC.rglob("*.py")):
        rel = p.relative_to(SRC)
        if p.name == "__init__.py":
            if rel.parent != Path("."):
                out.append(rel.parent.as_posix() + "/")
        else:
            out.append(rel.as_posix())
    return out


def tree_entries(doc: str) -> dict[str, str]:
    """The tree block (the doc's first code block): entry name (`cli/`, `sample.py`) -> its text,
    an entry being a line starting in column 0 and the indented lines after it."""
    parts = doc.split("```")
    assert len(parts) >= 3, "docs/architecture.md has no tree block"
    entries: dict[str, str] = {}
    name = ""
    for line in parts[1].splitlines():
        if line and not line[0].isspace():
            name, _, rest = line.partition(" ")
            entries[name] = rest
        elif name:
            entries[name] += " " + line.strip()
    return entries


def _named(token: str, text: str) -> bool:
    """`token` occurs in `text` as a whole path: not inside a longer path, name or glob."""
    return re.search(r"(?<![\w/.*-])" + re.escape(token) + r"(?![\w*])", text) is not None


def unnamed(doc: str, mods: list[str]) -> list[str]:
    entries = tree_entries(doc)
    missing = []
    for m in mods:
        if m.endswith("/"):
            ok = m in entries
        else:
            folder, _, name = m.rpartition("/")
            ok = _named(m, doc) or (bool(folder) and _named(name, entries.get(folder + "/", "")))
        if not ok:
            missing.append(m)
    return missing


def named_but_absent(doc: str) -> list[str]:
    """Modules the doc names that src/kaiser does not have (a path, or a file name in a package's
    tree entry)."""
    have = set(modules())
    packages = {m.rstrip("/") for m in have if m.endswith("/")}
    cited = {
        m.group(1)
        for m in re.finditer(r"(?<![\w/.*-])((?:[a-z_0-9]+/)+[a-z_0-9]+\.py)(?![\w*])", doc)
        if m.group(1).split("/")[0] in packages
    }
    for folder, text in tree_entries(doc).items():
        if folder.endswith("/"):
            cited |= {folder + n for n in re.findall(r"(?<![\w/.*-])([a-z_0-9]+\.py)(?![\w*])", text)}
    for name in tree_entries(doc):
        if not name.endswith("/"):
            cited.add(name)
    return sorted(c for c in cited if c not in have and not (SRC / c).exists())


def test_architecture_names_every_module() -> None:
    doc = DOC.read_text()
    assert unnamed(doc, modules()) == []
    assert named_but_absent(doc) == []


def test_the_module_check_misses_nothing() -> None:
    """Take any one module's every mention out of the doc: the check names that module."""
    doc = DOC.read_text()
    mods = modules()
    for m in mods:
        if m.endswith("/"):
            spoiled = re.sub(r"(?m)^" + re.escape(m), "  ", doc)
        else:
            folder, _, name = m.rpartition("/")
            spoiled = re.sub(r"(?<![\w/.*-])" + re.escape(m) + r"(?![\w*])", "?", doc)
            if folder:  # its file name only counts in its own package's entry; blank it everywhere
                spoiled = re.sub(r"(?<![\w/.*-])" + re.escape(name) + r"(?![\w*])", "?", spoiled)
        assert unnamed(spoiled, [m]) == [m], m
    assert named_but_absent(doc.replace("x86/bits.py", "x86/bitz.py")) == ["x86/bitz.py"]


# ---- import contracts ([tool.importlinter] of pyproject.toml; `make lint` runs them too) -----------
def _lint_imports(cwd: Path, src: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(src), "HOME": str(cwd)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_contracts_hold(tmp_path: Path) -> None:
    done = _lint_imports(tmp_path, ROOT / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("x86/bits.py", "import kaiser.linux.layout", "kaiser.x86.bits -> kaiser.linux.layout"),
        ("cost/model.py", "import kaiser.sweep.store", "kaiser.cost.model -> kaiser.sweep.store"),
        ("inputs.py", "import kaiser.x86.bits", "kaiser.inputs -> kaiser.x86.bits"),
        ("systools.py", "import kaiser.inputs", "kaiser.systools -> kaiser.inputs"),
        ("linux/layout.py", "import kaiser.linux.kernel", "No cycles are allowed in kaiser.linux"),
    ],
    ids=["x86-imports-linux", "cost-imports-sweep", "inputs-imports-x86", "systools-imports-inputs", "cycle"],
)
def test_a_new_upward_import_breaks_a_contract(tmp_path: Path, module: str, line: str, broken: str) -> None:
    """The same contracts over a copy of the tree with one import added: they fail, naming it (an
    upward import between packages also closes a cycle among kaiser's packages: two contracts)."""
    copy = tmp_path / "src" / "kaiser"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{line}  # added by the test\n")
    done = _lint_imports(tmp_path, tmp_path / "src")
    assert done.returncode == 1, done.stdout + done.stderr
    assert broken in done.stdout and "0 broken" not in done.stdout, done.stdout
