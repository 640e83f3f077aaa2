"""The published qualitative results, on counts (reference path), plus knobs and the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app
from kaiser.cost.model import overhead_percent
from kaiser.cost.run import Comparison, run
from kaiser.cost.workloads import WORKLOADS, WorkloadError, get_workload, parse_size

ISOLATING = ["kaiser-rfc", "kaiser-global", "two-pgd", "linux-4.15", "linux", "fixed-trampoline"]
SMALL = {"iterations": 40, "warmup": 10, "path": "reference"}
# The comparisons' runs: 16 measured iterations after 4 of warm-up, enough for the per-syscall and
# per-load ratios they compare (SMALL stays for the fit to Garloff's cycles, an average per call)
SHORT = {"iterations": 16, "warmup": 4, "path": "reference"}


def _cmp(variant: str, pcid: bool, settings: dict[str, str], workload: str = "syscall-loop") -> Comparison:
    base = run("nopti", workload, pcid=pcid, settings=settings, **SHORT)  # type: ignore[arg-type]
    return Comparison(run(variant, workload, pcid=pcid, settings=settings, **SHORT), base)  # type: ignore[arg-type]


def test_parse_size() -> None:
    assert parse_size("100MiB") == 100 << 20 and parse_size("4KiB") == 4096 and parse_size("2M") == 2 << 20
    assert parse_size("4096") == 4096 and parse_size("0x1000") == 4096
    with pytest.raises(WorkloadError):
        parse_size("lots")


def test_bad_knob_lists_valid_keys() -> None:
    with pytest.raises(WorkloadError, match="valid keys: syscall, reads, stride, buffer"):
        get_workload("syscall-loop").resolve({"bogus": "1"})
    with pytest.raises(WorkloadError, match="valid keys"):
        get_workload("syscall-loop").resolve({"buffer": "big"})


def test_nopti_pays_no_cr3_writes() -> None:
    r = run("nopti", "syscall-loop", pcid=False, settings={"reads": "8"}, **SMALL)  # type: ignore[arg-type]
    assert r.counters.cr3_writes == 0 and r.ops.syscalls == SMALL["iterations"]


@pytest.mark.parametrize("variant", ["linux-4.15", "linux"])
def test_overhead_rises_with_syscall_rate_without_pcid(variant: str) -> None:
    """Fewer user loads per syscall over the same 64-page working set = a higher syscall rate:
    more extra walks per user load (refills after each flush). 256 and 64 loads both touch every
    page each call, so they refill alike and the shorter loop has the higher overhead; 16 touch
    a quarter of the pages a call and refill fewer (its overhead against 64's depends on how much
    a refill walk costs beside an overlapped user load, kaiser.cost.model's user_overlap)."""
    per_load, overheads, walks = [], [], []
    for reads in ("256", "64", "16"):
        c = _cmp(variant, False, {"reads": reads, "stride": "4KiB", "buffer": "256KiB"})
        per_load.append(c.extra_walks() / c.result.ops.user_refs)
        overheads.append(c.overhead)
        walks.append(c.extra_walks() / c.result.ops.syscalls)
    assert per_load[0] < per_load[1] < per_load[2]
    assert overheads[0] < overheads[1]
    assert walks[0] == walks[1] > walks[2]
    c = _cmp(variant, False, {"reads": "64"})  # and at the same counts, with less computation
    assert c.overhead_at_work(10_000) < c.overhead_at_work(1_000) < c.overhead


@pytest.mark.parametrize("variant", ISOLATING)
def test_pcid_cuts_the_overhead(variant: str) -> None:
    settings = {"reads": "64", "buffer": "256KiB"}
    on, off = _cmp(variant, True, settings), _cmp(variant, False, settings)
    assert on.extra_walks() < off.extra_walks()
    assert on.result.counters.cr3_noflush == on.result.counters.cr3_writes  # entry and exit: NOFLUSH
    assert off.result.counters.cr3_noflush == 0
    assert 0 < on.overhead < off.overhead


def test_published_getppid_calibration() -> None:
    """Garloff's getppid() 140 / 580 / 900 cycles are the fit targets (docs/cost.md)."""
    s = {"reads": "0"}
    base = run("nopti", "null-syscall", pcid=True, settings=s, **SMALL)  # type: ignore[arg-type]
    on = run("linux-4.15", "null-syscall", pcid=True, settings=s, **SMALL)  # type: ignore[arg-type]
    off = run("linux-4.15", "null-syscall", pcid=False, settings=s, **SMALL)  # type: ignore[arg-type]
    assert base.per_op == pytest.approx(140, rel=0.05)
    assert on.per_op == pytest.approx(580, rel=0.05)
    assert off.per_op == pytest.approx(900, rel=0.05)
    assert overhead_percent(off.per_op, base.per_op) > overhead_percent(on.per_op, base.per_op)


# The default run replays each workload for a few iterations after a warm-up (every event kind
# of the workload, on each variant and PCID setting); the slow run keeps the longer replay.
_LENGTHS = [(4, 2), pytest.param(12, 4, marks=pytest.mark.slow)]


@pytest.mark.parametrize(("iterations", "warmup"), _LENGTHS)
@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_workload_replays(name: str, iterations: int, warmup: int) -> None:
    for variant in ("nopti", "linux"):
        for pcid in (True, False):
            r = run(variant, name, pcid=pcid, iterations=iterations, warmup=warmup, path="reference")
            expected_faults = r.ops.exceptions
            assert r.counters.faults == expected_faults
            assert r.cycles.total > 0


def test_pipe_context_switches_use_noflush_with_pcid() -> None:
    r = run("linux", "pipe", pcid=True, iterations=10, warmup=4, path="reference")
    assert r.ops.context_switches == 20 and r.ops.syscalls == 40
    assert r.counters.cr3_writes == r.counters.cr3_noflush  # both mms keep their ASID slots


def test_page_faults_defer_the_user_flush_with_pcid() -> None:
    # 35 faults on a 34-page region: it is zapped once, a range beyond the 33-page ceiling of
    # tlb_single_page_flush_ceiling, so a full local flush (33 pages or fewer: no deferred flush)
    r = run("linux", "page-faults", pcid=True, settings={"region": "136KiB"}, iterations=35, warmup=0, path="reference")
    assert r.ops.exceptions == 35
    assert r.counters.cr3_writes > r.counters.cr3_noflush  # zap: full local flush + deferred user flush


def test_bench_cli_json_and_errors() -> None:
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "bench",
            "-v",
            "linux",
            "--no-pcid",
            "-n",
            "10",
            "--warmup",
            "2",
            "--path",
            "reference",
            "--json",
            "--set",
            "reads=4",
            "--set",
            "buffer=64KiB",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    (row,) = data["runs"]
    assert row["variant"] == "linux" and row["pcid"] is False
    for key in ("itlb_walks", "dtlb_walks", "extra_walks_vs_nopti", "cr3_writes", "cycles", "overhead_percent"):
        assert key in row["per_syscall"]
    bad = runner.invoke(app, ["bench", "--set", "nope=1"])
    assert bad.exit_code == 2 and "valid keys" in bad.output
    bad = runner.invoke(app, ["bench", "--set", "syscall=frobnicate"])
    assert bad.exit_code == 2
    assert runner.invoke(app, ["bench", "memory", "--json", "-v", "linux"]).exit_code == 0
