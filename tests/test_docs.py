"""The documentation is true: the README lists every command, the generated figures of
docs/variants.md are what the code prints today, and no doc or --help text cites a file the
reader does not have."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from kaiser import docgen
from kaiser.cli.app import app
from kaiser.linux.variants import VARIANTS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Files a reader of the project does not have: the team's shared notes beside the checkout.
PRIVATE = re.compile(
    r"\.\./shared|shared/facts|\bfacts/|\bfacts §|DESIGN\.md"
    r"|\b(?:perf|performance|linux-kpti|x86-paging|successors)\.md"
)
# Paths into the checkout that a doc or help text may cite; each must exist.
GENERATED: dict[str, str] = {}  # each generated block computed once for the whole module
LOCAL_PATH = re.compile(r"(?<![\w./-])((?:docs|tests|src|examples|tools)/[\w./*-]*[\w*/])")


def registered(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the CLI as click sees it: `bench` itself (it runs without a
    subcommand), `bench memory`, ...; a group that needs a subcommand is not a command itself."""
    out: list[tuple[str, ...]] = []
    for name, cmd in sorted(group.commands.items()):
        path = (*prefix, name)
        if hasattr(cmd, "commands"):  # a group (typer's own click, so no isinstance with click's)
            if cmd.invoke_without_command:
                out.append(path)
            out += registered(cmd, path)
        else:
            out.append(path)
    return out


def cli() -> Any:
    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    return group


def readme_commands() -> list[tuple[str, ...]]:
    """The command each row of the README's table names: the words after `kaiser` up to the first
    option, placeholder or bracket."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = []
    for cell in re.findall(r"^\| `kaiser ([^`]*)`", text, flags=re.MULTILINE):
        words = []
        for word in cell.split():
            if not re.fullmatch(r"[a-z][a-z0-9-]*", word):
                break
            words.append(word)
        found.append(tuple(words))
    return found


def test_the_walk_of_the_cli_finds_groups_and_their_commands() -> None:
    """The check below can fail: it sees subcommands and the bench callback, not only top level."""
    paths = registered(cli())
    assert ("bench",) in paths and ("bench", "memory") in paths and ("attack", "meltdown") in paths
    assert ("attack",) not in paths  # needs a subcommand
    assert ("demo",) in paths and len(paths) >= 17


def test_readme_lists_every_command_and_no_other() -> None:
    listed = readme_commands()
    paths = registered(cli())
    missing = [" ".join(p) for p in paths if p not in listed]
    assert not missing, f"README.md's command table lacks: {', '.join(missing)}"
    stale = [" ".join(p) for p in listed if p not in paths]
    assert not stale, f"README.md lists commands that do not exist: {', '.join(stale)}"
    assert len(listed) == len(set(listed)), "a command is listed twice"


def help_text(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, (path, result.output)
    return result.output


def _exists(cited: str) -> bool:
    cited = cited.rstrip("./")
    return any(ROOT.glob(cited)) if "*" in cited else (ROOT / cited).exists()


@pytest.mark.parametrize("path", registered(cli()) + [("attack",)], ids=" ".join)
def test_help_cites_only_files_that_exist(path: tuple[str, ...]) -> None:
    text = help_text(path)
    assert not PRIVATE.search(text), f"kaiser {' '.join(path)} --help cites {PRIVATE.search(text)}"
    for cited in LOCAL_PATH.findall(text):
        assert _exists(cited), f"kaiser {' '.join(path)} --help points to {cited}, which does not exist"


def test_every_command_has_a_one_line_summary() -> None:
    """`kaiser --help` lists each command by the first paragraph of its help; a hard line break
    in it prints as a ragged, half-empty line in the list."""
    broken = []
    for path in registered(cli()):
        cmd = cli()
        for name in path:
            cmd = cmd.commands[name]
        first = (cmd.help or "").strip().split("\n\n")[0]
        if "\n" in first:
            broken.append(" ".join(path))
    assert not broken, f"the help of {', '.join(broken)} starts with a paragraph of more than one line"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_cite_only_files_the_reader_has(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    for n, line in enumerate(text.splitlines(), start=1):
        hit = PRIVATE.search(line)
        assert not hit, f"{doc.relative_to(ROOT)}:{n}: cites {hit.group(0)}, which a reader does not have"
        for cited in LOCAL_PATH.findall(line):
            assert _exists(cited), f"{doc.relative_to(ROOT)}:{n}: {cited} does not exist"


def test_the_private_file_check_can_fail() -> None:
    assert PRIVATE.search("see ../shared/facts/linux-kpti.md §3") and PRIVATE.search("(perf.md §1)")
    assert not PRIVATE.search("arch/x86/mm/pti.c, SDM Vol. 3A §4.10")
    assert LOCAL_PATH.findall("see docs/nothing.md and (tests/linux/data/real/)") == [
        "docs/nothing.md",
        "tests/linux/data/real/",
    ]
    assert not _exists("docs/nothing.md") and _exists("docs/variants.md")


def test_generated_figures_are_what_the_code_prints_today() -> None:
    """docs/variants.md's tables between the generator's markers are exactly what
    `python -m kaiser.docgen` writes now (run it after a model change)."""
    doc = ROOT / "docs" / "variants.md"
    text = doc.read_text(encoding="utf-8")
    assert {m.group("name") for m in docgen.BLOCK.finditer(text)} == set(docgen.GENERATORS)
    assert docgen.regenerate(text, GENERATED) == text, "docs/variants.md is stale: run python -m kaiser.docgen"


def test_regenerating_replaces_a_changed_figure() -> None:
    """The check above can fail: a block whose figures were edited by hand is rewritten."""
    text = "a\n<!-- generated by `python -m kaiser.docgen`: memory -->\n| stale |\n<!-- end generated: memory -->\nb\n"
    new = docgen.regenerate(text, GENERATED)
    assert "| stale |" not in new and "\n| linux | " in new
    assert new.startswith("a\n") and new.endswith("<!-- end generated: memory -->\nb\n")
    with pytest.raises(KeyError):
        docgen.regenerate("<!-- generated by `python -m kaiser.docgen`: nope -->\nx\n<!-- end generated: nope -->")


def test_demo_prints_the_generated_figures() -> None:
    """The demo's sections 2 and 6 print the rows docs/variants.md quotes (one function makes both)."""
    import io

    from rich.console import Console

    from kaiser.cli import demo, output

    out = Console(file=io.StringIO(), width=200, record=True)
    original = demo.console, output.console  # the demo's prose, and print_table's tables
    demo.console = output.console = out
    try:
        demo._isolation_tour(0)
        demo._memory_tour()
    finally:
        demo.console, output.console = original
    printed = [[c.strip() for c in line.split("│") if c.strip()] for line in out.export_text().splitlines()]
    text = (ROOT / "docs" / "variants.md").read_text(encoding="utf-8")
    rows = [
        [c.strip() for c in m.group(1).split("|")]
        for block in docgen.BLOCK.finditer(text)
        if block.group("name") in ("user-view", "memory")  # the designs table: tests/api/test_designs.py
        for m in re.finditer(r"^\| (?!variant |---)(.*) \|$", block.group("body"), flags=re.MULTILINE)
    ]
    assert len(rows) == 2 * len(VARIANTS)  # the user-view and memory tables
    for row in rows:
        assert row in printed, f"kaiser demo does not print {row}"
