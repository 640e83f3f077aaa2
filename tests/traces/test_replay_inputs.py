"""`kaiser replay` and `kaiser bench replay` on traces that are not traces: one line, exit 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app

runner = CliRunner()
HEADER = "==42== Lackey, an example Valgrind tool\n==42== Command: ./t\n"
BODY = "I  004014f0,2\n L 1fff000780,8\n S 1fff000778,8\n M 1fff000598,8\n"


def replay(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["replay", *args, "--variant", "linux", "--pcid", "--path", "reference"])
    return result.exit_code, result.output


def one_line_error(code: int, output: str, needle: str) -> None:
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("kaiser: warning:")]
    assert "Traceback" not in output and len(lines) == 1 and lines[0].startswith("kaiser: error: "), output
    assert needle in output, output


@pytest.mark.parametrize(
    ("content", "args", "needle"),
    [
        ("", (), "no memory references in 0 line(s)"),
        (HEADER, (), "no memory references in 2 line(s)"),
        (HEADER + "garbage\n" * 3, ("--skip-bad",), "3 bad line(s) skipped and not one memory reference left"),
        (HEADER + BODY + " L ffffffff81000000,8\n", (), ":7: address above the user address space"),
        (HEADER + BODY + " S 7ffffffff000,8\n", (), ":7: address above the user address space"),
    ],
    ids=["empty", "header-only", "all-bad", "kernel-address", "guard-page"],
)
def test_a_trace_with_nothing_to_price_is_an_input_error(
    tmp_path: Path, content: str, args: tuple[str, ...], needle: str
) -> None:
    trace = tmp_path / "t.lackey"
    trace.write_text(content)
    code, output = replay(str(trace), *args)
    one_line_error(code, output, str(trace))
    assert needle in output.replace("\n", "")


@pytest.mark.parametrize("special", ["/proc/self/mem", "/dev/zero", "dir", "fifo"])
@pytest.mark.parametrize("command", ["replay", "bench"])
def test_special_files_are_refused_before_reading(tmp_path: Path, special: str, command: str) -> None:
    path = special
    if special == "dir":
        path = str(tmp_path)
    elif special == "fifo":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
    if command == "replay":
        code, output = replay(path)
    else:
        result = runner.invoke(app, ["bench", "replay", path])
        code, output = result.exit_code, result.output
    one_line_error(code, output, f"{path}: trace: ")
    good = tmp_path / "good.lackey"
    good.write_text(HEADER + BODY)
    code, output = replay(str(good), "--syscalls", path)
    one_line_error(code, output, f"{path}: --syscalls strace log: ")
