"""`kaiser bench --caches/--machine/--thp`: what reaches the JSON, and that the default is as before."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from kaiser.cli.app import app
from kaiser.x86.engine_cache import CACHE_COUNTER_NAMES

runner = CliRunner()
SMALL = ["-v", "linux-4.15", "--no-pcid", "-n", "8", "--warmup", "2", "--json"]


def bench(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["bench", *SMALL, *args])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.output)
    return data


def test_default_has_no_caches_and_zero_cache_counters() -> None:
    data = bench("-w", "null-syscall")
    assert data["caches"] is None and data["machine"] is None
    for run in data["runs"]:
        assert all(run["counters"][k] == 0 for k in CACHE_COUNTER_NAMES)
        assert "dram_bandwidth" not in run["cycles"]


def test_caches_count_every_reference_and_walk_load() -> None:
    data = bench("-w", "null-syscall", "--caches", "haswell")
    assert data["caches"] == "haswell" and data["params"]["llc_hit"] == 36
    run = data["runs"][0]
    c = run["counters"]
    assert c["walks_d"] + c["walks_i"] > 0  # no PCID: the refills after each flushing CR3 write
    assert c["walk_loads_l1"] + c["walk_loads_l2"] + c["walk_loads_llc"] + c["walk_loads_dram"] == c["walk_loads"]
    assert c["l1d_hits"] + c["l1d_misses"] >= c["walk_loads"]
    assert "dram_bandwidth" in run["cycles"]


def test_machine_picks_caches_clock_and_thp_and_thp_flag_wins() -> None:
    data = bench("-w", "syscall-loop", "--machine", "c5-2018", "--thp", "always")
    assert data["caches"] == "skylake-sp" and data["clock_ghz"] == 3.0
    assert data["machine"]["name"] == "c5-2018" and data["machine"]["guest"]
    assert data["knobs"]["thp"] == "always"
    assert data["baselines"]["nopcid"]["syscalls_per_second"] > 0
    kvm = bench("-w", "null-syscall", "--machine", "garloff-kvm")
    assert kvm["clock_ghz"] == 2.2 and kvm["caches"] == "skylake-sp-6161"


def test_bad_names_are_one_line_errors() -> None:
    for opt, value in (("--caches", "pentium"), ("--machine", "cray-1"), ("--thp", "sometimes")):
        result = runner.invoke(app, ["bench", opt, value])
        assert result.exit_code == 2, result.output
        assert opt in result.output and "Traceback" not in result.output
