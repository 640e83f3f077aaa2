"""From what one boot produced to recordings: the plugin's raw log (plugin/kaiser_plugin.c) cut
into jobs at the guest's markers, each job cut into transitions and user runs by mode, each
transition named from kallsyms, every reference tagged with its region (docs/recording.md)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from kaiser.record.format import REGIONS, RecordingWriter, ref_dtype
from kaiser.record.regions import KERNEL_HALF, PAGE_4K, Layout, Symbol, page_symbols, parse_kallsyms

RAW_DTYPE: Final = np.dtype([("a", "<u8"), ("b", "<u8"), ("c", "<u8")])
OP_FETCH, OP_LOAD, OP_STORE, OP_CR3, OP_MARK, OP_USER = range(6)
MARK_BEGIN, MARK_END = 0x1000, 0x2000
# The kernel's syscall numbers (UAPI, generated from arch/x86/entry/syscalls/syscall_64.tbl),
# as linux-libc-dev installs them.
UNISTD_64: Final = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
# Regions whose pages kallsyms names (the image and CPU 0's per-CPU copy).
NAMED_REGIONS: Final = ("entry_text", "kernel_text", "kernel_data", "percpu")


class RawError(RuntimeError):
    """The boot did not produce what a recording needs (one line, naming what is missing)."""


@dataclass
class GuestInfo:
    """What the guest init reported on the info channel."""

    fields: dict[str, str] = field(default_factory=dict)
    values: dict[str, int] = field(default_factory=dict)
    kallsyms: list[str] = field(default_factory=list)
    jobs_done: list[str] = field(default_factory=list)
    program_status: int | None = None


def parse_info(path: Path) -> GuestInfo:
    """The info channel's text (`@@key value` lines, kallsyms between its two markers)."""
    info = GuestInfo()
    in_syms = False
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if in_syms:
                if line == "@@kallsyms-end":
                    in_syms = False
                else:
                    info.kallsyms.append(line)
                continue
            if not line.startswith("@@"):
                continue
            key, _, value = line[2:].partition(" ")
            if key == "kallsyms-begin":
                in_syms = True
            elif key == "value":
                name, _, num = value.partition(" ")
                info.values[name] = int(num, 16)
            elif key == "job-done":
                info.jobs_done.append(value)
            elif key == "program-status":
                info.program_status = int(value)
            else:
                info.fields[key] = value
    return info


def syscall_numbers(path: Path = UNISTD_64) -> dict[str, int]:
    """name -> number from asm/unistd_64.h ({} when the header is absent)."""
    if not path.exists():
        return {}
    return {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)", path.read_text())}


def read_raw(path: Path) -> np.ndarray:
    """The plugin's log as (a, b, c) records."""
    size = path.stat().st_size
    if size % RAW_DTYPE.itemsize:
        raise RawError(f"{path}: plugin log of {size} bytes is not whole 24-byte records")
    return np.fromfile(path, dtype=RAW_DTYPE)


def jobs(raw: np.ndarray) -> dict[int, np.ndarray]:
    """Job id -> its records between BEGIN and END (markers other than those two kept)."""
    op = raw["b"] >> np.uint64(56)
    marks = np.flatnonzero(op == OP_MARK)
    codes = (raw["b"][marks] & np.uint64(0xFFFF)).astype(np.int64)
    out: dict[int, np.ndarray] = {}
    begin: dict[int, int] = {}
    for i, code in zip(marks.tolist(), codes.tolist(), strict=True):
        kind, job = code & 0xF000, code & 0xFFF
        if kind == MARK_BEGIN:
            begin[job] = i + 1
        elif kind == MARK_END and job in begin:
            out[job] = raw[begin.pop(job) : i]
    return out


@dataclass(frozen=True)
class Names:
    """kallsyms as arrays for naming transitions."""

    symbols: list[Symbol]
    addrs: np.ndarray
    is_sys: np.ndarray  # __x64_sys_* (the syscall's own function)
    switch: tuple[int, int]  # __switch_to_asm's extent

    @classmethod
    def build(cls, symbols: list[Symbol]) -> Names:
        text = [s for s in symbols if s.type in "Tt"]
        addrs = np.array([s.address for s in text], dtype=np.uint64)
        is_sys = np.array([s.name.startswith("__x64_sys_") for s in text], dtype=bool)
        i = next((k for k, s in enumerate(text) if s.name == "__switch_to_asm"), None)
        switch = (text[i].address, text[i + 1].address) if i is not None and i + 1 < len(text) else (0, 0)
        return cls(text, addrs, is_sys, switch)

    def index(self, va: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.addrs, va, side="right").astype(np.int64) - 1

    def name(self, i: int) -> str:
        return self.symbols[i].name if 0 <= i < len(self.symbols) else "?"


# Entry points of device interrupts (arch/x86/include/asm/idtentry.h: the vector stubs).
_IRQ_ENTRIES: Final = ("asm_common_interrupt", "irq_entries_start", "spurious_entries_start")


def _classify(names: Names, fetch_va: np.ndarray, syscalls: dict[str, int]) -> tuple[str, str, int, bool]:
    """kind, name, syscall number, switched of one kernel run from its instruction addresses."""
    if len(fetch_va) == 0:
        return "other", "?", -1, False
    idx = names.index(fetch_va)
    first = names.name(int(idx[0]))
    switched = bool(np.any((fetch_va >= np.uint64(names.switch[0])) & (fetch_va < np.uint64(names.switch[1]))))
    if first == "entry_SYSCALL_64":
        hits = np.flatnonzero(names.is_sys[idx.clip(0)] & (idx >= 0))
        if len(hits) == 0:
            return "syscall", "unknown", -1, switched
        name = names.name(int(idx[hits[0]])).removeprefix("__x64_sys_")
        return "syscall", name, syscalls.get(name, -1), switched
    if first.startswith("asm_exc_"):
        return "exception", first.removeprefix("asm_exc_"), -1, switched
    if first.startswith("asm_sysvec_") or first in _IRQ_ENTRIES:
        return "interrupt", first.removeprefix("asm_"), -1, switched
    return "other", first, -1, switched


def _runs(recs: np.ndarray) -> Iterator[tuple[bool, np.ndarray]]:
    """(kernel?, records) for each maximal run of one mode; a data reference has its
    instruction's mode; a user summary is user mode."""
    n = len(recs)
    if n == 0:
        return
    op = (recs["b"] >> np.uint64(56)).astype(np.uint8)
    is_fetch = op == OP_FETCH
    last = np.maximum.accumulate(np.where(is_fetch, np.arange(n), -1))
    kernel_fetch = recs["a"] >= np.uint64(KERNEL_HALF)
    mode = np.where(last >= 0, kernel_fetch[last.clip(0)], False)
    mode[op == OP_USER] = False
    cuts = np.flatnonzero(mode[1:] != mode[:-1]) + 1
    bounds = [0, *cuts.tolist(), n]
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        yield bool(mode[s]), recs[s:e]


def _refs(recs: np.ndarray, layout: Layout, phys: bool) -> np.ndarray:
    refs = np.zeros(len(recs), dtype=ref_dtype(phys))
    refs["vaddr"] = recs["a"]
    refs["op"] = (recs["b"] >> np.uint64(56)).astype(np.uint8)
    refs["size"] = ((recs["b"] >> np.uint64(48)) & np.uint64(0xFF)).astype(np.uint8)
    refs["region"] = layout.classify(recs["a"])
    if phys:
        refs["paddr"] = recs["c"]
    return refs


@dataclass
class JobResult:
    """What one recording job wrote: the file and how many transitions, user runs and references it holds."""

    path: Path
    transitions: int
    user_runs: int
    references: int


def write_job(
    path: str | os.PathLike[str],
    recs: np.ndarray,
    header: dict[str, Any],
    layout: Layout,
    symbols: list[Symbol],
    syscalls: dict[str, int],
) -> JobResult:
    """One job's records as a recording at `path` (header: the keys format.HEADER_KEYS wants but
    `regions`, `symbols` and `syscalls`, which come from here)."""
    phys = bool(header["phys"])
    names = Names.build(symbols)
    op = recs["b"] >> np.uint64(56)
    recs = recs[op != OP_MARK]
    pieces: list[tuple[str, Any]] = []
    used: dict[str, int] = {}
    pages: set[int] = set()
    n_refs = 0
    for kernel, run in _runs(recs):
        run_op = (run["b"] >> np.uint64(56)).astype(np.uint8)
        if kernel:
            refs = _refs(run, layout, phys)
            kind, name, nr, switched = _classify(names, run["a"][run_op == OP_FETCH], syscalls)
            if kind == "syscall" and name != "unknown":
                used[name] = nr
            named = np.isin(refs["region"], [REGIONS.index(r) for r in NAMED_REGIONS])
            pages.update(np.unique(refs["vaddr"][named] >> np.uint64(PAGE_4K)).tolist())
            pieces.append(("T", (kind, name, nr, switched, refs)))
            n_refs += len(refs)
        else:
            summaries = run[run_op == OP_USER]
            logged = run[run_op != OP_USER]
            if len(logged):
                pieces.append(("U", _refs(logged, layout, phys)))
                n_refs += len(logged)
            for s in summaries:
                c = int(s["c"])
                pieces.append(("S", (int(s["a"]), c >> 32, c & 0xFFFFFFFF)))
    full = dict(header)
    full["regions"] = layout.to_header()
    full["symbols"] = [[s.address, s.type, s.name] for s in page_symbols(symbols, sorted(pages))]
    full["syscalls"] = dict(sorted(used.items()))
    counts = [0, 0]
    with RecordingWriter(path, full) as w:
        for tag, item in pieces:
            if tag == "T":
                w.transition(*item)
                counts[0] += 1
            elif tag == "U":
                w.user(item)
                counts[1] += 1
            else:
                w.user_summary(*item)
                counts[1] += 1
    return JobResult(Path(path), counts[0], counts[1], n_refs)


def guest_layout(info: GuestInfo) -> tuple[Layout, list[Symbol]]:
    """The region boundaries and the sorted kernel symbols of the booted guest."""
    need = ("__per_cpu_offset", "pcpu_unit_size", "page_offset_base", "vmalloc_base")
    missing = [n for n in need if n not in info.values]
    if missing or not info.kallsyms:
        what = ", ".join(missing) if missing else "kallsyms"
        raise RawError(f"the guest did not report {what} (is /proc/kcore or /proc/kallsyms readable?)")
    symbols = parse_kallsyms(info.kallsyms, info.values["__per_cpu_offset"])
    by_name = {s.name: s.address for s in symbols}
    for n in ("_text", "_etext", "_end", "__entry_text_start", "__entry_text_end"):
        if n not in by_name:
            raise RawError(f"the guest's kallsyms has no {n}")
    return Layout.from_guest(by_name, info.values), symbols
