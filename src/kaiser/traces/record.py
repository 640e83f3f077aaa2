"""Record a real trace: a small built-in C program, compiled with gcc and run under valgrind
lackey (`--trace-mem=yes --trace-syscalls=yes`) and, optionally, natively under strace.

The program reads /dev/zero into a 1 MiB buffer, strides over the buffer and makes a few cheap
system calls, `rounds` times; each round is ~41,000 lackey references (~0.57 MB of log) and 3
system calls. The tests record 20 rounds; `kaiser bench replay` records `BENCH_ROUNDS`.
A missing tool is a `ToolMissing` naming the tool and the Debian package that provides it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PROGRAM: Final = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
static char buf[1 << 20];
int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 4;
    int fd = open("/dev/zero", O_RDONLY);
    long sum = 0;
    for (int r = 0; r < rounds; r++) {
        read(fd, buf, 65536);
        for (int i = 0; i < (int)sizeof buf; i += 256) sum += buf[i]++;
        getpid();
        getppid();
    }
    write(1, "done\n", 5);
    close(fd);
    return (int)(sum & 1);
}
"""
# 400 rounds: 16.4 M references, 230 MB, 1,217 system calls; valgrind takes ~6.5 s (docs/traces.md).
BENCH_ROUNDS: Final = 400
# The Debian/Ubuntu packages a tool comes from (gcc links statically: libc.a is in libc6-dev).
PACKAGES: Final = {"gcc": "gcc libc6-dev", "valgrind": "valgrind", "strace": "strace"}


class RecordError(RuntimeError):
    """Recording failed (a tool exited with an error): one line naming the tool."""


class ToolMissing(RecordError):
    """A tool the recording needs is not on PATH: one line naming it and its Debian package."""

    def __init__(self, tools: list[str]) -> None:
        self.tools = tools
        packages = " ".join(PACKAGES.get(t, t) for t in tools)
        super().__init__(
            f"{', '.join(tools)} not installed (needed to record a real trace; "
            f"Debian/Ubuntu: apt-get install {packages})"
        )


@dataclass(frozen=True)
class RecordedTrace:
    """The files one recording wrote."""

    lackey: Path  # valgrind lackey's log, system calls included
    strace: Path | None  # strace's log of a native run, when asked for
    rounds: int


def tools(*names: str) -> dict[str, str]:
    """Paths of the named tools; a `ToolMissing` naming every one that is not on PATH."""
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise ToolMissing(missing)
    return {name: path for name, path in found.items() if path is not None}


def _run(cmd: list[str], what: str, hint: str = "") -> None:
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines()
        first = lines[0].strip() if lines else "no message"
        raise RecordError(f"{what} failed (exit status {proc.returncode}): {first}{hint}")


def record_trace(
    directory: str | Path,
    *,
    rounds: int,
    strace: bool = True,
    stage: Callable[[str], None] | None = None,
) -> RecordedTrace:
    """Compile `PROGRAM` into `directory` and run it with `rounds` rounds under valgrind lackey,
    and natively under strace when `strace`. `stage(description)` before each step."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    have = tools("gcc", "valgrind", *(["strace"] if strace else []))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    say = stage or (lambda _: None)
    src = directory / "prog.c"
    src.write_text(PROGRAM)
    exe = directory / "prog"
    say("compiling the program (gcc -O1 -static)")
    _run([have["gcc"], "-O1", "-static", "-o", str(exe), str(src)], "gcc", " (static linking needs libc6-dev)")
    lackey = directory / "prog.lackey"
    say(f"running it under valgrind lackey ({rounds} rounds)")
    _run(
        [have["valgrind"], "--tool=lackey", "--trace-mem=yes", "--trace-syscalls=yes", f"--log-file={lackey}",
         str(exe), str(rounds)],
        "valgrind",
    )  # fmt: skip
    log: Path | None = None
    if strace:
        log = directory / "prog.strace"
        say("running it under strace")
        _run([have["strace"], "-f", "-n", "-ttt", "-T", "-o", str(log), str(exe), str(rounds)], "strace")
    return RecordedTrace(lackey, log, rounds)
