"""`kaiser dump`: Linux's debugfs page-table text for a model process."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app
from kaiser.linux.ptdump import parse_ptdump, range_lines, render_records

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


def test_nopti_has_no_current_user() -> None:
    result = runner.invoke(app, ["dump", "--variant", "nopti", "--table", "current_user"])
    assert result.exit_code == 2
    assert "no user page tables" in result.output
    assert runner.invoke(app, ["dump", "--variant", "nopti", "--table", "current_kernel"]).exit_code == 0


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
