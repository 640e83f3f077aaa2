"""strace logs: the -f/-ttt/-tt/-r/-n/-T forms, unfinished/resumed, signals, exits, bad lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaiser.traces.strace import StraceError, read_strace

THREADED = """\
6931  1795573792.892393 pipe2([3, 4], 0) = 0 <0.000010>
6932  1795573792.892442 clock_nanosleep(CLOCK_REALTIME, 0, {tv_sec=0, tv_nsec=20000000},  <unfinished ...>
6931  1795573792.893308 read(3,  <unfinished ...>
6933  1795573792.903732 write(4, "x", 1) = 1
6931  1795573792.903776 <... read resumed>"x", 1) = 1
6933  1795573792.903789 exit_group(3)   = ?
6933  1795573792.903879 +++ exited with 3 +++
6931  1795573792.903888 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=6933} ---
6932  1795573792.913259 <... clock_nanosleep resumed>NULL) = 0
6931  1795573792.913441 openat(AT_FDCWD, "/nope", O_RDONLY) = -1 ENOENT (No such file or directory)
6931  1795573792.913565 +++ killed by SIGUSR1 +++
"""


def write(tmp_path: Path, text: str | bytes) -> Path:
    p = tmp_path / "s.strace"
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def test_unfinished_and_resumed_merge_in_entry_order(tmp_path: Path) -> None:
    log = read_strace(write(tmp_path, THREADED))
    assert [c.name for c in log.calls] == ["pipe2", "clock_nanosleep", "read", "write", "exit_group", "openat"]
    read = log.calls[2]
    assert (read.pid, read.line, read.end_line, read.returned) == (6931, 3, 5, 1)
    assert read.args == '3, "x", 1'
    assert log.calls[1].ret == "0" and log.calls[1].end_line == 9
    assert log.calls[0].duration == pytest.approx(1e-5)
    assert log.calls[5].returned == -1
    assert [s.signal for s in log.signals] == ["SIGCHLD"]
    assert [(e.pid, e.code, e.signal) for e in log.exits] == [(6933, 3, None), (6931, None, "SIGUSR1")]
    assert log.calls[0].time == pytest.approx(1795573792.892393)


def test_time_forms_and_numbers(tmp_path: Path) -> None:
    rel = "123       0.000000 [  39] getpid() = 123\n123       0.000250 [ 110] getppid() = 1\n"
    log = read_strace(write(tmp_path, rel))
    assert [c.time for c in log.calls] == [0.0, pytest.approx(0.00025)]
    assert [c.nr for c in log.calls] == [39, 110]
    tod = "02:29:52.957692 close(3)                = 0\n02:29:52.957723 exit_group(0)           = ?\n"
    log = read_strace(write(tmp_path, tod))
    assert log.calls[1].time - log.calls[0].time == pytest.approx(31e-6, abs=1e-9)
    bare = "getpid() = 1\n+++ exited with 0 +++\n"
    log = read_strace(write(tmp_path, bare))
    assert log.calls[0].pid is None and log.calls[0].time is None and log.exits[0].code == 0


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("getpid() = 1\nget", 2),  # truncated
        ("getpid() = 1\nthis is not strace\n", 2),
        ("getpid() = 1\n<... read resumed>) = 1\n", 2),  # resumed without a start
        (b"getpid() = 1\n\xff\xfe\x00junk\n", 2),
    ],
)
def test_bad_lines(tmp_path: Path, text: str | bytes, line: int) -> None:
    p = write(tmp_path, text)
    with pytest.raises(StraceError, match=rf"^{p}:{line}: "):
        read_strace(p)
    log = read_strace(p, skip_bad=True)
    assert log.bad_lines == 1 and [c.name for c in log.calls] == ["getpid"]


def test_empty_log(tmp_path: Path) -> None:
    log = read_strace(write(tmp_path, ""))
    assert log.calls == [] and log.lines == 0
