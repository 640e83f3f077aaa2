"""Every table command fits the terminal: at COLUMNS=80 (and 60 where a narrow layout exists),
piped, no line is longer than the width and no address or number is cut, wrapped or folded.

The check is differential: the same command rendered at 400 columns prints every number whole,
so the numbers printed at 80 must be a sub-multiset of those (a folded ``0xffff9fbe|c4201000`` or
``4194|296K`` would print tokens the wide run never prints). Where the command has ``--json``,
every 16-digit address in the narrow text must also be one the JSON names.

Commands run in-process (CliRunner) with the shared consoles set to `output.terminal_width()`
under the test's COLUMNS, i.e. through the same width rule as a real run; one subprocess test
checks that rule itself on a real pipe.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaiser.cli import output
from kaiser.cli.app import app

REAL = Path(__file__).parents[1] / "linux" / "data" / "real"
TOKEN = re.compile(r"(?<!\w)(?:0x[0-9a-fA-F]+|\d[\d,.]*)")  # a number, not the 3 of "CR3"
ADDR16 = re.compile(r"0x[0-9a-f]{16}(?![0-9a-f])")
HEX = re.compile(r"0x[0-9a-fA-F]+")

runner = CliRunner()


@pytest.fixture
def short_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Real dumps copied under short relative names, so titles naming them fit 60 columns."""
    for name in ("6.1.0-56-amd64-pti-kaslr", "6.1.0-56-amd64-pti-nokaslr"):
        shutil.copytree(REAL / name, tmp_path / ("k" if "-kaslr" in name else "n"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def render(args: list[str], width: int, monkeypatch: pytest.MonkeyPatch) -> str:
    """stdout of `kaiser ARGS` with COLUMNS=width, through output.terminal_width()."""
    with monkeypatch.context() as m:
        m.setenv("COLUMNS", str(width))
        m.setattr(output.console, "width", output.terminal_width())
        m.setattr(output.err_console, "width", output.terminal_width())
        result = runner.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code in (0, 1), result.output
    return result.stdout


def json_addresses(data: object) -> Iterator[int]:
    """Every hex number in a JSON document's strings."""
    if isinstance(data, dict):
        for value in data.values():
            yield from json_addresses(value)
    elif isinstance(data, list):
        for value in data:
            yield from json_addresses(value)
    elif isinstance(data, str):
        for token in HEX.findall(data):
            yield int(token, 16)


_WIDE: dict[tuple[str, ...], str] = {}


def _reference(args: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The 400-column rendering (or JSON) of `args`, once per test session (every command here is
    deterministic: seeded boots, seeded cases)."""
    key = tuple(args)
    if key not in _WIDE:
        _WIDE[key] = render(args, 400, monkeypatch)
    return _WIDE[key]


def check_fits(
    args: list[str], width: int, monkeypatch: pytest.MonkeyPatch, *, with_json: bool, volatile: str | None = None
) -> str:
    """`volatile`: a regex of lines left out of the number comparison (wall-clock times)."""
    narrow = render(args, width, monkeypatch)
    assert narrow.strip(), f"{args} printed nothing"
    long_lines = [ln for ln in narrow.splitlines() if len(ln) > width]
    assert not long_lines, f"{args} at {width} columns: {len(long_lines)} lines too long, e.g. {long_lines[0]!r}"
    assert "…" not in narrow, f"{args} at {width} columns truncated a cell"
    wide = _reference(args, monkeypatch)
    if volatile:
        wide = "\n".join(ln for ln in wide.splitlines() if not re.search(volatile, ln))
        narrow_steady = "\n".join(ln for ln in narrow.splitlines() if not re.search(volatile, ln))
    else:
        narrow_steady = narrow
    missing = Counter(TOKEN.findall(narrow_steady)) - Counter(TOKEN.findall(wide))
    assert not missing, f"{args} at {width} columns printed cut numbers: {sorted(missing)[:8]}"
    if with_json:
        known = set(json_addresses(json.loads(_reference([*args, "--json"], monkeypatch))))
        unknown = {a for a in ADDR16.findall(narrow) if int(a, 16) not in known}
        assert not unknown, f"{args}: addresses in the table but not in --json: {sorted(unknown)[:5]}"
    return narrow


# (name, args, has --json); every one has a narrow layout, so each runs at 80 and 60 columns
TABLES = [
    ("audit", ["audit", "--no-kaslr"], True),
    ("audit real", ["audit", "k/current_user.txt"], True),
    ("compare", ["compare", "k/current_user.txt"], True),
    ("run", ["run"], True),
    ("run all", ["run", "--variant", "all"], False),
    ("bench memory", ["bench", "memory"], False),
    ("dump --wide", ["dump", "--wide", "--no-kaslr"], False),
    ("dump --aliases", ["dump", "--aliases", "--no-kaslr", "--table", "current_kernel"], True),
    ("walk", ["walk", "0xfffffe0000001000", "--variant", "linux", "--user"], True),
    ("walk sample", ["walk", "0xffff888000001000", "--user"], True),
    ("diff", ["diff", "n/current_user.txt", "n/current_user-ldt.txt"], True),
    ("verify", ["verify", "--cases", "20"], False),
]
VOLATILE = {"verify": r"\b(time|cases/s)\b", "replay": r"lines, .*events|references/s replayed"}
EVERY_LINE = r"."  # timings in every row (bench engine): only the width and ellipsis checks apply


@pytest.mark.parametrize("width", [80, 60])
@pytest.mark.parametrize(("name", "args", "with_json"), TABLES, ids=[t[0] for t in TABLES])
def test_table_fits_without_cutting_a_number(
    name: str, args: list[str], with_json: bool, width: int, short_paths: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_fits(args, width, monkeypatch, with_json=with_json, volatile=VOLATILE.get(name))


@pytest.mark.slow
@pytest.mark.parametrize("width", [80, 60])
@pytest.mark.parametrize(
    "args",
    [
        ["audit", "--variant", "two-pgd"],
        ["bench", "-n", "5", "--warmup", "0", "--variant", "linux", "--pcid"],
        ["attack", "meltdown", "--variant", "all"],
        ["attack", "kaslr", "--seeds", "1"],
        ["demo", "--verify-cases", "20"],
        ["bench", "engine", "--n-refs", "20000"],
        ["bench", "published"],
    ],
    ids=["audit two-pgd", "bench", "meltdown", "kaslr", "demo", "bench engine", "bench published"],
)
def test_slow_table_fits(args: list[str], width: int, short_paths: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    volatile = EVERY_LINE if args[:2] == ["bench", "engine"] else None
    check_fits(args, width, monkeypatch, with_json=False, volatile=volatile)


def test_replay_fits_and_names_each_variant_once(
    tmp_path: Path, short_paths: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kaiser.traces.record import RecordError, record_trace

    try:
        rec = record_trace(tmp_path / "t", rounds=2, strace=True)
    except RecordError as exc:
        pytest.fail(f"{exc}; needs gcc, valgrind and strace (make test installs them)", pytrace=False)
    assert rec.strace is not None
    args = ["replay", os.path.relpath(rec.lackey), "--syscalls", os.path.relpath(rec.strace), "--pcid"]
    for width in (80, 60):
        text = check_fits(args, width, monkeypatch, with_json=False, volatile=VOLATILE["replay"])
        for name in ("kaiser-rfc", "kaiser-global", "fixed-trampoline"):
            assert len(re.findall(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)) == 1, (name, width, text)


def test_dump_wide_folded_keeps_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """The folded --wide layout holds the same addresses, sizes and rights as the one-line form."""
    full = render(["dump", "--wide", "--no-kaslr"], 400, monkeypatch)
    for width in (80, 60):
        folded = render(["dump", "--wide", "--no-kaslr"], width, monkeypatch)
        assert Counter(TOKEN.findall(folded)) == Counter(TOKEN.findall(full))
        assert Counter(re.findall(r"(?:user|kernel):[r-][w-][x-]", folded)) == Counter(
            re.findall(r"(?:user|kernel):[r-][w-][x-]", full)
        )


@pytest.mark.parametrize(
    ("env", "want"),
    [({}, 80), ({"COLUMNS": "60"}, 60), ({"COLUMNS": "132"}, 132), ({"COLUMNS": "junk"}, 80), ({"COLUMNS": "0"}, 80)],
)
def test_width_rule_on_a_real_pipe(env: dict[str, str], want: int) -> None:
    """Piped (stdout is not a terminal): COLUMNS when it is a positive number, else 80."""
    clean = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    code = "from kaiser.cli.output import console, terminal_width; print(terminal_width(), console.width)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env}, check=True
    )
    assert proc.stdout.split() == [str(want), str(want)]
