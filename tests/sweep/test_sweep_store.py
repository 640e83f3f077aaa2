"""The output directory: atomic per-configuration files, the consolidated CSV, overhead vs nopti,
a run on an existing dask cluster (left as it was), and failures recorded and rerun."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kaiser.sweep import runner
from kaiser.sweep.runner import run_sweep
from kaiser.sweep.spec import parse_spec
from kaiser.sweep.store import ResultStore, read_csv, table, write_atomic

SPEC = """
[sweep]
variants = ["nopti", "linux"]
pcid = [true, false]
iterations = 5
warmup = 1
path = "reference"

[[workload]]
name = "null-syscall"
"""


def test_write_atomic_leaves_whole_files_only(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    write_atomic(p, "one")
    write_atomic(p, "two")
    assert p.read_text() == "two" and [q.name for q in tmp_path.iterdir()] == ["x.json"]


def test_load_skips_partial_and_foreign_files(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    assert store.load() == {}  # nothing there yet, and nothing created
    store.prepare()
    store.write({"id": "abc", "result": {}})
    (store.results / "def.json").write_text('{"id": "de')  # torn (not written by us)
    (store.results / "ghi.json").write_text('{"id": "xyz"}')  # name and id disagree
    (store.results / ".tmp-jkl.json.123").write_text("{}")
    assert list(store.load()) == ["abc"]
    assert store.clean() == 1 and not list(store.results.glob(".tmp-*"))


def _fake_record(config: Any, total: float) -> dict[str, Any]:
    counters = dict.fromkeys(("stlb_misses_i", "stlb_misses_d", "walks_i", "walks_d"), 1)
    return {
        "id": config.id,
        "result": {
            "path": "reference",
            "events": 1,
            "counters": counters,
            "ops": {"syscalls": 5, "syscalls_by_name": {"getppid": 5}},
            "cycles": {"total": total},
            "cycles_per_op": total / config.iterations,
        },
    }


def test_overhead_against_nopti_at_the_same_settings() -> None:
    spec = parse_spec(SPEC, Path("s.toml"))
    records = {}
    for c in spec.configs:
        total = (100.0 if c.variant == "nopti" else 150.0) * (1 if c.pcid else 2)
        records[c.id] = _fake_record(c, total)
    rows = table(spec.configs, records)
    got = {(r["variant"], r["pcid"]): r["overhead_percent"] for r in rows}
    assert got == {("nopti", True): 0.0, ("linux", True): 50.0, ("nopti", False): 0.0, ("linux", False): 50.0}
    assert all(r["walks"] == 2 and r["stlb_misses"] == 2 for r in rows)
    # Without the nopti run at the same settings there is no overhead to give.
    no_base = {k: v for k, v in records.items() if v and next(c for c in spec.configs if c.id == k).pcid}
    no_base.update({c.id: records[c.id] for c in spec.configs if not c.pcid and c.variant == "linux"})
    rows = table(spec.configs, no_base)
    assert [r["overhead_percent"] for r in rows if not r["pcid"]] == [None]


def test_existing_cluster_is_used_unchanged_and_failures_rerun(tmp_path: Path, monkeypatch: Any) -> None:
    from distributed import Client, LocalCluster

    spec = parse_spec(SPEC, Path("s.toml"))
    store = ResultStore(tmp_path / "out")
    real_run = runner.run

    def flaky(variant: str, *args: Any, **kw: Any) -> Any:
        if variant == "linux" and not kw["pcid"]:
            raise RuntimeError("model bug")
        return real_run(variant, *args, **kw)

    monkeypatch.setattr(runner, "run", flaky)
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None) as cluster:
        before = set(cluster.scheduler.workers)
        state = run_sweep(spec, store, scheduler=cluster.scheduler_address)
        assert state.ran == 3 and [e for _, e in state.failed] == ["RuntimeError: model bug"]
        assert state.workers == 1
        failed_id = state.failed[0][0]
        assert json.loads((store.failed / f"{failed_id}.json").read_text())["error"] == "RuntimeError: model bug"
        monkeypatch.setattr(runner, "run", real_run)
        again = run_sweep(spec, store, scheduler=cluster.scheduler_address)
        assert (again.done_before, again.ran, again.failed) == (3, 1, [])
        assert not (store.failed / f"{failed_id}.json").exists()
        assert set(cluster.scheduler.workers) == before  # the cluster is as it was
        with Client(cluster.scheduler_address) as c:
            assert c.submit(sum, [1, 2]).result() == 3
    store.write_csv(table(spec.configs, store.load()))
    rows = read_csv(store.out / "results.csv")
    assert sorted(r["id"] for r in rows) == sorted(c.id for c in spec.configs)
    assert {r["path"] for r in rows} == {"reference"}
    linux = [float(r["overhead_percent"]) for r in rows if r["variant"] == "linux"]
    assert len(linux) == 2 and all(v > 0 for v in linux)


def test_unreachable_scheduler_raises(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(runner, "CONNECT_TIMEOUT", "1s")
    spec = parse_spec(SPEC, Path("s.toml"))
    with pytest.raises(OSError):
        run_sweep(spec, ResultStore(tmp_path), scheduler="tcp://127.0.0.1:9")


# ---- checksums: a result file is reused only when it is what was written ---------------------------
def _spoil(path: Path, how: str) -> None:
    record = json.loads(path.read_text())
    if how == "cycles x10":
        record["result"]["cycles"]["total"] *= 10
        path.write_text(json.dumps(record, indent=1))
    elif how == "emptied":
        path.write_text("")
    elif how == "torn":
        path.write_text(path.read_text()[: len(path.read_text()) // 2])
    elif how == "no checksum":
        del record["sha256"]
        path.write_text(json.dumps(record))
    elif how == "binary":
        path.write_bytes(b"\xff\xfe" + path.read_bytes())
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)


SPOILS = {
    "cycles x10": "checksum mismatch",
    "emptied": "empty file",
    "torn": "not JSON",
    "no checksum": "no checksum",
    "binary": "not JSON",
    "fifo": "is a FIFO",
}


@pytest.mark.parametrize("how", list(SPOILS))
def test_a_spoiled_result_file_is_rejected_with_the_reason(tmp_path: Path, how: str) -> None:
    store = ResultStore(tmp_path)
    store.prepare()
    record = {"id": "abc", "result": {"cycles": {"total": 1234.5}}, "knobs": {"2": 1, "10": 2}}
    path = store.write(record)
    assert store.load() == {"abc": {**record, "sha256": json.loads(path.read_text())["sha256"]}}
    assert store.rejected == {}
    _spoil(path, how)
    assert store.load() == {}
    assert SPOILS[how] in store.rejected["abc"]


def test_resume_recomputes_spoiled_results_and_says_why(tmp_path: Path) -> None:
    from distributed import LocalCluster
    from typer.testing import CliRunner

    from kaiser.cli.app import app

    spec_file = tmp_path / "s.toml"
    spec_file.write_text(SPEC)
    out = tmp_path / "out"
    args = ["sweep", str(spec_file), "--out", str(out), "--no-plots", "--no-progress"]
    with LocalCluster(
        n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None, protocol="tcp"
    ) as cluster:
        args += ["--scheduler", cluster.scheduler_address]
        first = CliRunner().invoke(app, args)
        assert first.exit_code == 0, first.output
        files = sorted((out / "results").glob("*.json"))
        truth = {p.name: json.loads(p.read_text()) for p in files}
        spoiled = dict(zip((p.name for p in files), ["cycles x10", "emptied", "torn"], strict=False))
        for name, how in spoiled.items():
            _spoil(out / "results" / name, how)
        again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    text = " ".join(again.output.split())
    for name, how in spoiled.items():
        assert f"{name}: {SPOILS[how]}" in text.replace(f"{out / 'results'}/", "")
    assert "1 reused, 3 recomputed because their file failed its check" in text
    for p in files:  # recomputed to the same numbers, checksums good again
        assert json.loads(p.read_text())["result"] == truth[p.name]["result"]
    assert ResultStore(out).load().keys() == {p.stem for p in files}


def test_a_sessions_log_that_is_not_a_regular_file_is_refused_not_blocked_on(tmp_path: Path) -> None:
    from kaiser.inputs import InputError

    store = ResultStore(tmp_path)
    store.log_session("s1", 0, 1, Path("spec.toml"))  # created as a regular file
    assert (tmp_path / "sessions.log").read_text().startswith("s1 ")
    (tmp_path / "sessions.log").unlink()
    os.mkfifo(tmp_path / "sessions.log")
    with pytest.raises(InputError, match="sessions.log: sessions.log: is a FIFO"):
        store.log_session("s2", 0, 1, Path("spec.toml"))
