"""Synthetic workloads with named knobs, compiled to event streams by `kaiser.linux.entry`.

A workload prepares processes and buffers on a booted kernel (`setup`), then emits iterations
(`iterate`); one iteration is one "operation" of the report. Knobs are set by name with string
values (`--set reads=1024 --set buffer=100MiB`); sizes accept 4KiB, 2MiB, 100MiB, 1GiB, plain
bytes or 0x-hex.

The knob `work` is user computation between operations that touches no new memory: it is priced
(cycles) but emits no events, so the event stream, and the counts, do not depend on it. That is
what lets `kaiser bench --plot` sweep the system-call rate over a fixed user working set with one
replay per variant.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kaiser.choices import THP_MODES
from kaiser.linux.asid import flush_tlb_mm_range
from kaiser.linux.entry import EntryModel
from kaiser.linux.kernel import Kernel, Task
from kaiser.linux.mm import Prot, prot_to_pte
from kaiser.linux.pgtable_types import PAGE_KERNEL
from kaiser.linux.syscalls import SYSCALLS, get_syscall
from kaiser.x86.bits import PTE
from kaiser.x86.geometry import GiB, KiB, MiB
from kaiser.x86.physmem import PAGE_SIZE, FrameKind

_UNITS = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kb": KiB,
    "kib": KiB,
    "m": MiB,
    "mb": MiB,
    "mib": MiB,
    "g": GiB,
    "gb": GiB,
    "gib": GiB,
}
USER_TEXT = 0x400000  # the loop's code page (ProgramImage.base)
KERNEL_WS_BASE_OFFSET = 1 * GiB  # kernel working set in vmalloc space, above the task stacks


class WorkloadError(ValueError):
    """A bad workload name, knob name or knob value (one line, names the valid choices)."""


def parse_size(text: str) -> int:
    """'100MiB' → 104857600; also 4KiB, 2M, 1GiB, 4096, 0x1000 (binary units)."""
    t = text.strip().replace("_", "")
    if t.lower().startswith("0x"):
        try:
            return int(t, 16)
        except ValueError:
            pass
    m = re.fullmatch(r"(\d{1,30})\s*([A-Za-z]*)", t)  # bounded: int() refuses 4,300+ digits with a ValueError
    if not m or m.group(2).lower() not in _UNITS:
        raise WorkloadError(f"size {text!r} is not a size (e.g. 4096, 4KiB, 2MiB, 100MiB, 1GiB)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def knob_size_text(n: int) -> str:
    """A size knob as it is written: `4KiB`, `2MiB`, or bytes when no unit divides it."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _parse_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""), 0)
    except ValueError:
        raise WorkloadError(f"{text!r} is not an integer") from None
    if value < 0:
        raise WorkloadError(f"{text!r} must not be negative")
    return value


@dataclass(frozen=True)
class Knob:
    """A named workload parameter: default, parser and one line of help."""

    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str
    show: Callable[[Any], str] = str


def _bounded(
    parse: Callable[[str], Any], lo: float, hi: float, multiple: int = 1, show: Callable[[Any], str] = "{:,.0f}".format
) -> Callable[[str], Any]:
    """`parse`, then a range check: a knob value outside lo..hi (or not a multiple of `multiple`)
    is a `WorkloadError`, never a MemoryError or a silently degenerate workload."""

    def check(text: str) -> Any:
        value = parse(text)
        if not lo <= value <= hi:
            raise WorkloadError(f"{text!r} is out of range {show(lo)}..{show(hi)}")
        if value % multiple:
            raise WorkloadError(f"{text!r} must be a multiple of {multiple}")
        return value

    return check


def _size_knob(name: str, default: int, help: str, lo: int, hi: int, multiple: int = 1) -> Knob:
    return Knob(name, default, _bounded(parse_size, lo, hi, multiple, knob_size_text), help, knob_size_text)


def _int_knob(name: str, default: int, help: str, lo: int, hi: int) -> Knob:
    return Knob(name, default, _bounded(_parse_int, lo, hi), help)


# CHOSEN bounds of the knobs: wide enough for every figure in docs/cost.md and the sweeps, narrow
# enough that one replay fits in memory and minutes. A user buffer, file or fault region of 1 GiB
# is 262,144 pages mapped (and, for faults, one slot each); 2^20 loads or syscalls between
# switches is far beyond where the per-operation figures stop moving.
LOADS_MAX = 1 << 20
AREA_MAX = 1 * GiB
EVERY_MAX = 1 << 20
PROCS_MAX = 64  # CHOSEN: processes taking turns; each is a whole mm with its own tables
WORD = 8  # the loads are aligned 8-byte words: a stride that is not a multiple of 8 splits them


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise WorkloadError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


def _page_size(text: str) -> int:
    size = parse_size(text)
    if size not in (4 * KiB, 2 * MiB):
        raise WorkloadError(f"page size {text!r} must be 4KiB or 2MiB")
    return size


PAGE_SIZE_KNOB = Knob("page_size", 4 * KiB, _page_size, "user buffer page size: 4KiB or 2MiB", knob_size_text)
# Transparent huge pages, as /sys/kernel/mm/transparent_hugepage/enabled (Linux
# Documentation/admin-guide/mm/transhuge.rst). Debian's kernels default to madvise
# (CONFIG_TRANSPARENT_HUGEPAGE_MADVISE=y in Debian's config): a malloc'd buffer, which glibc does
# not madvise, stays in 4 KiB pages; with always, its 2 MiB-aligned interior is 2 MiB pages.
THP_KNOB = Knob("thp", "madvise", _choice(THP_MODES), "transparent huge pages: always, madvise, never")
WORK_MAX = 10**12  # CHOSEN: cycles of user work per iteration; 10^12 is minutes of a 3 GHz core per syscall
WORK_KNOB = Knob(
    "work",
    0.0,
    _bounded(lambda t: float(_parse_int(t)), 0, WORK_MAX),
    "user cycles of computation per iteration (no memory)",
)
USER_KNOBS = (
    _int_knob("reads", 64, "user loads per iteration", 0, LOADS_MAX),
    _size_knob("stride", 4 * KiB, "bytes between consecutive user loads", WORD, AREA_MAX, WORD),
    _size_knob("buffer", 256 * KiB, "user buffer the loads walk through (wrapping)", 1, AREA_MAX),
    PAGE_SIZE_KNOB,
    THP_KNOB,
    WORK_KNOB,
)


@dataclass
class UserBuffer:
    """A user buffer and the position of the strided walk through it."""

    base: int
    size: int
    stride: int
    pos: int = 0

    def next(self, n: int) -> list[int]:
        """The next `n` addresses of the walk (the i-th at pos + i * stride, wrapping), in one
        comprehension: a 12,288-read iteration builds its list several times faster than a loop."""
        base, pos, stride, size = self.base, self.pos, self.stride % self.size, self.size
        out = [base + (pos + stride * i) % size for i in range(n)]
        self.pos = (pos + stride * n) % size
        return out


def map_user_buffer(kernel: Kernel, task: Task, size: int, page_size: int, thp: str = "madvise") -> int:
    """A private RW user buffer of `size` bytes in 4 KiB (mmap, populated) or 2 MiB pages; with
    4 KiB pages and `thp="always"`, as the THP fault path backs an anonymous mapping: every
    2 MiB-aligned 2 MiB range inside the mapping by one 2 MiB page (mm/huge_memory.c,
    do_huge_pmd_anonymous_page, taken when the aligned range fits the VMA), the rest by 4 KiB."""
    size = max(size, page_size)
    size = -(-size // page_size) * page_size
    if page_size == PAGE_SIZE and thp == "always":
        return _map_thp_buffer(kernel, task, size)
    if page_size == PAGE_SIZE:
        return task.mm.mmap(size, Prot.READ | Prot.WRITE, name="bench buffer")
    # A THP-backed buffer: reserve the range, then map 2 MiB pages into it.
    va = task.mm.mmap(size + page_size, Prot.NONE, name="bench buffer (2M)")
    va = -(-va // page_size) * page_size
    pa = kernel.mem.alloc(
        FrameKind.DATA, f"user pid{task.pid} 2M", count=size // PAGE_SIZE, align=page_size // PAGE_SIZE
    )
    task.mm.pt.map(va, pa, size, prot_to_pte(Prot.READ | Prot.WRITE), page_size=page_size)
    return va


def _map_thp_buffer(kernel: Kernel, task: Task, size: int) -> int:
    """`size` bytes where the model's mmap puts them (4 KiB-aligned, not aligned to 2 MiB on
    purpose): the parts before the first and after the last 2 MiB boundary stay 4 KiB pages."""
    huge = 2 * MiB
    va = task.mm.mmap(size, Prot.NONE, name="bench buffer (THP)")
    lo, hi = -(-va // huge) * huge, (va + size) // huge * huge
    if hi <= lo:
        lo = hi = va + size  # no aligned 2 MiB range inside: all 4 KiB
    flags = prot_to_pte(Prot.READ | Prot.WRITE)
    for start, end, ps in ((va, lo, PAGE_SIZE), (lo, hi, huge), (hi, va + size, PAGE_SIZE)):
        if end > start:
            pa = kernel.mem.alloc(
                FrameKind.DATA, f"user pid{task.pid} THP", count=(end - start) // PAGE_SIZE, align=ps // PAGE_SIZE
            )
            task.mm.pt.map(start, pa, end - start, flags, page_size=ps)
    return va


def map_kernel_working_set(kernel: Kernel, pages: int) -> list[int]:
    """`pages` 4 KiB kernel pages in vmalloc space (shared by every mm through the preallocated
    vmalloc top-level entries): a kernel working set the direct map's 1 GiB pages would hide."""
    if not pages:
        return []
    va = kernel.layout.vmalloc_base + KERNEL_WS_BASE_OFFSET
    pa = kernel.mem.alloc(FrameKind.DATA, "bench kernel working set", count=pages)
    kernel.init.kernel_pt.map(va, pa, pages * PAGE_SIZE, int(PAGE_KERNEL & ~PTE.G), page_size=PAGE_SIZE)
    return [va + i * PAGE_SIZE for i in range(pages)]


# ---- the workloads --------------------------------------------------------------------------------
@dataclass
class Workload:
    """A named workload: its knobs, `setup(em, knobs) -> state`, `iterate(em, state, knobs, n)`."""

    name: str
    summary: str
    knobs: tuple[Knob, ...]
    setup: Callable[[EntryModel, dict[str, Any]], Any]
    iterate: Callable[[EntryModel, Any, dict[str, Any], int], None]
    extra: dict[str, Any] = field(default_factory=dict)

    def knob_names(self) -> list[str]:
        return [k.name for k in self.knobs]

    def resolve(self, settings: dict[str, str] | None = None) -> dict[str, Any]:
        """Defaults overridden by `settings` (strings); bad keys/values raise `WorkloadError`."""
        values = {k.name: k.default for k in self.knobs}
        by_name = {k.name: k for k in self.knobs}
        for key, text in (settings or {}).items():
            knob = by_name.get(key)
            if knob is None:
                raise WorkloadError(
                    f"--set {key}={text}: workload {self.name!r} has no knob {key!r}; "
                    f"valid keys: {', '.join(self.knob_names())}"
                )
            try:
                values[key] = knob.parse(text)
            except WorkloadError as exc:
                raise WorkloadError(f"--set {key}={text}: {exc}; valid keys: {', '.join(self.knob_names())}") from None
        return values

    def describe(self, values: dict[str, Any]) -> str:
        return " ".join(f"{k.name}={k.show(values[k.name])}" for k in self.knobs)


@dataclass
class LoopState:
    """What a workload's loop carries between iterations: its tasks, their buffers, the kernel
    working set, and the iteration count."""

    tasks: list[Task]
    buffers: list[UserBuffer]
    kernel_ws: list[int]
    i: int = 0
    # [start, end) event ranges of the user phases' data loads (kaiser.cost.run prices them
    # overlapped: kaiser.cost.model's user_overlap); run.py clears it after the warm-up.
    user_spans: list[tuple[int, int]] = field(default_factory=list)


def _start(em: EntryModel, knobs: dict[str, Any], procs: int = 1) -> LoopState:
    k = em.kernel
    tasks = [k.spawn() for _ in range(procs)]
    buffers = [
        UserBuffer(
            map_user_buffer(k, t, knobs["buffer"], knobs["page_size"], knobs.get("thp", "madvise")),
            max(knobs["buffer"], 1),
            knobs["stride"],
        )
        for t in tasks
    ]
    ws = map_kernel_working_set(k, knobs.get("kernel_pages", 0))
    em.start(tasks[0])
    em.return_to_user()
    return LoopState(tasks, buffers, ws)


def _user_phase(em: EntryModel, st: LoopState, knobs: dict[str, Any], who: int = 0) -> None:
    """The loop's code fetch, then its strided loads: independent of each other (no address
    depends on a loaded value), their event range kept in `st.user_spans`."""
    em.user(fetch=USER_TEXT)
    if knobs["reads"]:
        start = len(em.out)
        em.user(reads=st.buffers[who].next(knobs["reads"]))
        st.user_spans.append((start, len(em.out)))
    em.work(knobs["work"])


def _kernel_ws(em: EntryModel, st: LoopState) -> None:
    for va in st.kernel_ws:
        em._k(va)


# syscall-loop: the classic microbenchmark (and, with reads=0, the null syscall loop).
def _loop_setup(em: EntryModel, knobs: dict[str, Any]) -> LoopState:
    get_syscall(knobs["syscall"])
    procs = knobs["procs"] if knobs["switch_every"] else 1
    return _start(em, knobs, max(procs, 1))


def _loop_iterate(em: EntryModel, st: LoopState, knobs: dict[str, Any], n: int) -> None:
    spec = get_syscall(knobs["syscall"])
    every = knobs["switch_every"]
    for _ in range(n):
        who = st.tasks.index(em._task())
        _user_phase(em, st, knobs, who)
        em.syscall_entry()
        if every and len(st.tasks) > 1 and st.i % every == every - 1:
            em.syscall_body(SYSCALLS["sched_yield"])
            em.context_switch(st.tasks[(who + 1) % len(st.tasks)])
        else:
            em.syscall_body(spec)
            _kernel_ws(em, st)
        em.syscall_exit()
        st.i += 1


_SYSCALL_CHOICES = tuple(n for n in SYSCALLS if not n.startswith("pipe_"))
SYSCALL_LOOP = Workload(
    "syscall-loop",
    "each iteration: user work (N loads at stride S through a B-byte buffer), then one named system call",
    (
        Knob("syscall", "getppid", _choice(_SYSCALL_CHOICES), f"system call: {', '.join(_SYSCALL_CHOICES)}"),
        *USER_KNOBS,
        _int_knob(
            "kernel_pages", 0, "extra kernel pages (4 KiB, vmalloc) each syscall reads", 0, AREA_MAX // PAGE_SIZE
        ),
        _int_knob("procs", 2, "processes taking turns when switch_every > 0", 1, PROCS_MAX),
        _int_knob(
            "switch_every",
            0,
            "every Nth syscall is sched_yield() switching to the next process (0: never)",
            0,
            EVERY_MAX,
        ),
    ),
    _loop_setup,
    _loop_iterate,
)
NULL_SYSCALL = Workload(
    "null-syscall",
    "the null system call loop: getppid() back to back, no user memory touched",
    (
        Knob("syscall", "getppid", _choice(_SYSCALL_CHOICES), "system call"),
        _int_knob("reads", 0, "user loads per iteration", 0, LOADS_MAX),
        _size_knob("stride", 64, "bytes between user loads", WORD, AREA_MAX, WORD),
        _size_knob("buffer", 4 * KiB, "user buffer", 1, AREA_MAX),
        PAGE_SIZE_KNOB,
        THP_KNOB,
        WORK_KNOB,
        _int_knob("kernel_pages", 0, "extra kernel pages each syscall reads", 0, AREA_MAX // PAGE_SIZE),
        _int_knob("procs", 1, "processes (with switch_every)", 1, PROCS_MAX),
        _int_knob("switch_every", 0, "every Nth syscall yields to another process", 0, EVERY_MAX),
    ),
    _loop_setup,
    _loop_iterate,
)


# read / write on cached file pages.
@dataclass
class FileState(LoopState):
    """`LoopState` plus the cached file pages read()/write() cycle through."""

    cache: list[int] = field(default_factory=list)
    cpos: int = 0


def _file_setup(em: EntryModel, knobs: dict[str, Any]) -> FileState:
    st = _start(em, knobs)
    pages = max(1, knobs["file"] // PAGE_SIZE)
    base = em.kernel.layout.page_offset_base + em.kernel.mem.alloc(FrameKind.DATA, "page cache", count=pages)
    return FileState(st.tasks, st.buffers, st.kernel_ws, cache=[base + i * PAGE_SIZE for i in range(pages)])


def _file_iterate(name: str) -> Callable[[EntryModel, Any, dict[str, Any], int], None]:
    def iterate(em: EntryModel, st: FileState, knobs: dict[str, Any], n: int) -> None:
        npages = max(1, -(-knobs["size"] // PAGE_SIZE))
        io = UserBuffer(st.buffers[0].base, st.buffers[0].size, PAGE_SIZE)
        for _ in range(n):
            _user_phase(em, st, knobs)
            kbuf = [st.cache[(st.cpos + j) % len(st.cache)] for j in range(npages)]
            st.cpos = (st.cpos + npages) % len(st.cache)
            em.syscall_entry()
            em.syscall_body(SYSCALLS[name], user_buf=io.next(npages), kernel_buf=kbuf)
            _kernel_ws(em, st)
            em.syscall_exit()

    return iterate


_FILE_KNOBS = (
    _size_knob("size", 4 * KiB, "bytes per read()/write() (one reference per page copied)", 1, AREA_MAX),
    _size_knob("file", 1 * MiB, "cached file size the calls walk through", 1, AREA_MAX),
    *USER_KNOBS,
    _int_knob("kernel_pages", 0, "extra kernel pages (4 KiB, vmalloc) each call reads", 0, AREA_MAX // PAGE_SIZE),
)
READ_CACHED = Workload(
    "read", "read() of cached file pages into a user buffer", _FILE_KNOBS, _file_setup, _file_iterate("read")
)
WRITE_CACHED = Workload(
    "write", "write() of a user buffer to cached file pages", _FILE_KNOBS, _file_setup, _file_iterate("write")
)


# pipe ping-pong between two processes.
def _pipe_setup(em: EntryModel, knobs: dict[str, Any]) -> LoopState:
    return _start(em, knobs, 2)


def _pipe_iterate(em: EntryModel, st: LoopState, knobs: dict[str, Any], n: int) -> None:
    """One round trip: A writes and blocks reading; B wakes, reads, works, writes, blocks; A wakes."""
    pipe = [em.pipe_buffer()]
    for _ in range(n):
        for me in (0, 1):
            other = 1 - me
            buf = [st.buffers[me].base]
            _user_phase(em, st, knobs, me)
            em.syscall_entry()  # write(pipe, buf, 1)
            em.syscall_body(SYSCALLS["pipe_write"], user_buf=buf, kernel_buf=pipe)
            em.syscall_exit()
            em.syscall_entry()  # read(pipe, buf, 1): empty, sleep
            em.context_switch(st.tasks[other], blocking="pipe_read")
            em.syscall_body(SYSCALLS["pipe_read"], user_buf=[st.buffers[other].base], kernel_buf=pipe)
            em.syscall_exit()  # the other side returns from its read


PIPE_PINGPONG = Workload(
    "pipe",
    "pipe ping-pong between two processes: per iteration 4 system calls and 2 context switches",
    USER_KNOBS,
    _pipe_setup,
    _pipe_iterate,
)


# interrupt-heavy load.
def _irq_iterate(em: EntryModel, st: LoopState, knobs: dict[str, Any], n: int) -> None:
    for _ in range(n):
        _user_phase(em, st, knobs)
        em.interrupt()
        if knobs["kernel_every"] and st.i % knobs["kernel_every"] == knobs["kernel_every"] - 1:
            em.syscall_entry()  # an interrupt and an NMI arriving while the CPU is in the kernel
            em.syscall_body(SYSCALLS["getppid"])
            em.interrupt()
            if knobs["nmi"]:
                em.nmi()
            em.syscall_exit()
        st.i += 1


IRQ_HEAVY = Workload(
    "interrupts",
    "a device interrupt per iteration from user mode; every Nth iteration also one (and an NMI) from kernel mode",
    (
        *USER_KNOBS,
        _int_knob(
            "kernel_every",
            4,
            "every Nth iteration: a getppid() during which interrupts arrive (0: never)",
            0,
            EVERY_MAX,
        ),
        _int_knob("nmi", 1, "1: an NMI (paranoid entry) also arrives in the kernel then", 0, 1),
    ),
    lambda em, knobs: _start(em, knobs),
    _irq_iterate,
)


# page-fault-heavy load.
@dataclass
class FaultState(LoopState):
    """`LoopState` plus the region a page-fault workload touches and its not-yet-present PTEs."""

    region: int = 0
    slots: list[tuple[int, int, int]] = field(default_factory=list)  # (va, PTE slot, PTE value)
    next_page: int = 0


def _fault_setup(em: EntryModel, knobs: dict[str, Any]) -> FaultState:
    st = _start(em, knobs)
    k, task = em.kernel, st.tasks[0]
    size = max(knobs["region"], PAGE_SIZE)
    region = task.mm.mmap(size, Prot.READ | Prot.WRITE, name="fault region")
    leaf = len(task.mm.pt.levels) - 1
    slots = []
    for va in range(region, region + size, PAGE_SIZE):  # as if freshly mmapped: PTEs not present
        slot = task.mm.pt.entry_slot(va, leaf)
        assert slot is not None
        slots.append((va, slot, k.mem.read_u64(slot) | int(PTE.A | PTE.D)))
        task.mm.pt.set_entry(slot, 0, leaf)  # through the one door, as every table write
    return FaultState(st.tasks, st.buffers, st.kernel_ws, region=region, slots=slots)


def _fault_iterate(em: EntryModel, st: FaultState, knobs: dict[str, Any], n: int) -> None:
    """Touch a fresh page per iteration (a #PF whose handler writes the PTE). When the region is
    used up, madvise(MADV_DONTNEED) zaps it: PTE writes plus `flush_tlb_mm_range` (a full local
    flush beyond 33 pages, which under PTI+PCID defers the user flush to the exit)."""
    for _ in range(n):
        if st.next_page == len(st.slots):
            em.syscall_entry()
            em.syscall_body(SYSCALLS["sched_yield"])  # stands in for madvise's own work
            for _va, slot, _value in st.slots:
                em.out.write_phys(slot, 0)
            flush_tlb_mm_range(
                em.tlb, em.out, em.ids.of(st.tasks[0].pid), st.region, st.region + len(st.slots) * PAGE_SIZE
            )
            em.syscall_exit()
            st.next_page = 0
        _user_phase(em, st, knobs)
        va, slot, value = st.slots[st.next_page]
        em.page_fault(va, slot, value)
        st.next_page += 1


PAGE_FAULTS = Workload(
    "page-faults",
    "a page fault on a fresh user page per iteration (handler writes the PTE); region recycled by MADV_DONTNEED",
    (
        *USER_KNOBS,
        _size_knob(
            "region", 256 * KiB, "region of fresh pages faulted in, then zapped and reused", PAGE_SIZE, AREA_MAX
        ),
    ),
    _fault_setup,
    _fault_iterate,
)

WORKLOADS: dict[str, Workload] = {
    w.name: w for w in (SYSCALL_LOOP, NULL_SYSCALL, READ_CACHED, WRITE_CACHED, PIPE_PINGPONG, IRQ_HEAVY, PAGE_FAULTS)
}


def get_workload(name: str) -> Workload:
    """The workload `name`; `WorkloadError` listing the known ones otherwise."""
    try:
        return WORKLOADS[name]
    except KeyError:
        raise WorkloadError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}") from None
