"""`kaiser dump`: Linux's debugfs page-table text for a model process."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app
from kaiser.linux.ptdump_parse import parse_ptdump, range_lines, render_records

runner = CliRunner()


@pytest.mark.parametrize("table", ["kernel", "current_kernel", "current_user"])
def test_dump_prints_linux_format_that_round_trips(table: str) -> None:
    result = runner.invoke(app, ["dump", "--table", table, "--no-kaslr"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("---[ User Space ]---\n")
    assert render_records(parse_ptdump(result.output)) == result.output


def test_current_user_shows_the_entry_pmd_and_current_kernel_the_direct_map() -> None:
    user = runner.invoke(app, ["dump", "--no-kaslr"]).output
    assert "0xffffffff81c00000-0xffffffff81e00000           2M     ro         PSE     GLB x  pmd" in user
    kernel = runner.invoke(app, ["dump", "--no-kaslr", "-t", "current_kernel"]).output
    direct = [r for r in range_lines(parse_ptdump(kernel)) if r.present and r.start == 0xFFFF888000000000]
    assert direct and "PSE" in direct[0].flags
    # the process's user pages are in both, the kernel tree's only other user is init_mm
    init = runner.invoke(app, ["dump", "--no-kaslr", "-t", "kernel"]).output
    assert "USR RW" in kernel and "USR RW" not in init


def test_nopti_current_user_is_the_kernel_pgd() -> None:
    """Linux walks the kernel PGD for current_user when PTI is off (dump_pagetables.c), and the file
    is there (CONFIG_PAGE_TABLE_ISOLATION=y): the same text as current_kernel."""
    user = runner.invoke(app, ["dump", "--variant", "nopti", "--table", "current_user"])
    kernel = runner.invoke(app, ["dump", "--variant", "nopti", "--table", "current_kernel"])
    assert user.exit_code == kernel.exit_code == 0
    assert user.output == kernel.output
    isolated = runner.invoke(app, ["dump", "--variant", "linux", "--table", "current_user"])
    assert isolated.exit_code == 0 and isolated.output != runner.invoke(app, ["dump", "-t", "current_kernel"]).output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--variant", "bogus"], "known: nopti"),
        (["--table", "user"], "--table 'user'"),
        (["--dialect", "bsd"], "--dialect 'bsd'"),
        (["--wide", "--dialect", "legacy"], "--wide"),
    ],
)
def test_bad_options_are_one_line_errors(args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["dump", *args])
    assert result.exit_code == 2
    assert needle in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_wide_names_both_cr3_values_and_the_live_one() -> None:
    user = runner.invoke(app, ["dump", "--wide", "--no-kaslr"]).output
    head = user.splitlines()[0]
    assert head.startswith("# CR3 kernel=0x") and "user=0x" in head and head.endswith("(live)")
    kernel = runner.invoke(app, ["dump", "--wide", "--no-kaslr", "-t", "current_kernel"]).output.splitlines()[0]
    assert "(live) user=" in kernel
    assert "user:r-x kernel:---" in runner.invoke(app, ["dump", "--wide", "--no-kaslr"]).output  # text, SMEP


def test_la57_legacy_and_out_file(tmp_path: Path) -> None:
    out = tmp_path / "current_user"
    result = runner.invoke(app, ["dump", "--la57", "--dialect", "legacy", "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert render_records(parse_ptdump(text)) == text
    assert any(r.start >= 0xFF00000000000000 and r.present for r in range_lines(parse_ptdump(text)))


def _json(*args: str) -> dict:
    import json

    result = runner.invoke(app, ["dump", "--no-kaslr", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_json_ranges_are_the_text_lines() -> None:
    text = runner.invoke(app, ["dump", "--no-kaslr"]).output
    lines = range_lines(parse_ptdump(text))
    data = _json()["ranges"]
    assert [(int(r["start"], 16), r["size"], r["present"], r["level"], set(r["flags"])) for r in data] == [
        (ln.start, ln.size, ln.present, ln.level, set(ln.flags)) for ln in lines
    ]


@pytest.mark.parametrize("spec", ["w", "-x", "g,-x", "+u-w", "x,-u", "w x"])
def test_rights_filter_keeps_exactly_the_lines_with_those_flags(spec: str) -> None:
    from kaiser.linux.ptquery import RightsFilter

    full = range_lines(parse_ptdump(runner.invoke(app, ["dump", "--no-kaslr", "-t", "current_kernel"]).output))
    result = runner.invoke(app, ["dump", "--no-kaslr", "-t", "current_kernel", "--rights", spec])
    assert result.exit_code == 0, result.output
    f = RightsFilter.parse(spec)
    want = [(ln.start, ln.end) for ln in full if f.matches(ln)]
    if not want:  # e.g. W+X: nothing (the W+X checker's verdict), said on stderr
        assert result.stdout == "" and "no range line matches" in result.output
        return
    kept = range_lines(parse_ptdump(result.stdout))  # still ptdump text
    assert [(ln.start, ln.end) for ln in kept] == want


def test_has_range_and_region_pick_the_lines_containing_and_overlapping() -> None:
    full = range_lines(parse_ptdump(runner.invoke(app, ["dump", "--no-kaslr"]).output))
    for line in full[:: max(1, len(full) // 5)]:
        probe = line.start + (line.size // 2 & ~0xFFF)
        got = _json("--has", hex(probe))["ranges"]
        assert [int(r["start"], 16) for r in got] == [line.start]
    lo, hi = full[3].start, full[6].end
    got = _json("--range", f"{lo:#x}-{hi:#x}")["ranges"]
    assert [int(r["start"], 16) for r in got] == [ln.start for ln in full[3:7]]
    cea = _json("--region", "CPU entry area")["ranges"]
    assert cea and {r["section"] for r in cea} == {"CPU entry Area"}


def test_aliases_name_the_entry_area_views() -> None:
    """User tables: the entry area's TSS view of per-CPU data in the direct map (the only part of
    the direct map PTI keeps), ESPfix's 65,536 views of one page."""
    aliases = _json("--aliases")["aliases"]
    assert any(a["count"] == 65536 for a in aliases)
    assert any(
        any(v.startswith("0xfffffe") for v in a["vas"]) and any(v.startswith("0xffff888") for v in a["vas"])
        for a in aliases
    )
    text = runner.invoke(app, ["dump", "--no-kaslr", "--aliases"]).output
    assert "65532 more" in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--rights", "rwx"], "--rights"),
        (["--range", "9-1"], "--range"),
        (["--has", "zz"], "--has"),
        (["--region", "Atlantis"], "regions: User Space"),
        (["--wide", "--rights", "w"], "--wide cannot"),
        (["--aliases", "--out", "x.txt"], "--aliases needs --json"),
    ],
)
def test_bad_filters_are_one_line_errors(args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["dump", *args])
    assert result.exit_code == 2
    assert needle in result.output and len(result.output.strip().splitlines()) == 1
