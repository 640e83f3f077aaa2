"""`kaiser record`: the workloads, and one boot from installing what it needs to the recordings."""

from __future__ import annotations

import datetime
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Final

from kaiser.record import build
from kaiser.record.boot import QEMU_CPU, BootError, Job, boot, make_initramfs
from kaiser.record.raw import JobResult, RawError, guest_layout, jobs, parse_info, read_raw, syscall_numbers, write_job


@dataclass(frozen=True)
class Workload:
    """A workload the guest init runs between its markers: name, what it does, its shipped call count and ARG."""

    name: str
    what: str
    shipped_calls: int  # --calls of the shipped recordings (kaiser record --all)
    arg: int = 0  # the guest's ARG (s1bench: loads per call; timer: HZ)


# CITED: Debian's kernels are built with CONFIG_HZ=250 (/boot/config-6.1.0-57-amd64); the timer
# workload spins for calls/HZ seconds, about one tick a call.
DEBIAN_HZ: Final = 250
# CHOSEN: s1bench's loads per call when --loads is not given (one 64 KB stretch of the buffer).
S1BENCH_LOADS: Final = 1000
# The shipped calls are CHOSEN to keep all 40 files a few MB: a light syscall's kernel side is
# ~500-900 references, a pipe round trip's or a page fault's ~13,000-19,000, and the random
# kernel-stack offset (CONFIG_RANDOMIZE_KSTACK_OFFSET) makes consecutive calls differ.
WORKLOADS: Final = {
    w.name: w
    for w in (
        Workload("getppid", "getppid() in a loop", 1000),
        Workload("close", "close(999): a bad file descriptor", 1000),
        Workload("lseek", "lseek(fd, 0, SEEK_SET) on a 4 MiB page-cache file", 1000),
        Workload("read", "read(fd, buf, 64) through a 4 MiB page-cache file", 300),
        Workload("write", "write(fd, buf, 64) appending to a page-cache file", 300),
        Workload("pipe", "1-byte ping-pong over two pipes between two processes", 100),
        Workload("page-fault", "a write to a fresh anonymous 4 KiB page; MADV_DONTNEED every 256", 100),
        Workload("sched_yield", "sched_yield() in a loop (nothing else runnable)", 1000),
        Workload("timer", "a user spin loop for calls/HZ seconds: timer interrupts", 250, DEBIAN_HZ),
        Workload("s1bench", "close(999), then N loads at a 64-byte stride over 100 MB", 100, S1BENCH_LOADS),
    )
}
# CHOSEN: the bound on one boot (a boot takes 12-18 s; 10,000 getppid calls ~1 min).
DEFAULT_TIMEOUT: Final = 900.0
SHIPPED: Final = ("6.1", "6.12")


def data_dir() -> Path:
    """Where the shipped recordings are (src/kaiser/record/data)."""
    return Path(str(resources.files("kaiser.record").joinpath("data")))


def shipped_name(kernel: str, pti: bool, workload: str) -> str:
    """The file name of a shipped recording: KERNEL-pti|nopti-WORKLOAD.krec."""
    return f"{kernel}-{'pti' if pti else 'nopti'}-{workload}.krec"


def cmdline(pti: bool, kaslr: bool) -> str:
    """The kernel command line (Documentation/admin-guide/kernel-parameters.txt: pti=, nopti,
    nokaslr); quiet console on ttyS0, panic=-1 so a crash ends the run."""
    return " ".join(
        ["console=ttyS0", "quiet", "panic=-1", "pti=on" if pti else "nopti", *([] if kaslr else ["nokaslr"])]
    )


def record(
    jobs_out: list[tuple[Job, Path]],
    *,
    kernel: str = "6.1",
    pti: bool = True,
    kaslr: bool = False,
    phys: bool = False,
    program: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    say: Callable[[str], None],
    keep: Path | None = None,
) -> list[JobResult]:
    """Boot `kernel` once, run every job, write each job's recording to its path."""
    from kaiser.systools import ensure  # the installer is only needed when recording

    ensure("record", say=say)
    plugin = build.build_plugin(say)
    init = build.build_init()
    image, package = build.vmlinuz(kernel, say)
    work = Path(tempfile.mkdtemp(prefix="kaiser-record-"))
    try:
        initrd = work / "initrd.cpio"
        make_initramfs(initrd, init, [j for j, _ in jobs_out], program)
        append = cmdline(pti, kaslr)
        say(f"record: booting {package} ({append}) under QEMU TCG, -cpu {QEMU_CPU}")
        files = boot(
            work, image, initrd, plugin, append, phys=phys, jobs=[j for j, _ in jobs_out], timeout=timeout, say=say
        )
        say(f"record: guest done after {files.seconds:.0f} s; writing recordings")
        info = parse_info(files.info)
        layout, symbols = guest_layout(info)
        raw = jobs(read_raw(files.raw))
        numbers = syscall_numbers()
        results = []
        for job, out in jobs_out:
            if job.id not in raw:
                raise RawError(f"the plugin log has no job {job.name} (markers missing)")
            header = {
                "kernel_release": info.fields.get("release", ""),
                "kernel_version": info.fields.get("version", ""),
                "kernel_package": package,
                "cmdline": info.fields.get("cmdline", append),
                "cpu_model": f"{QEMU_CPU} ({info.fields.get('model', '?')})",
                "qemu": " ".join(files.qemu),
                "workload": job.name if job.name != "program" else "program " + " ".join(job.argv[1:]),
                "calls": job.calls,
                "workload_args": {"arg": job.arg, "argv": list(job.argv[1:])},
                "pti": pti,
                "kaslr": kaslr,
                "phys": phys,
                "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "kaiser": _version(),
            }
            if job.name == "program":
                header["program_status"] = info.program_status
            out.parent.mkdir(parents=True, exist_ok=True)
            results.append(write_job(out, raw[job.id], header, layout, symbols, numbers))
            say(f"record: wrote {out} ({out.stat().st_size:,} bytes)")
        return results
    finally:
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for f in work.iterdir():
                shutil.move(str(f), keep / f.name)
        shutil.rmtree(work, ignore_errors=True)


def all_jobs(out_dir: Path, kernel: str, pti: bool) -> list[tuple[Job, Path]]:
    """Every workload at its shipped calls, each to its shipped file name."""
    return [
        (Job(i, w.name, w.shipped_calls, w.arg), out_dir / shipped_name(kernel, pti, w.name))
        for i, w in enumerate(WORKLOADS.values())
    ]


def _version() -> str:
    try:
        return metadata.version("kaiser")
    except metadata.PackageNotFoundError:
        return "?"


ERRORS: Final = (BootError, RawError, build.BuildError)
