"""`kaiser audit`: exit status 0/1/2 as CI needs it, JSON, real and malformed dump files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app

runner = CliRunner()
SAMPLE01 = Path(__file__).parents[1] / "linux" / "data" / "ptdump-samples" / "01-hansen-2018-current_user-GLB.txt"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point, as CI would run it."""
    return subprocess.run([sys.executable, "-m", "kaiser.cli.app", *args], capture_output=True, text=True)


def dump(tmp_path: Path, *args: str) -> Path:
    path = tmp_path / "dump.txt"
    result = runner.invoke(app, ["dump", *args, "--out", str(path)])
    assert result.exit_code == 0, result.output
    return path


def test_model_audit_passes_and_prints_the_diff() -> None:
    result = runner.invoke(app, ["audit", "--variant", "linux", "--no-kaslr"])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "entry_text" in result.output
    assert "leave out" in result.output and "direct_map" in result.output


def test_model_audit_of_nopti_fails() -> None:
    result = runner.invoke(app, ["audit", "--variant", "nopti", "--json"])
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["exit_status"] == 1
    assert any(f["class"] == "direct_map" and f["breaks_policy"] for f in data["findings"])


def test_json_of_a_model_audit() -> None:
    result = runner.invoke(app, ["audit", "--variant", "linux-4.15", "--la57", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["paging"] == "5-level" and data["policy"]["variant"] == "linux-4.15"
    assert {m["class"] for m in data["mappings"]} >= {"cpu_entry_area", "entry_text", "espfix", "vsyscall"}
    assert data["diff"]["user_half_nx_only"]["ranges"] >= 1


def test_file_audit_of_our_current_user_passes(tmp_path: Path) -> None:
    path = dump(tmp_path, "--seed", "4")
    result = runner.invoke(app, ["audit", str(path)])
    assert result.exit_code == 0, result.output
    assert "tss_percpu" in result.output


def test_file_audit_of_nopti_current_kernel_fails_naming_the_direct_map(tmp_path: Path) -> None:
    path = dump(tmp_path, "--variant", "nopti", "--table", "current_kernel", "--no-kaslr")
    result = runner.invoke(app, ["audit", str(path), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.output)
    starts = {f["start"] for f in data["findings"] if f["class"] == "direct_map"}
    assert "0xffff888000000000" in starts


def test_file_audit_policy_no_pcid_allows_cloned_kernel_text(tmp_path: Path) -> None:
    path = dump(tmp_path, "--no-pcid")
    assert runner.invoke(app, ["audit", str(path), "--no-pcid"]).exit_code == 0
    assert runner.invoke(app, ["audit", str(path)]).exit_code == 1  # with PCID linux clones only the entry PMD


def test_real_sample_through_the_entry_point(tmp_path: Path) -> None:
    lines = [line for line in SAMPLE01.read_text().splitlines() if line.startswith("0x") and line[18:21] == "-0x"]
    path = tmp_path / "current_user"
    path.write_text("\n".join(lines) + "\n")
    excerpt = runner.invoke(app, ["audit", str(path)])  # grep output, not a whole dump
    assert excerpt.exit_code == 2 and "not a whole dump" in excerpt.stderr and "user space" in excerpt.stderr
    ok = run("audit", str(path), "--partial")
    assert ok.returncode == 0, ok.stderr
    strict = run("audit", str(path), "--variant", "linux-4.15", "--partial")
    assert strict.returncode == 1 and "global" in strict.stdout


GOOD = "0xfffffe0000000000-0xfffffe0000002000           8K     ro                 GLB NX pte\n"
NEXT = "0xfffffe0000002000-0xfffffe0000004000           8K     ro                 GLB NX pte\n"


@pytest.mark.parametrize(
    ("content", "lineno", "needle"),
    [
        (GOOD + "0xfffffe0000002000-0xfffffe00000030\n", 2, "truncated"),
        (GOOD + GOOD.replace("0xfffffe0000000000-", "0xfffffe00000g0000-"), 2, "bad hex start address"),
        (GOOD + GOOD.replace("GLB", "GBL"), 2, "unknown flag"),
        (GOOD + NEXT + "\x00\x01\x02junk\n", 3, "binary data"),
        (GOOD + GOOD, 2, "repeats or overlaps line 1"),
        (b"\xff\xfe\x00garbage", 1, "binary data"),
        ("", 1, "empty input"),
    ],
    ids=["truncated", "bad-address", "unknown-flag", "junk", "duplicate", "binary", "empty"],
)
def test_malformed_dumps_are_one_line_errors(tmp_path: Path, content: str | bytes, lineno: int, needle: str) -> None:
    path = tmp_path / "bad.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    result = run("audit", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{path}:{lineno}:" in result.stderr and needle in result.stderr


def test_missing_file_and_unknown_variant_are_one_line_errors(tmp_path: Path) -> None:
    missing = run("audit", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr
    bad = run("audit", "--variant", "kpti")
    assert bad.returncode == 2 and "known: nopti" in bad.stderr


REAL = Path(__file__).parents[1] / "linux" / "data" / "real" / "6.1.0-56-amd64-pti-nokaslr"


@pytest.mark.parametrize("keep", [1, 20, 40, 60, 85])
def test_a_dump_cut_short_does_not_pass_and_names_what_was_never_seen(tmp_path: Path, keep: int) -> None:
    lines = (REAL / "current_user.txt").read_text().splitlines(keepends=True)
    path = tmp_path / "head"
    path.write_text("".join(lines[:keep]))
    result = runner.invoke(app, ["audit", str(path)])
    assert result.exit_code == 2, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert f"{path}: not a whole dump" in result.stderr
    assert "vsyscall" in result.stderr  # the last region of the address space is never reached


def test_a_line_taken_out_of_a_dump_is_a_gap_at_its_place(tmp_path: Path) -> None:
    lines = (REAL / "current_user.txt").read_text().splitlines(keepends=True)
    i = next(n for n, line in enumerate(lines) if line.startswith("0xfffffe0000000000"))
    path = tmp_path / "cut"
    path.write_text("".join(lines[:i] + lines[i + 1 :]))
    result = runner.invoke(app, ["audit", str(path)])
    assert result.exit_code == 2 and f"{path}:{i + 1}: not a whole dump" in result.stderr
    assert "0xfffffe0000000000-0xfffffe0000001fff" in result.stderr


def test_the_table_kind_is_recognised(tmp_path: Path) -> None:
    kernel = runner.invoke(app, ["audit", str(REAL / "kernel.txt")])
    assert kernel.exit_code == 2 and "looks like the kernel table" in kernel.stderr
    assert len(kernel.stderr.strip().splitlines()) == 1
    current_kernel = runner.invoke(app, ["audit", str(REAL / "current_kernel.txt"), "--json"])
    assert current_kernel.exit_code == 1
    assert json.loads(current_kernel.output)["table_kind"] == "current_kernel"
    user = runner.invoke(app, ["audit", str(REAL / "current_user.txt"), "--json"])
    assert user.exit_code == 0 and json.loads(user.output)["table_kind"] == "current_user"
    text = runner.invoke(app, ["audit", str(REAL / "current_kernel.txt")])
    assert "looks like current_kernel" in text.output
