"""One QEMU boot of a real kernel with our plugin and guest init: the initramfs, the command
line, a bounded run with progress, and the files it leaves (raw log, info channel, console)."""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from kaiser.record import initramfs

# The machine (facts/recording.md, tools/realdumps/): an Intel model so the kernel takes the
# CPU as Meltdown-affected and pti=auto would enable PTI; TCG (plugins run only under TCG); one
# CPU, so the plugin's single-threaded log is the whole machine's.
QEMU_CPU: Final = "Haswell"
MEMORY: Final = "512M"
DEBUGCON_PORT: Final = 0xE9
# Character devices the initramfs needs (Documentation/admin-guide/devices.txt: 5,1 console).
CONSOLE: Final = (5, 1)
PR_SET_PDEATHSIG: Final = 1  # include/uapi/linux/prctl.h


class BootError(RuntimeError):
    """QEMU failed, timed out, or the guest did not finish: one line with the console's tail."""


@dataclass(frozen=True)
class Job:
    """One workload the guest init runs between markers (id 0..15)."""

    id: int
    name: str
    calls: int
    arg: int = 0
    argv: tuple[str, ...] = ()

    def conf_line(self) -> str:
        return "\t".join([str(self.id), self.name, str(self.calls), str(self.arg), *self.argv]) + "\n"


@dataclass(frozen=True)
class BootFiles:
    """The files one QEMU boot writes (plugin log, info channel, console) and its command line."""

    raw: Path
    info: Path
    console: Path
    qemu: list[str]
    seconds: float


def make_initramfs(path: Path, init: Path, jobs: list[Job], program: Path | None = None) -> None:
    """The newc archive: /init, /kaiser.conf, /dev/console and, for `program`, /prog."""
    entries = [
        initramfs.directory("dev"),
        initramfs.chardev("dev/console", *CONSOLE),
        initramfs.directory("proc"),
        initramfs.file("init", init.read_bytes(), 0o755),
        initramfs.file("kaiser.conf", "".join(j.conf_line() for j in jobs).encode()),
    ]
    if program is not None:
        entries.append(initramfs.file("prog", program.read_bytes(), 0o755))
    path.write_bytes(initramfs.newc(entries))


def boot(
    work: Path,
    kernel: Path,
    initrd: Path,
    plugin: Path,
    append: str,
    *,
    phys: bool,
    jobs: list[Job],
    timeout: float,
    say: Callable[[str], None],
) -> BootFiles:
    """Boot, wait for the guest to power off (at most `timeout` seconds), say each job done."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise BootError("qemu-system-x86_64 not found (Debian: apt-get install qemu-system-x86)")
    raw, info, console = work / "plugin.raw", work / "info.txt", work / "console.log"
    plugin_arg = f"{plugin},out={raw}" + (",phys=on" if phys else "")
    cmd = [
        qemu, "-accel", "tcg", "-cpu", QEMU_CPU, "-smp", "1", "-m", MEMORY,
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
        "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{console}",
        "-debugcon", f"file:{info}", "-global", f"isa-debugcon.iobase={DEBUGCON_PORT:#x}",
        "-plugin", plugin_arg,
    ]  # fmt: skip
    t0 = time.monotonic()
    log = (work / "qemu.log").open("w")
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
    )
    said = 0
    try:
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                proc.kill()
                proc.wait()
                raise BootError(f"QEMU timed out after {timeout:.0f} s; console: {_tail(console)}")
            said = _progress(info, jobs, said, t0, say)
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    _progress(info, jobs, said, t0, say)
    seconds = time.monotonic() - t0
    if proc.returncode:
        raise BootError(f"QEMU exited {proc.returncode}: {_tail(work / 'qemu.log')}")
    text = info.read_text(errors="replace") if info.exists() else ""
    if "@@done 1" not in text:
        raise BootError(f"the guest did not finish its jobs; console: {_tail(console)}")
    shown = [str(c).replace(str(work) + "/", "") for c in cmd]
    return BootFiles(raw, info, console, shown, seconds)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the recorder dies (prctl PR_SET_PDEATHSIG, man 2
    prctl), so a killed `kaiser record` leaves no QEMU burning a core until its timeout."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _progress(info: Path, jobs: list[Job], said: int, t0: float, say: Callable[[str], None]) -> int:
    if not info.exists():
        return said
    with info.open("rb") as f:
        done = f.read().count(b"\n@@job-done ")
    for job in jobs[said:done]:
        say(f"record: {job.name} recorded ({time.monotonic() - t0:.0f} s)")
    return max(said, done)


def _tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(none)"
    lines = [ln for ln in lines if "TCG doesn't support requested feature" not in ln]
    return " | ".join(lines[-3:]) or "(empty)"
