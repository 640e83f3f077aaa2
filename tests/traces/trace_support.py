"""A real trace: a tiny C program run under valgrind lackey (with --trace-syscalls) and strace.

The tools must be there (`.ci/run` installs gcc, valgrind and strace when absent): a missing tool
fails the tests that need it, loudly, instead of skipping them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROGRAM = r"""
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
ROUNDS = 20  # ~0.9 M lackey lines, 77 system calls


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: tests/traces need gcc, valgrind and strace (.ci/run installs them)")
    return path


def make_real_trace(directory: Path, rounds: int = ROUNDS) -> tuple[Path, Path]:
    """Compile the program, run it under lackey and under strace; returns (lackey log, strace log)."""
    src = directory / "prog.c"
    src.write_text(PROGRAM)
    exe = directory / "prog"
    subprocess.run([need("gcc"), "-O1", "-static", "-o", str(exe), str(src)], check=True)
    lackey = directory / "prog.lackey"
    strace = directory / "prog.strace"
    subprocess.run(
        [need("valgrind"), "--tool=lackey", "--trace-mem=yes", "--trace-syscalls=yes", f"--log-file={lackey}",
         str(exe), str(rounds)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    subprocess.run(
        [need("strace"), "-f", "-n", "-ttt", "-T", "-o", str(strace), str(exe), str(rounds)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return lackey, strace
