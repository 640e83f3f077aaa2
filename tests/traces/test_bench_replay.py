"""`kaiser bench replay`: throughput on a real trace from the file; speed is reported, not asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app
from kaiser.traces.lackey import LackeyReader
from kaiser.traces.record import ToolMissing, record_trace

runner = CliRunner()
KEYS = {
    "trace", "bytes", "refs", "bad_lines", "events_replayed", "syscalls", "variant", "pcid", "path", "repeats",
    "parse_seconds", "parse_refs_per_second", "parse_mb_per_second", "end_to_end_seconds",
    "end_to_end_refs_per_second", "replay_seconds", "target_refs_per_second", "target_met", "alignment",
    "strace", "recorded", "note", "workers", "cache", "text_end_to_end_seconds",
    "text_end_to_end_refs_per_second", "all_configs", "text_end_to_end_cpu_seconds", "end_to_end_cpu_seconds",
}  # fmt: skip


def reader_refs(trace: Path) -> int:
    reader = LackeyReader(trace)
    for _chunk in reader:
        pass
    return reader.stats.refs


def test_json_on_the_real_trace(real_trace: tuple[Path, Path]) -> None:
    lackey, strace = real_trace
    res = runner.invoke(
        app, ["bench", "replay", str(lackey), "--syscalls", str(strace), "--repeats", "1", "--workers", "2", "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data) == KEYS
    assert data["refs"] == reader_refs(lackey) and data["bytes"] == lackey.stat().st_size
    assert data["end_to_end_refs_per_second"] > 0 and data["parse_refs_per_second"] > 0
    assert data["syscalls"] == 77 and data["alignment"]["matched"] == 77
    assert (data["variant"], data["pcid"], data["path"]) == ("linux", True, "engine")
    assert data["target_refs_per_second"] == 25_000_000 and data["recorded"] is None
    assert data["all_configs"]["counters_equal"] and data["cache"]["used"]


def test_table_on_the_real_trace(real_trace: tuple[Path, Path]) -> None:
    lackey, _ = real_trace
    res = runner.invoke(
        app, ["bench", "replay", str(lackey), "-v", "kaiser-rfc", "--no-pcid", "--repeats", "1", "--one", "--no-cache"]
    )
    assert res.exit_code == 0, res.output
    for text in ("references", "end to end", "refs/s", "kaiser-rfc, PCID off, engine path", "25 M: "):
        assert text in res.output
    assert "1 pass" not in res.output and "off (--no-cache)" in res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80


def test_garbled_trace_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.lackey"
    bad.write_text("I  00400000,2\nnonsense\n")
    res = runner.invoke(app, ["bench", "replay", str(bad)])
    assert res.exit_code == 2 and f"{bad}:2:" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["bench", "replay", str(bad), "--skip-bad", "--repeats", "1", "--one", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["bad_lines"] == 1


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    res = runner.invoke(app, ["bench", "replay", str(tmp_path / "nope.lackey")])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "nope.lackey: trace: no such file" in res.output


def test_recording_options_need_no_trace(real_trace: tuple[Path, Path]) -> None:
    lackey, _ = real_trace
    res = runner.invoke(app, ["bench", "replay", str(lackey), "--rounds", "3"])
    assert res.exit_code == 2 and "without TRACE" in res.output


def test_without_trace_records_the_builtin_program() -> None:
    res = runner.invoke(app, ["bench", "replay", "--rounds", "3", "--one", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["recorded"]["rounds"] == 3 and not data["recorded"]["kept"]
    assert data["refs"] > 100_000 and data["end_to_end_refs_per_second"] > 0
    assert data["syscalls"] == 3 * 3 + 17  # read, getpid, getppid per round; 17 to start and end
    assert not Path(data["trace"]).exists()  # recorded into a temporary directory


def test_missing_tool_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcc, valgrind or strace
    with pytest.raises(ToolMissing, match=r"gcc, valgrind, strace not installed .*apt-get install gcc libc6-dev"):
        record_trace(tmp_path, rounds=1)
    res = runner.invoke(app, ["bench", "replay", "--rounds", "3"])
    assert res.exit_code == 2 and res.output.strip().count("\n") == 0
    assert "valgrind" in res.output and "apt-get install" in res.output
