"""`kaiser walk` and the CLI's error handling, run through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app

runner = CliRunner()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed console entry point as a user would."""
    return subprocess.run([sys.executable, "-m", "kaiser.cli.app", *args], capture_output=True, text=True)


def test_user_read_of_the_direct_map_faults_with_a_protection_error() -> None:
    result = runner.invoke(app, ["walk", "0xffff888000001000", "--user", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is False
    assert data["vector"] == 14
    assert data["error_code"] == 0b101  # P (protection) | U/S (user access): SDM §4.7
    assert data["cr2"] == "0xffff888000001000"
    assert [e["level"] for e in data["entries"]] == ["PML4E", "PDPTE"]  # stopped at the 1 GiB leaf


def test_kernel_read_of_the_direct_map_uses_one_gib_page() -> None:
    data = json.loads(runner.invoke(app, ["walk", "0xffff888000001234", "--json"]).output)
    assert data["ok"] is True
    assert data["page_size"] == 1 << 30
    assert data["pa"] == "0x1234"


def test_smap_blocks_a_kernel_write_to_user_data_unless_ac_is_set() -> None:
    blocked = json.loads(runner.invoke(app, ["walk", "0x600000", "--op", "write", "--json"]).output)
    allowed = json.loads(runner.invoke(app, ["walk", "0x600000", "--op", "write", "--ac", "--json"]).output)
    assert blocked["ok"] is False and blocked["error_code"] == 0b011
    assert allowed["ok"] is True


def test_five_level_walk_visits_five_entries() -> None:
    data = json.loads(runner.invoke(app, ["walk", "0x400000", "--la57", "--json"]).output)
    assert [e["level"] for e in data["entries"]] == ["PML5E", "PML4E", "PDPTE", "PDE", "PTE"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["walk", "0xzz"], "address '0xzz' is not a number"),
        (["walk", "0x1000", "--op", "jump"], "--op 'jump' is not one of read, write, fetch"),
        (["walk", str(1 << 64)], "is not a 64-bit value"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_every_subcommand_has_help() -> None:
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for name in ("demo", "walk"):
        sub = runner.invoke(app, [name, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output


@pytest.mark.parametrize("address", ["0x0000800000000000", "0xffff7fffffffffff", "0x00ff000000000000"])
def test_non_canonical_address_is_an_input_error(address: str) -> None:
    """No #GP 'result' with exit 0: the CPU raises #GP before any walk (SDM Vol. 3A §3.3.7.1)."""
    proc = run("walk", address)
    assert proc.returncode == 2
    assert "not canonical" in proc.stderr and address.lower() in proc.stderr.lower()
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_4_level_non_canonical_address_is_canonical_with_la57() -> None:
    result = runner.invoke(app, ["walk", "0x0000800000000000", "--la57", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["vector"] == 14  # walked: not present in the sample space


def test_variant_walk_agrees_with_the_dump_of_the_same_boot() -> None:
    """Every present range of `kaiser dump -v linux` (user tables) starts a successful kernel-mode
    walk of the user PGD; the direct map, absent from the user tables, is present in the kernel
    PGD (PTI), and the walk names the PGD it used."""
    from kaiser.linux.ptdump_parse import parse_ptdump, range_lines

    dump = runner.invoke(app, ["dump", "--variant", "linux", "--seed", "7"]).output
    present = [r for r in range_lines(parse_ptdump(dump)) if r.present and r.start >= 1 << 63]
    for line in present[:: max(1, len(present) // 3)]:
        args = ["walk", hex(line.start), "-v", "linux", "--seed", "7", "--pgd", "user", "--no-smap", "--json"]
        data = json.loads(runner.invoke(app, args).output)
        assert data["ok"] is True, (hex(line.start), data)
        assert "user PGD" in data["space"]
    kernel = runner.invoke(app, ["dump", "--variant", "linux", "--seed", "7", "--table", "current_kernel"]).output
    direct = next(r for r in range_lines(parse_ptdump(kernel)) if r.present and r.section == "Low Kernel Mapping")
    base = ["walk", hex(direct.start), "-v", "linux", "--seed", "7", "--json"]
    assert json.loads(runner.invoke(app, [*base, "--pgd", "kernel"]).output)["ok"] is True
    user = json.loads(runner.invoke(app, [*base, "--pgd", "user"]).output)
    assert user["ok"] is False and user["error_code"] & 1 == 0  # not present (P=0 in the error code)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["walk", "0x1000", "--pgd", "user"], "--pgd needs --variant"),
        (["walk", "0x1000", "-v", "linux", "--pgd", "both"], "--pgd 'both'"),
        (["walk", "0x1000", "-v", "nopti", "--pgd", "user"], "has no user PGD"),
        (["walk", "0x1000", "-v", "bogus"], "--variant"),
    ],
)
def test_bad_walk_options_are_one_line_errors(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert needle in result.output and len(result.output.strip().splitlines()) == 1
