"""A real program's trace, its system calls at their exact places, replayed on every variant.

Alignment (docs/traces.md). Lackey has no timestamps and strace no instruction counts, so neither
can place the other. The place comes from valgrind itself: run with `--trace-syscalls=yes`,
valgrind prints each system call of the program (`SYSCALL[pid,tid](nr) sys_read ( ... )`) into
the same log, in the same output stream as lackey's records, at the moment the guest executes
the `syscall` instruction: the line after the `I` record of the 2-byte `syscall`, before the
next instruction's. That is the exact position in the reference stream (`SyscallSite.index`).
The strace log of a native run of the same program (`strace -f -n -ttt -T`) supplies native
timestamps and durations and is cross-checked against valgrind's sequence (`align_syscalls`: by
number when strace has `-n`, else by name; `execve`, which valgrind performs itself, and calls
the two runs make differently, show up as unmatched, counted and listed).

Kernel side. At each site the kernel's part of the call is compiled by a *syscall hook* and
spliced into the user references: `SyscallHook.syscall_events(site) -> np.ndarray` (EVENT_DTYPE,
the entry, body and exit of the call under the variant, CR3 writes included). The hook used here,
`EntrySyscalls`, drives `kaiser.linux.entry.EntryModel`: entry/exit per variant as `kaiser bench`
prices them, modelled bodies (`SYSCALLS`) for the calls the model has, with read()/write()
copying between the traced buffer (from valgrind's arguments and result) and page-cache pages,
and a generic body for the rest. If `kaiser.linux.entry` gains a module-level
`syscall_events(em, name, *, nr, args, result) -> None` (appending to `em.out`), it is used for
every call instead of the generic mapping here (`_entry_hook`).

Address space. The process is booted with an empty user address space and every traced page is
mapped (4 KiB, read/write/execute: rights do not change TLB costs, and the real CPU has already
checked them) before the first event that touches it, chunk by chunk as the trace streams: a page
that was never mapped has never been in a TLB or paging-structure cache (SDM §4.10.2.3, §4.10.3.1:
only present translations are cached), so mapping it just in time is the same as mapping it up
front, without a second pass over the file.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np

from kaiser.linux.entry import EntryModel, OpCounts
from kaiser.linux.kernel import Kernel, KernelConfig, Task
from kaiser.linux.mm import Prot
from kaiser.linux.syscalls import SYSCALLS, Copy, Obj, Ref, SyscallSpec
from kaiser.linux.variants import BASELINE
from kaiser.sourced import Source, chosen
from kaiser.traces.lackey import LackeyStats, SyscallSite, TraceError
from kaiser.traces.strace import StraceCall
from kaiser.x86.counters import TlbCounters
from kaiser.x86.cpu import CpuFeatures, CpuState
from kaiser.x86.events import replay_reference
from kaiser.x86.mmu import Mmu
from kaiser.x86.physmem import PAGE_SIZE, FrameKind
from kaiser.x86.rights import Op
from kaiser.x86.tlb_geometry import DEFAULT_GEOMETRY, TlbGeometry

PAGE_CACHE_PAGES: Final = 64  # kernel pages read()/write() copy from/to, cycled (like `kaiser bench read`)
# Unmodelled calls (mmap, openat, brk, ...): the handler's text page, a stack frame and the task.
# CHOSEN: the model has no per-call data for them; the same in every variant, so it moves absolute
# cycles, not the isolation overhead in cycles.
GENERIC_REFS: Final = (
    Ref(Op.FETCH, Obj.TEXT, 0, "kernel/sys.c"),
    Ref(Op.WRITE, Obj.STACK, 0x200),
    Ref(Op.READ, Obj.STACK, 0x200),
    Ref(Op.READ, Obj.TASK, 0x740),
)
GENERIC_BODY_CYCLES: Final = 300.0  # CHOSEN (see GENERIC_REFS)
# The tag of each model number above (kaiser.sourced).
TRACE_SOURCES: Final[dict[str, Source]] = {
    "PAGE_CACHE_PAGES": chosen(
        "64 pages (256 KiB) of cached file the trace's read()/write() copy from/to in turn: a trace does not say "
        "which file pages a call touches; the same in every variant"
    ),
    "GENERIC_BODY_CYCLES": chosen(
        "300 cycles of an unmodelled call's own work (mmap, openat, brk, ...): the model has no per-call data for "
        "them; the same in every variant, so it moves absolute cycles, not the isolation overhead in cycles"
    ),
}
# Linux names whose modelled body stands in for them (kaiser.linux.syscalls.SYSCALLS).
MODELLED_AS: Final = {
    "read": "read",
    "pread64": "read",
    "readv": "read",
    "write": "write",
    "pwrite64": "write",
    "writev": "write",
    "getpid": "getpid",
    "getppid": "getppid",
    "close": "close",
    "lseek": "lseek",
    "sched_yield": "sched_yield",
}
NO_RETURN: Final = frozenset({"exit_group"})  # the process ends inside the call


class SyscallHook(Protocol):
    """Compiles the kernel side of one traced system call for one CPU of one booted kernel."""

    def initial_state(self) -> CpuState:
        """Registers the replay starts from (kernel mode, before `prologue`)."""
        ...

    def prologue(self) -> np.ndarray:
        """Events from the initial state into the traced process's user mode."""
        ...

    def syscall_events(self, site: SyscallSite) -> np.ndarray:
        """Entry, body and exit of `site` (EVENT_DTYPE), compiled in replay order."""
        ...

    def user_pages(self, site: SyscallSite) -> list[int]:
        """User pages (page numbers) the kernel side of `site` touches (must be mapped)."""
        ...

    @property
    def ops(self) -> OpCounts: ...


def _entry_hook() -> Callable[..., None] | None:
    """`kaiser.linux.entry.syscall_events(em, name, *, nr, args, result)`, if entry.py has it."""
    from kaiser.linux import entry

    hook = getattr(entry, "syscall_events", None)
    return hook if callable(hook) else None


class EntrySyscalls:
    """The syscall hook on `kaiser.linux.entry.EntryModel` (see the module docstring)."""

    def __init__(self, kernel: Kernel, task: Task, kernel_side: str = "modelled") -> None:
        self.kernel = kernel
        self.em = EntryModel(kernel)
        if kernel_side == "recorded":  # bodies from the shipped recordings where one exists
            from kaiser.record.replay import RecordedSide

            self.em.kernel_side = RecordedSide(self.em)
        self._state = self.em.start(task)
        self.em.return_to_user()
        self._prologue = self.em.out.array()
        self.em.out = type(self.em.out)()
        base = kernel.layout.page_offset_base + kernel.mem.alloc(
            FrameKind.DATA, "trace page cache", count=PAGE_CACHE_PAGES
        )
        self._cache = [base + i * PAGE_SIZE for i in range(PAGE_CACHE_PAGES)]
        self._cpos = 0
        self._generic: dict[str, SyscallSpec] = {}
        self.unmodelled: dict[str, int] = {}
        self.exited = False
        self._hook = _entry_hook()

    @property
    def ops(self) -> OpCounts:
        return self.em.ops

    def initial_state(self) -> CpuState:
        return self._state

    def prologue(self) -> np.ndarray:
        return self._prologue

    @staticmethod
    def _copy_span(site: SyscallSite) -> tuple[int, int] | None:
        """(user buffer, bytes) of a read/write-like call that succeeded, from valgrind's args."""
        spec = MODELLED_AS.get(site.name)
        if spec not in ("read", "write") or site.name in ("readv", "writev") or len(site.args) < 3:
            return None
        n = site.returned or 0
        return (site.args[1], n) if n > 0 else None

    def user_pages(self, site: SyscallSite) -> list[int]:
        span = self._copy_span(site)
        if span is None:
            return []
        buf, n = span
        return list(range(buf >> 12, ((buf + n - 1) >> 12) + 1))

    def _spec(self, site: SyscallSite) -> SyscallSpec:
        name = MODELLED_AS.get(site.name)
        if name is not None:
            return SYSCALLS[name]
        self.unmodelled[site.name] = self.unmodelled.get(site.name, 0) + 1
        spec = self._generic.get(site.name)
        if spec is None:
            spec = self._generic[site.name] = SyscallSpec(
                site.name, site.nr, GENERIC_REFS, GENERIC_BODY_CYCLES, Copy.NONE, "unmodelled: generic body"
            )
        return spec

    def syscall_events(self, site: SyscallSite) -> np.ndarray:
        em = self.em
        if self.exited:
            raise TraceError(f"{site.line}: system call {site.name} after the process exited")
        if self._hook is not None:
            self._hook(em, site.name, nr=site.nr, args=site.args, result=site.returned)
        else:
            spec = self._spec(site)
            user_buf: list[int] = []
            kernel_buf: list[int] = []
            span = self._copy_span(site)
            if span is not None:
                user_buf = [p << 12 for p in self.user_pages(site)]
                kernel_buf = [self._cache[(self._cpos + j) % len(self._cache)] for j in range(len(user_buf))]
                self._cpos = (self._cpos + len(user_buf)) % len(self._cache)
            em.syscall_entry()
            em.syscall_body(spec, user_buf=user_buf, kernel_buf=kernel_buf)
            if site.name in NO_RETURN:
                self.exited = True
            else:
                em.syscall_exit()
        out = em.out.array()
        em.out = type(em.out)()
        return out


# ---- the traced process's address space ----------------------------------------------------------------
class TraceAddressSpace:
    """The traced pages, mapped into `task`'s (emptied) address space as they first appear."""

    def __init__(self, kernel: Kernel, task: Task) -> None:
        self.kernel = kernel
        self.task = task
        for vma in list(task.mm.vmas):  # the booted image's placeholder mappings go
            task.mm.munmap(vma.start, vma.size)
        self.pages: set[int] = set()
        self.vmas = 0

    def missing(self, candidates: Iterable[int] | np.ndarray) -> list[int]:
        """The pages of `candidates` (page numbers) not mapped yet, sorted."""
        arr = np.unique(np.asarray(list(candidates) if not isinstance(candidates, np.ndarray) else candidates))
        return [p for p in arr.tolist() if p not in self.pages]

    def ensure(self, candidates: Iterable[int] | np.ndarray) -> int:
        """Map the pages of `candidates` not mapped yet; returns how many."""
        return self.map(self.missing(candidates))

    def map(self, new: list[int]) -> int:
        """Map `new` (sorted page numbers, none mapped yet) read/write/execute."""
        if not new:
            return 0
        top = self.kernel.user_top >> 12
        bad = [p for p in new if p >= top]
        if bad:
            raise TraceError(f"the trace references {bad[0] << 12:#x}, above the user address space")
        runs: list[tuple[int, int]] = []
        for p in new:
            if runs and runs[-1][1] == p:
                runs[-1] = (runs[-1][0], p + 1)
            else:
                runs.append((p, p + 1))
        for lo, hi in runs:
            self.task.mm.mmap((hi - lo) << 12, Prot.READ | Prot.WRITE | Prot.EXEC, addr=lo << 12, name="traced")
        self.pages.update(new)
        self.vmas += len(runs)
        return len(new)


# ---- replay on one configuration -----------------------------------------------------------------------
def engine_available() -> bool:
    """Whether the numba engine can be imported; traces/ asks without importing kaiser.cost (as
    kaiser.cost.run.engine_available does), so a replay runs where the cost package is absent."""
    return importlib.util.find_spec("kaiser.x86.engine") is not None


@dataclass
class TraceResult:
    """One configuration's replay of a trace: counts, operations, cycles (if the cost model
    exists), and what the run had to do."""

    variant: str
    pcid: bool
    path: str  # "engine" or "reference"
    refs: int
    events: int  # all events replayed (user and kernel)
    user_events: int
    syscalls: int
    pages: int
    counters: TlbCounters
    ops: OpCounts
    cycles: dict[str, float] | None
    unmodelled: dict[str, int]
    seconds: float = 0.0  # replay time of this configuration (excludes reading the file)
    kernel_side: dict[str, str] = field(default_factory=dict)  # model syscall -> recorded|modelled

    @property
    def total_cycles(self) -> float | None:
        return self.cycles["total"] if self.cycles else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "pcid": self.pcid,
            "path": self.path,
            "refs": self.refs,
            "events": self.events,
            "user_events": self.user_events,
            "syscalls": self.syscalls,
            "pages_mapped": self.pages,
            "counters": self.counters.as_dict(),
            "ops": self.ops.as_dict(),
            "cycles": self.cycles,
            "unmodelled_syscalls": self.unmodelled,
            "replay_seconds": self.seconds,
            "kernel_side": self.kernel_side,
        }


class ConfigReplay:
    """One variant at one PCID setting: a booted kernel, the traced process, a replayer."""

    def __init__(
        self,
        variant: str,
        pcid: bool,
        *,
        path: str,
        hook_factory: Callable[[Kernel, Task], SyscallHook] = EntrySyscalls,
        seed: int = 0,
        kaslr: bool = True,
        geometry: TlbGeometry = DEFAULT_GEOMETRY,
    ) -> None:
        self.variant, self.pcid, self.path = variant, pcid, path
        self.kernel = Kernel.boot(KernelConfig(variant, pcid=pcid, ncpus=1, kaslr=kaslr, seed=seed))
        self.task = self.kernel.spawn()
        self.space = TraceAddressSpace(self.kernel, self.task)
        self.hook = hook_factory(self.kernel, self.task)
        features = CpuFeatures(maxphyaddr=self.kernel.mem.maxphyaddr)
        state = self.hook.initial_state()
        self._counts = np.zeros(len(dataclasses.fields(TlbCounters)), np.int64)  # TlbCounters' field order
        self.events = self.user_events = self.syscalls = 0
        self.seconds = 0.0
        if path == "engine":
            from kaiser.x86.engine import Engine

            self.engine: Any = Engine(self.kernel.mem, state, features, geometry)
            self.mmu: Mmu | None = None
        else:
            self.engine = None
            self.mmu = Mmu(self.kernel.mem, state, features=features, geometry=geometry)
        self._replay(self.hook.prologue())
        self._counts[:] = 0  # the prologue (boot into user mode) is not counted
        self.events = 0

    @property
    def counters(self) -> TlbCounters:
        """Every counter since the prologue, named."""
        return TlbCounters(*self._counts.tolist())

    def _replay(self, events: np.ndarray, *, user: bool = False) -> None:
        """Replay `events`; `user`: the trace's own references (memory accesses only, so the
        engine need not scan them for physical-memory writes)."""
        if not len(events):
            return
        if self.engine is not None:  # counters as an array: a few microseconds a call
            self._counts += self.engine.step(events, sync=False, accesses_only=user)
        else:
            assert self.mmu is not None
            self._counts += np.asarray(dataclasses.astuple(replay_reference(self.mmu, events)), np.int64)
        self.events += len(events)

    def feed(self, events: np.ndarray, sites: Sequence[SyscallSite], new_pages: np.ndarray) -> None:
        """Replay one chunk: map its new pages, splice each call's kernel events in at its place."""
        t0 = time.perf_counter()
        pages = new_pages
        top = self.kernel.user_top >> 12
        extra = []
        for s in sites:
            buffer = self.hook.user_pages(s)
            if any(p >= top for p in buffer):  # "LINE: why"; replay_trace puts the file in front
                raise TraceError(f"{s.line}: system call {s.name}'s buffer reaches above the user address space")
            extra += buffer
        if extra:
            pages = np.concatenate([pages, np.asarray(extra, np.uint64)])
        new = self.space.missing(pages) if len(pages) else []
        # The engine works on its own copy of memory. It is written back before anything edits
        # `mem` (mapping the chunk's new pages; compiling its calls, which may map kernel pages:
        # the recorded side's vmalloc pages) and taken again after, so the replay sees `mem` as
        # the reference path does. A booted kernel holds a few dozen frames: tens of microseconds.
        if self.engine is not None:
            self.engine.sync_back()
        if new:
            self.space.map(new)
        kernel = [self.hook.syscall_events(s) for s in sites]  # compiled before the replay, in order
        if self.engine is not None:
            self.engine.reload_memory()
        # The user events up to each call, the call's kernel events, and so on: replayed piece by
        # piece in that order (the replay's state carries over; no copy of the chunk is made).
        prev = 0
        for s, k in zip(sites, kernel, strict=True):
            self._replay(events[prev : s.at], user=True)
            self._replay(k)
            prev = s.at
        self._replay(events[prev:], user=True)
        self.user_events += len(events)
        self.syscalls += len(sites)
        self.hook.ops.user_refs += len(events)
        self.seconds += time.perf_counter() - t0

    def result(self, refs: int) -> TraceResult:
        if self.engine is not None:
            self.engine.sync_back()
        cycles = _price(self.counters, self.hook.ops)
        unmodelled = dict(getattr(self.hook, "unmodelled", {}))
        em = getattr(self.hook, "em", None)
        recorded = em.recorded_calls if isinstance(em, EntryModel) else {}
        sides = {n: ("recorded" if n in recorded else "modelled") for n in self.hook.ops.syscalls_by_name}
        return TraceResult(
            self.variant,
            self.pcid,
            self.path,
            refs,
            self.events,
            self.user_events,
            self.syscalls,
            len(self.space.pages),
            self.counters,
            self.hook.ops,
            cycles,
            unmodelled,
            self.seconds,
            sides,
        )


def _price(counters: TlbCounters, ops: OpCounts) -> dict[str, float] | None:
    """Cycles by term from `kaiser.cost.model`, or None if the cost model is not there."""
    if importlib.util.find_spec("kaiser.cost.model") is None:
        return None
    from kaiser.cost.model import price

    return price(counters, ops).as_dict()


# ---- syscall cross-check with strace -------------------------------------------------------------------
# valgrind's wrapper names that differ from the kernel's (and strace's) names.
VALGRIND_ALIASES: Final = {"newuname": "uname", "newfstat": "fstat", "newstat": "stat", "newlstat": "lstat"}
LOOKAHEAD: Final = 16


@dataclass
class Alignment:
    """valgrind's system calls matched with strace's, in order (greedy, with a lookahead)."""

    matched: list[tuple[SyscallSite, StraceCall]] = field(default_factory=list)
    valgrind_only: list[str] = field(default_factory=list)
    strace_only: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        times = [c.time for _, c in self.matched if c.time is not None]
        return {
            "matched": len(self.matched),
            "valgrind_only": self.valgrind_only,
            "strace_only": self.strace_only,
            "native_span_seconds": (max(times) - min(times)) if len(times) > 1 else None,
        }


def _key_site(s: SyscallSite, by_nr: bool) -> object:
    return s.nr if by_nr else VALGRIND_ALIASES.get(s.name, s.name)


def _key_call(c: StraceCall, by_nr: bool) -> object:
    return c.nr if by_nr else c.name


def align_syscalls(sites: Sequence[SyscallSite], calls: Sequence[StraceCall]) -> Alignment:
    """Pair valgrind's calls with strace's: equal keys advance both; otherwise the nearest match
    within `LOOKAHEAD` on either side decides which side has extra calls."""
    by_nr = bool(calls) and all(c.nr is not None for c in calls)
    a = Alignment()
    i = j = 0
    while i < len(sites) and j < len(calls):
        if _key_site(sites[i], by_nr) == _key_call(calls[j], by_nr):
            a.matched.append((sites[i], calls[j]))
            i += 1
            j += 1
            continue
        best: tuple[int, int, int] | None = None
        for di in range(LOOKAHEAD):
            for dj in range(LOOKAHEAD):
                if (
                    (di or dj)
                    and i + di < len(sites)
                    and j + dj < len(calls)
                    and (best is None or di + dj < best[0])
                    and _key_site(sites[i + di], by_nr) == _key_call(calls[j + dj], by_nr)
                ):
                    best = (di + dj, di, dj)
        if best is None:
            a.valgrind_only.append(sites[i].name)
            a.strace_only.append(calls[j].name)
            i += 1
            j += 1
            continue
        _, di, dj = best
        a.valgrind_only.extend(s.name for s in sites[i : i + di])
        a.strace_only.extend(c.name for c in calls[j : j + dj])
        i += di
        j += dj
    a.valgrind_only.extend(s.name for s in sites[i:])
    a.strace_only.extend(c.name for c in calls[j:])
    return a


# ---- the whole trace on many configurations --------------------------------------------------------------
@dataclass
class TraceReplay:
    """Every configuration's result, the reader's statistics and the strace cross-check."""

    trace: Path
    results: list[TraceResult]
    stats: dict[str, Any]
    seconds: float  # wall time of the whole run (reading, parsing, replaying every configuration)
    read_seconds: float  # of which reading and parsing
    alignment: Alignment | None = None
    strace: dict[str, Any] | None = None
    syscall_names: dict[str, int] = field(default_factory=dict)
    workers: int = 1  # processes the configurations were replayed in (kaiser.traces.multireplay)
    cached: bool = False  # the events came from the binary cache of an earlier parse (trace_cache.py)
    cpu_seconds: float = 0.0  # CPU time of the whole run: this process's threads and its children

    def baseline(self, pcid: bool) -> TraceResult | None:
        return next((r for r in self.results if r.variant == BASELINE and r.pcid == pcid), None)

    def overhead(self, r: TraceResult) -> float | None:
        """Extra cycles against nopti at the same PCID setting, in percent."""
        b = self.baseline(r.pcid)
        if b is None or r.total_cycles is None or not b.total_cycles:
            return None
        return 100.0 * (r.total_cycles - b.total_cycles) / b.total_cycles

    def as_dict(self) -> dict[str, Any]:
        refs = self.stats.get("refs", 0)
        return {
            "trace": str(self.trace),
            "reader": self.stats,
            "syscalls_by_name": self.syscall_names,
            "seconds": self.seconds,
            "read_seconds": self.read_seconds,
            "workers": self.workers,
            "cpu_seconds": self.cpu_seconds,
            "from_cache": self.cached,
            "refs_per_second_end_to_end": refs * len(self.results) / self.seconds if self.seconds else None,
            "alignment": self.alignment.as_dict() if self.alignment else None,
            "strace": self.strace,
            "results": [{**r.as_dict(), "overhead_percent": self.overhead(r)} for r in self.results],
        }


def require_references(trace: str | Path, st: LackeyStats) -> None:
    """A trace with no memory reference prices nothing: an empty file, the wrong file, or (with
    skip_bad) a file of bad lines only -- a `TraceError` rather than a table of zeros."""
    if st.refs:
        return
    if st.bad_lines:
        raise TraceError(f"{trace}: {st.bad_lines} bad line(s) skipped and not one memory reference left")
    raise TraceError(
        f"{trace}: no memory references in {st.lines} line(s) (a trace of valgrind --tool=lackey --trace-mem=yes)"
    )


def slice_chunk(events: np.ndarray, sites: list[SyscallSite], keep: int) -> tuple[np.ndarray, list[SyscallSite]]:
    """The first `keep` events of a chunk and the calls among them."""
    n = min(keep, len(events))
    return events[:n], [s for s in sites if s.at <= n]
