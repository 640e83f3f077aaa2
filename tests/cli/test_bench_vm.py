"""`kaiser bench --vm/--host-page` and the guest machines: what reaches the JSON.

The held-out curve of issue 12 reads, per run, `overhead_percent`, `cycles_per_op` and
`counters.walks_d/walks_i`, the same of its nopti baseline, and the baseline's
`syscalls_per_second`; `test_c5_2018_curve_keys` runs that command at a small N and reads them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app
from kaiser.x86.nested import HOST_PAGES

runner = CliRunner()
CURVE = ["-v", "linux-4.15", "-w", "syscall-loop", "--set", "syscall=close", "--set", "stride=64"]
CURVE += ["--set", "buffer=100MiB", "-n", "6", "--warmup", "2", "--json"]


def bench(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.output)
    return data


@pytest.mark.parametrize("pcid", ["--pcid", "--no-pcid"])
def test_c5_2018_curve_keys(pcid: str) -> None:
    data = bench(*CURVE, "--machine", "c5-2018", pcid, "--set", "reads=64")
    assert data["vm"] is True and data["host_page"] == data["machine"]["host_page"] == "2m"
    (run,) = data["runs"]
    base = data["baselines"]["pcid" if pcid == "--pcid" else "nopcid"]
    for r in (run, base):
        assert isinstance(r["cycles_per_op"], float) and r["cycles_per_op"] > 0
        assert r["counters"]["walks_d"] > 0 and r["counters"]["walks_i"] >= 0
        assert r["vm"] is True and r["counters"]["host_walks"] > 0
        # each host walk of 2 MiB pages reads 3 EPT entries (PML4E, PDPTE, PDE)
        assert r["counters"]["host_walk_loads"] == 3 * r["counters"]["host_walks"]
    assert base["variant"] == "nopti" and base["syscalls_per_second"] > 0 and base["overhead_percent"] == 0.0
    expected = 100 * (run["cycles_per_op"] - base["cycles_per_op"]) / base["cycles_per_op"]
    assert run["overhead_percent"] == pytest.approx(expected)


def test_no_vm_on_a_guest_machine_walks_natively_and_costs_less() -> None:
    """Over 1 GiB host pages (no guest page is larger: the direct map's 1 GiB pages are the
    largest) a guest's TLB holds what bare metal's does, so the walks are the same; each costs
    more (host walks), so the run does too."""
    vm = bench(*CURVE, "--machine", "c5-2018", "--no-pcid", "--set", "reads=64", "--host-page", "1g")
    native = bench(*CURVE, "--machine", "c5-2018", "--no-pcid", "--set", "reads=64", "--no-vm")
    assert native["vm"] is False and native["host_page"] is None
    a, b = vm["runs"][0], native["runs"][0]
    assert b["counters"]["host_walks"] == b["counters"]["host_walk_loads"] == 0
    assert (a["counters"]["walks_d"], a["counters"]["walks_i"]) == (b["counters"]["walks_d"], b["counters"]["walks_i"])
    assert a["cycles_per_op"] > b["cycles_per_op"]


@pytest.mark.parametrize("host_page", sorted(HOST_PAGES))
def test_host_page_sets_the_host_walk_depth(host_page: str) -> None:
    data = bench("-v", "linux-4.15", "--no-pcid", "-w", "null-syscall", "-n", "4", "--warmup", "1", "--json")
    assert data["vm"] is False
    data = bench(
        "-v", "linux-4.15", "--no-pcid", "-w", "null-syscall", "-n", "4", "--warmup", "1", "--json",
        "--vm", "--host-page", host_page,
    )  # fmt: skip
    c = data["runs"][0]["counters"]
    assert data["host_page"] == host_page and c["host_walks"] > 0
    assert c["host_walk_loads"] == {"4k": 4, "2m": 3, "1g": 2}[host_page] * c["host_walks"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--host-page", "2m"], "--host-page 2m: only for a guest"), (["--vm", "--host-page", "8k"], "--host-page")],
)
def test_bad_vm_options_are_one_line_errors(args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["bench", "-v", "linux-4.15", "-w", "null-syscall", "-n", "2", *args])
    assert result.exit_code == 2
    assert needle in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
