"""`kaiser bench --variant linux-4.15 --machine c5-2018 [--pcid|--no-pcid] -w syscall-loop --set
reads=N ...  --json` (issue 12's curve): each run and its nopti baseline carry the figures a
reader of the curve keeps, at the top level as well when one run was asked for, and a bad N is a
one-line error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app

runner = CliRunner()
CURVE = ["-v", "linux-4.15", "--machine", "c5-2018", "-w", "syscall-loop", "--set", "syscall=close",
         "--set", "stride=64", "--set", "buffer=100MiB", "-n", "20", "--warmup", "5", "--json"]  # fmt: skip
KEPT = ("overhead_percent", "cycles_per_op", "syscalls_per_second")


def curve_point(reads: int, pcid: str) -> dict[str, Any]:
    result = runner.invoke(app, ["bench", *CURVE, pcid, "--set", f"reads={reads}"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.output)
    return data


def _kept(run: dict[str, Any]) -> None:
    for key in KEPT:
        assert isinstance(run[key], float | int), (key, run)
    for key in ("walks_d", "walks_i"):
        assert isinstance(run["counters"][key], int) and run["counters"][key] >= 0


@pytest.mark.parametrize("pcid", ["--pcid", "--no-pcid"])
def test_every_kept_key_is_where_a_reader_looks(pcid: str) -> None:
    data = curve_point(64, pcid)
    (run,) = data["runs"]
    base = run["baseline"]
    assert base == data["baselines"]["pcid" if pcid == "--pcid" else "nopcid"] == data["baseline"]
    assert base["variant"] == "nopti" and base["pcid"] == run["pcid"] and base["overhead_percent"] == 0.0
    for r in (run, base, data):
        _kept(r)
    assert {k: data[k] for k in (*KEPT, "counters")} == {k: run[k] for k in (*KEPT, "counters")}
    assert run["baseline_cycles_per_op"] == base["cycles_per_op"]
    # 64 loads at 64 B a call sweep one 4 KiB page a call: one data walk a call in both runs
    assert base["counters"]["walks_d"] == data["iterations"] and base["counters"]["walks_i"] == 0


def test_overhead_falls_with_reads_and_pcid_lowers_it() -> None:
    over = {(n, p): curve_point(n, p)["overhead_percent"] for n in (0, 256) for p in ("--pcid", "--no-pcid")}
    for p in ("--pcid", "--no-pcid"):
        assert over[(0, p)] > over[(256, p)] > 0
    for n in (0, 256):
        assert 0 < over[(n, "--pcid")] < over[(n, "--no-pcid")]


def test_more_than_one_run_has_no_top_level_run() -> None:
    result = runner.invoke(app, ["bench", *CURVE, "--set", "reads=0"])
    data = json.loads(result.output)
    assert len(data["runs"]) == 2 and "overhead_percent" not in data and "baseline" not in data
    assert all(r["baseline"]["pcid"] == r["pcid"] for r in data["runs"])


@pytest.mark.parametrize("reads", ["-1", "abc", "1.5", "99999999999", ""])
def test_a_bad_n_is_one_line_exit_2(reads: str) -> None:
    result = runner.invoke(app, ["bench", *CURVE, "--pcid", "--set", f"reads={reads}"])
    assert result.exit_code == 2, result.output
    assert "reads" in result.output and len(result.output.strip().splitlines()) == 1
