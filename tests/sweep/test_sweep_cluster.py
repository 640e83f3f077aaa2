"""A sweep on a cluster started the way a user scales out: a `dask scheduler` process and
`dask worker` processes started separately (here on 127.0.0.1, as they would be on other
machines: each worker in its own empty working directory, HOME and TMPDIR, sharing nothing with
the client but the scheduler's address), then `kaiser sweep --scheduler tcp://127.0.0.1:PORT`.

Checked: the results come back to the client's store (nothing of the sweep is written on the
workers' side), and a worker SIGKILLed while it holds tasks loses no result: the sweep completes
with every configuration present exactly once, each file's checksum verifying, the killed
worker's unfinished tasks computed by the other worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kaiser.sweep.spec import load_spec
from kaiser.sweep.store import ResultStore, read_csv

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
WAIT = 60.0  # CHOSEN: bound on every wait (scheduler up, workers joined, results appearing)

# 3 variants x PCID on/off x 2 settings x 2 seeds = 24 runs of ~0.2-0.5 s on the reference path.
SMALL = """
[sweep]
variants = ["nopti", "linux", "kaiser-rfc"]
pcid = [true, false]
seeds = [0, 1]
iterations = 60
warmup = 10
path = "reference"

[[workload]]
name = "syscall-loop"
knobs = { reads = [0, 32] }
"""

# 3 variants x PCID x 4 settings x 3 seeds = 72 runs.
BIG = """
[sweep]
variants = ["nopti", "linux", "kaiser-rfc"]
pcid = [true, false]
seeds = [0, 1, 2]
iterations = 100
warmup = 20
path = "reference"

[[workload]]
name = "syscall-loop"
knobs = { reads = [0, 16, 64, 256] }
"""


def free_port() -> int:
    """A port nobody listens on now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """Processes of a hand-started dask cluster; every one in its own process group."""

    root: Path
    address: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        home = self.root / name
        home.mkdir()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(home)}
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 (the process holds it; closed on stop)
        try:
            proc = subprocess.Popen(argv, cwd=home, env=env, stdout=log, stderr=log, start_new_session=True)
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def start_scheduler(self) -> None:
        port = free_port()
        self.address = f"tcp://{HOST}:{port}"
        self._start(
            "scheduler", [str(BIN / "dask"), "scheduler", "--host", HOST, "--port", str(port), "--no-dashboard"]
        )
        end = time.monotonic() + WAIT
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
                return
            assert self.procs["scheduler"].poll() is None, self.log("scheduler")
            assert time.monotonic() < end, "the scheduler did not start listening"
            time.sleep(0.1)

    def start_worker(self, name: str) -> int:
        """A worker without a nanny (killing it is like losing its machine: nothing restarts it)."""
        home = self.root / name
        argv = [str(BIN / "dask"), "worker", self.address, "--name", name, "--host", HOST, "--nthreads", "1"]
        argv += ["--no-nanny", "--no-dashboard", "--local-directory", str(home / "dask"), "--death-timeout", "60"]
        return self._start(name, argv).pid

    def wait_for_workers(self, n: int) -> dict[str, str]:
        """Worker name -> address once exactly `n` workers are connected."""
        from distributed import Client

        with Client(self.address, timeout="20s") as client:
            client.wait_for_workers(n, timeout=WAIT)
            return {w["name"]: a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}

    def processing(self, address: str) -> list[str]:
        """Keys of the tasks the scheduler has assigned to the worker at `address` right now."""
        from distributed import Client

        with Client(self.address, timeout="20s") as client:
            return [str(k) for k in client.processing(workers=[address]).get(address, ())]

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # our own group only
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster")
    c.root.mkdir()
    try:
        c.start_scheduler()
        yield c
    finally:
        c.stop()


def _records(out: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "results").glob("*.json")}


def sweep_and_kill_a_worker(cluster: Cluster, tmp_path: Path, spec_text: str, *, replacement: bool) -> None:
    pids = {name: cluster.start_worker(name) for name in ("w1", "w2")}
    names = cluster.wait_for_workers(2)
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    (client_dir / "spec.toml").write_text(spec_text)
    ids = [c.id for c in load_spec(client_dir / "spec.toml").configs]
    argv = [str(BIN / "kaiser"), "sweep", "spec.toml", "--scheduler", cluster.address, "--out", "out"]
    log = open(tmp_path / "sweep.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [*argv, "--no-progress", "--no-plots"], cwd=client_dir, stdout=log, stderr=log, start_new_session=True
    )
    out = client_dir / "out"
    try:
        # Once w1 has delivered a result and still holds tasks, SIGKILL it.
        end = time.monotonic() + WAIT
        while True:
            assert proc.poll() is None, (tmp_path / "sweep.log").read_text()
            assert time.monotonic() < end, "no result of w1 appeared"
            by_w1 = [r for r in _records(out).values() if r["worker"].endswith(f":{pids['w1']}")]
            held = cluster.processing(names["w1"]) if len(by_w1) >= 2 else []
            if held:
                break
            time.sleep(0.05)
        os.kill(pids["w1"], signal.SIGKILL)
        killed_at = time.time()
        assert cluster.procs["w1"].wait(timeout=10) == -signal.SIGKILL
        before = _records(out)
        if replacement:
            pids["w3"] = cluster.start_worker("w3")
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
    text = (tmp_path / "sweep.log").read_text()
    assert rc == 0, text
    assert f"{len(ids)} of {len(ids)} configurations" in " ".join(text.split())
    assert 0 < len(before) < len(ids), f"killed at {len(before)} of {len(ids)}: not midway"

    # Every configuration exactly once, every file's checksum verifying, in the table too.
    store = ResultStore(out)
    records = store.load()
    assert store.rejected == {} and sorted(records) == sorted(ids)
    assert sorted(p.stem for p in (out / "results").glob("*.json")) == sorted(ids)
    assert sorted(r["id"] for r in read_csv(out / "results.csv")) == sorted(ids)
    assert not (out / "failed").exists() or not list((out / "failed").iterdir())
    assert len({r["session"] for r in records.values()}) == 1

    # Computed on the workers (their pids), written by the client: the killed worker's tasks that
    # were unfinished at the kill were computed elsewhere; w1 computed nothing after its kill.
    where = {cid: int(r["worker"].rsplit(":", 1)[1]) for cid, r in records.items()}
    assert set(where.values()) <= set(pids.values()) and pids["w1"] in where.values()
    by_w1 = [r for r in records.values() if where[r["id"]] == pids["w1"]]
    assert all(r["started_at"] + r["elapsed_s"] < killed_at for r in by_w1)
    lost = [cid for cid in ids if any(cid in key for key in held) and where[cid] != pids["w1"]]
    assert lost, f"w1 held {held} but all finished before the kill"
    if replacement:
        assert pids["w3"] in {where[cid] for cid in set(ids) - set(before)}

    # Nothing of the sweep on the workers' side: no result, no CSV, no `out` under their dirs.
    for name in pids:
        found = [p for p in (cluster.root / name).rglob("*") if p.suffix in (".json", ".csv") or p.name == "out"]
        assert not found, f"{name} wrote {found}"
    print(f"\n{len(ids)} configurations; w1 killed at {len(before)} holding {len(held)} tasks; {len(lost)} recomputed")


def test_hand_started_cluster_worker_killed(cluster: Cluster, tmp_path: Path) -> None:
    sweep_and_kill_a_worker(cluster, tmp_path, SMALL, replacement=False)


@pytest.mark.slow
def test_hand_started_cluster_worker_killed_and_replaced(cluster: Cluster, tmp_path: Path) -> None:
    """72 configurations; after the kill a new worker joins the running sweep and takes tasks."""
    sweep_and_kill_a_worker(cluster, tmp_path, BIG, replacement=True)
