"""A sweep on a two-worker local dask cluster, killed midway and resumed: every configuration ends
up present exactly once, and the ones finished before the kill are not recomputed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kaiser.sweep.spec import load_spec
from kaiser.sweep.store import read_csv

EXAMPLE = Path(__file__).parents[2] / "examples" / "sweep-small.toml"
# 3 variants x PCID on/off x 2 settings x 2 seeds = 24 runs of ~0.1-0.5 s each on the reference path
# (40 iterations: enough for every counter and the overhead to be non-zero; the kill still comes midway).
SMALL = """
[sweep]
variants = ["nopti", "linux", "kaiser-rfc"]
pcid = [true, false]
seeds = [0, 1]
iterations = 40
warmup = 10
path = "reference"

[[workload]]
name = "syscall-loop"
knobs = { reads = [0, 32] }
"""


def _sweep(spec: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kaiser.cli.sweep", str(spec), "--out", str(out), "--workers", "2", *extra]


def _results(out: Path) -> dict[str, tuple[int, str]]:
    return {p.stem: (p.stat().st_mtime_ns, p.read_text()) for p in (out / "results").glob("*.json")}


def _gone(pgid: int, timeout: float = 10.0) -> bool:
    """True once no process of group `pgid` (the sweep and its dask workers) is left."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def kill_midway(spec: Path, out: Path, sig: int, at_least: int, timeout: float = 120.0) -> dict[str, tuple[int, str]]:
    """Start the sweep in its own process group; once `at_least` results are on disk, send `sig`
    (SIGKILL to the whole group: a hard crash; SIGTERM to the sweep alone: a polite stop)."""
    log = open(out.parent / f"{out.name}-killed.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(_sweep(spec, out, "--no-plots"), stdout=log, stderr=log, start_new_session=True)
    try:
        end = time.monotonic() + timeout
        while len(list((out / "results").glob("*.json"))) < at_least:
            assert proc.poll() is None, f"the sweep ended before it could be killed: {log.name}"
            assert time.monotonic() < end, "no results appeared"
            time.sleep(0.02)
        if sig == signal.SIGKILL:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.send_signal(sig)
        rc = proc.wait(timeout=60)
        assert rc == (-signal.SIGKILL if sig == signal.SIGKILL else 130), rc
    finally:
        if proc.poll() is None or not _gone(proc.pid, 0.1):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # our own process group only
        log.close()
    assert _gone(proc.pid), "dask workers outlived the killed sweep"
    return _results(out)


def resume_and_check(spec: Path, out: Path, before: dict[str, tuple[int, str]]) -> dict[str, Any]:
    ids = [c.id for c in load_spec(spec).configs]
    assert 0 < len(before) < len(ids), f"killed at {len(before)} of {len(ids)}: not midway"
    done = subprocess.run(_sweep(spec, out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    after = _results(out)
    # Every configuration exactly once, in the files and in the consolidated table.
    assert sorted(after) == sorted(ids)
    rows = read_csv(out / "results.csv")
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert all(r["cycles_per_op"] and r["events"] for r in rows)
    assert all(r["overhead_percent"] for r in rows)  # nopti is in the sweep at every setting
    # What was finished before the kill was kept as it was, not recomputed.
    for cid, (mtime, text) in before.items():
        assert after[cid] == (mtime, text), f"{cid} was rewritten"
    sessions = [json.loads(after[c][1])["session"] for c in ids]
    first = {json.loads(text)["session"] for _, text in before.values()}
    assert len(first) == 1
    recomputed = [s for s in sessions if s not in first]
    assert len(recomputed) == len(ids) - len(before) and len(set(recomputed)) == 1
    log = (out / "sessions.log").read_text().splitlines()
    assert len(log) == 2 and f"done={len(before)} to_run={len(ids) - len(before)}" in log[1]
    assert not [p for p in out.rglob(".tmp-*")]
    assert list((out / "plots").glob("overhead-vs-*.png")) and (out / "plots" / "variant-bars.png").is_file()
    assert f"{len(ids)} of {len(ids)} configurations" in " ".join(done.stdout.split())
    # A third run finds nothing to do and touches nothing.
    again = subprocess.run(_sweep(spec, out, "--no-plots"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _results(out) == after and f"0 computed, {len(ids)} reused" in " ".join(again.stdout.split())
    return {"total": len(ids), "before": len(before), "resumed": len(recomputed)}


def test_kill_and_resume_two_workers(tmp_path: Path) -> None:
    """The kill and resume of the example below on a 24-run spec on the reference path: every
    `make test` runs this one; the 280-configuration example is slow-marked (`make test-slow`)."""
    spec = tmp_path / "small.toml"
    spec.write_text(SMALL)
    out = tmp_path / "out"
    before = kill_midway(spec, out, signal.SIGKILL, at_least=4)
    resume_and_check(spec, out, before)


@pytest.mark.parametrize(
    "sig",
    [pytest.param(signal.SIGTERM, marks=pytest.mark.slow), pytest.param(signal.SIGKILL, marks=pytest.mark.slow)],
    ids=["sigterm", "sigkill"],
)
def test_example_sweep_killed_and_resumed(tmp_path: Path, sig: int) -> None:
    """The >= 100-configuration example (280) on two workers, stopped at about a third and
    resumed, after a hard kill and after a polite stop (slow-marked, 20-45 s each on 2 cores: the
    default suite runs the 24-run spec above the same way)."""
    out = tmp_path / "out"
    total = len(load_spec(EXAMPLE).configs)
    assert total >= 100
    t0 = time.monotonic()
    before = kill_midway(EXAMPLE, out, sig, at_least=total // 3, timeout=600)
    t1 = time.monotonic()
    numbers = resume_and_check(EXAMPLE, out, before)
    print(f"\n{numbers} killed after {t1 - t0:.1f}s, resumed in {time.monotonic() - t1:.1f}s")
