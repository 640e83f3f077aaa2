"""`kaiser diff A B`: exit 0 for equal dumps, 1 when they differ, 2 for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app
from kaiser.linux.ptdump_parse import parse_ptdump_file
from kaiser.linux.ptquery import diff_dumps

REAL = Path(__file__).parents[1] / "linux" / "data" / "real" / "6.1.0-56-amd64-pti-nokaslr"
runner = CliRunner()


def test_a_dump_equals_itself() -> None:
    path = str(REAL / "current_user.txt")
    result = runner.invoke(app, ["diff", path, path])
    assert result.exit_code == 0
    assert "same" in result.output


def test_json_lists_what_the_api_finds_region_by_region() -> None:
    a, b = REAL / "current_user.txt", REAL / "current_user-ldt.txt"
    result = runner.invoke(app, ["diff", str(a), str(b), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.output)
    want = diff_dumps(parse_ptdump_file(a), parse_ptdump_file(b))
    got = [
        (r["region"], c["kind"], int(c["start"], 16), int(c["end"], 16)) for r in data["regions"] for c in r["changes"]
    ]
    assert sorted(got) == sorted((c.region, c.kind, c.start, c.end) for c in want.changes)
    assert data["equal"] is False and data["exit_status"] == 1


def test_model_against_itself_with_another_variant(tmp_path: Path) -> None:
    """linux vs kaiser-rfc user tables: kaiser-rfc's entry area is not global (rights change),
    and the dump text each side printed is what was compared."""
    paths = []
    for variant in ("linux", "kaiser-rfc"):
        out = tmp_path / f"{variant}.txt"
        assert runner.invoke(app, ["dump", "-v", variant, "--no-kaslr", "-o", str(out)]).exit_code == 0
        paths.append(str(out))
    data = json.loads(runner.invoke(app, ["diff", *paths, "--json"]).output)
    cea = next(r for r in data["regions"] if r["region"] == "CPU entry Area")
    assert any(c["kind"] == "rights" and "GLB" in c["before"] and "GLB" not in c["after"] for c in cea["changes"])


@pytest.mark.parametrize("content", [b"", b"\xff\xfe junk", b"not a dump\n"])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    result = runner.invoke(app, ["diff", str(REAL / "current_user.txt"), str(bad)])
    assert result.exit_code == 2, result.output
    assert str(bad) in result.output and len(result.output.strip().splitlines()) == 1
