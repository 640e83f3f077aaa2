"""`kaiser recording` and `kaiser record` on bad input: one line, exit 2, no traceback; and a
short real recording end to end (slow: it boots Debian's kernel under QEMU)."""

from __future__ import annotations

import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app
from kaiser.record.format import read_header
from kaiser.record.recorder import data_dir, shipped_name

SHIPPED = data_dir() / shipped_name("6.1", True, "getppid")


def kaiser(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from kaiser.cli.app import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_truncated_recording(tmp_path: Path) -> None:
    bad = tmp_path / "cut.krec"
    data = SHIPPED.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    one_line_error(kaiser("recording", "info", str(bad)), str(bad), "byte ", "truncated")


def test_garbled_recording(tmp_path: Path) -> None:
    raw = bytearray(lzma.decompress(SHIPPED.read_bytes()))
    header_len = int.from_bytes(raw[10:14], "little")
    raw[14 + header_len] = ord("Z")  # the first record's tag
    bad = tmp_path / "garbled.krec"
    bad.write_bytes(lzma.compress(bytes(raw), format=lzma.FORMAT_XZ))
    res = CliRunner().invoke(app, ["recording", "info", str(bad), "--json"])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
    assert f"byte {14 + header_len}" in res.stderr and "record tag" in res.stderr


def test_not_a_recording(tmp_path: Path) -> None:
    bad = tmp_path / "text.krec"
    bad.write_text("hello\n")
    for args, needles in (
        ([str(bad)], (str(bad), "byte ")),
        ([str(tmp_path / "absent.krec")], ("no such file",)),
        ([str(tmp_path)], ("directory",)),
    ):
        res = CliRunner().invoke(app, ["recording", "info", *args])
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
        assert all(n in res.stderr for n in needles), res.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--workload", "nope"], "--workload"),
        (["--kernel", "5.10"], "--kernel"),
        (["--pti", "maybe"], "--pti"),
        (["--calls", "0"], "--calls"),
        (["--all", "--", "/bin/true"], "--all"),
    ],
)
def test_record_refuses_bad_options(args: list[str], needle: str) -> None:
    res = CliRunner().invoke(app, ["record", *args])
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_record_refuses_a_missing_program(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["record", "--", str(tmp_path / "absent")])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
    assert "PROGRAM" in res.stderr and "no such file" in res.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None and not Path("/usr/bin/apt-get").exists(), reason="")
def test_short_real_recording_end_to_end(tmp_path: Path) -> None:
    """Boot Debian 6.1 with pti=on, record 50 close(999) calls, read the recording back."""
    out = tmp_path / "close.krec"
    res = kaiser("record", "--workload", "close", "--calls", "50", "--out", str(out), timeout=900)
    assert res.returncode == 0, res.stderr
    info = json.loads(kaiser("recording", "info", str(out), "--json").stdout)
    assert info["calls"] == 50 and info["pti"] and "pti=on" in info["cmdline"]
    close = info["transitions"]["close"]
    assert close["calls"] >= 49 and close["syscall_nr"] == 3
    assert close["median"]["cr3_writes"] == 2
    shipped = json.loads(kaiser("recording", "info", shipped_name("6.1", True, "close"), "--json").stdout)
    # the same kernel package, the same path: the same pages as the shipped recording
    if shipped["kernel_release"] == info["kernel_release"]:
        for key in ("code_pages_4k", "code_pages_2m", "kernel_instructions"):
            assert close["median"][key] == shipped["transitions"]["close"]["median"][key]


@pytest.mark.slow
def test_record_a_static_program(tmp_path: Path) -> None:
    """`kaiser record -- PROGRAM ARGS`: the program's own syscalls are in the recording, by name."""
    src = tmp_path / "p.c"
    src.write_text(
        "#include <unistd.h>\n"
        "int main(int argc, char **argv) { for (int i = 0; i < 25; i++) getppid(); return argc == 3 ? 0 : 1; }\n"
    )
    exe = tmp_path / "p"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(exe), str(src)], check=True)
    out = tmp_path / "p.krec"
    res = kaiser("record", "--out", str(out), "--", str(exe), "a", "b", timeout=900)
    assert res.returncode == 0, res.stderr
    info = json.loads(kaiser("recording", "info", str(out), "--json").stdout)
    assert info["workload"] == "program a b"
    assert info["transitions"]["getppid"]["calls"] == 25
    # its exit status says it got its two arguments; its exit never returns to user mode, so
    # that transition ends in init: a context switch
    assert read_header(out)["program_status"] == 0
    assert "context_switch" in info["transitions"]
