"""A recorded kernel side replayed through any variant of the model (`--kernel-side recorded`).

A recording (record/format.py) is what one real kernel did for each transition. The model keeps
what differs between the designs: the entry and exit paths (entry_64.S or the CEA trampoline or
our fixed stub), the CR3 values and their writes, PCID, the global bits, the tables themselves
(linux/entry.py emits all of that per variant). Only the kernel *body* between them comes from
the recording (system calls; a device interrupt from user mode, from the timer recording; a
user page fault, whose clear_page and PTE write the model still does itself as well): every
reference made by an instruction in kernel text (not in entry text, not in
the CPU entry area: those instructions and their data references are the entry path, which the
model emits itself), mapped by region onto the booted model:

- kernel text and the image's data: by offset from `_text` (read-only data, by the kallsyms
  type r/R of the symbol it is in, onto the model's .rodata, the rest onto .data and .bss). The
  model's image has the same text size to 12 KiB and its entry text at the same 12 MiB offset
  (linux/layout.py ImageSizes); an offset past the model's window (the real rodata+data+bss are
  38 MiB, the model's 14 MiB) is folded into the window modulo its size, then the next free
  page: one model page per real page, so a call touches exactly as many distinct pages as it
  did for real.
- the current task's stack (the THREAD_SIZE-aligned block the call's first stack reference is
  in): by offset to the model task's stack; any other vmalloc page: a fresh 4 KiB page mapped in
  the shared vmalloc area (`VMALLOC_OFFSET` above vmalloc_base).
- per-CPU data: by offset into CPU 0's per-CPU area for the model's `PERCPU_PAGES`; a page of
  the real 2 MiB unit beyond them gets a fresh direct-map frame.
- direct-map objects (task_struct, files, the page cache): a fresh model frame per real page,
  reached through the model's direct map.
- the CPU entry area: by offset from its base (the IDT page and CPU 0's area).
- user memory (copy_to_user and friends): onto the user pages the workload passes (the
  workload's buffer), one per distinct real page in order; without any, dropped.
- anything else (the fixmap's local APIC, vmemmap's struct pages): dropped, counted.

Granularity: consecutive references to the same 64-byte line with the same op become one event
(the model's granularity is per location, not per instruction: linux/entry.py). That changes no
TLB counter: the repeat hits the entry the first one filled, with the same rights and A/D bits.

Which call of the recording: of the transitions of that kind that did not switch tasks, one
with the most common set of 4 KiB pages (as `kaiser recording info --symbols` chooses), or, when
no two calls share one (each page fault touches fresh frames), the call of median length; the
stack offset randomized per call (docs/recording.md) moves nothing across a page.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Final

import numpy as np

from kaiser.linux.cea import PERCPU_PAGES
from kaiser.linux.entry import EntryModel
from kaiser.linux.kernel import THREAD_SIZE, Task
from kaiser.linux.pgtable_types import PAGE_KERNEL
from kaiser.record.format import CR3, FETCH, LOAD, REGIONS, STORE, Transition, read_recording
from kaiser.record.regions import PAGE_4K, Layout
from kaiser.x86.bits import PTE
from kaiser.x86.physmem import PAGE_SIZE, FrameKind
from kaiser.x86.rights import Op

DEFAULT_KERNEL: Final = "6.1"  # CHOSEN: the kernel item 4's CR3 check holds the model against
VMALLOC_OFFSET: Final = 3 << 30  # CHOSEN: above the bench's kernel working set (1 GiB up)
LINE: Final = 6  # 64-byte lines (SDM Vol. 3A 12.1: the cache line of every Intel 64 CPU since P4)
_R = {name: i for i, name in enumerate(REGIONS)}
_ENTRY_PATH = (_R["entry_text"], _R["cpu_entry_area"])
_OP = {FETCH: Op.FETCH, LOAD: Op.READ, STORE: Op.WRITE}


# The transitions other than syscalls that have a recording: model name -> (workload of the
# recording, transition kind, transition name in it). A syscall's is its own name.
OTHER_TRANSITIONS: Final = {
    "interrupt": ("timer", "interrupt", "sysvec_apic_timer_interrupt"),  # a device interrupt from user
    "page_fault": ("page-fault", "exception", "page_fault"),  # a #PF on a fresh anonymous page
    # the pipe ping-pong's calls that did not switch tasks (the switch itself stays modelled:
    # docs/recording.md, "What the replay takes")
    "pipe_write": ("pipe", "syscall", "write"),
    "pipe_read": ("pipe", "syscall", "read"),
}
# A context switch: the pipe recording's read that blocks and returns in the other process,
# cut at its switch_mm_irqs_off CR3 write into the part before (the blocking read as the first
# process, schedule) and the part after (the second process's return through its pipe_read).
SWITCH: Final = ("pipe", "syscall", "read")
SWITCH_PARTS: Final = ("context_switch:before", "context_switch:after")


def recording_path(kernel: str, name: str, *, pti: bool = True) -> Path | None:
    """The shipped pti=on (or with `pti=False` the nopti) recording of transition `name` (a
    syscall, or a key of OTHER_TRANSITIONS) for `kernel` ("6.1", "6.12"), if any."""
    workload = (
        SWITCH[0] if name == "context_switch" else OTHER_TRANSITIONS[name][0] if name in OTHER_TRANSITIONS else name
    )
    switch = "pti" if pti else "nopti"
    p = Path(str(resources.files("kaiser.record") / "data" / f"{kernel}-{switch}-{workload}.krec"))
    return p if p.is_file() else None


@dataclass(frozen=True)
class RecordedBody:
    """The kernel body of one recorded call: references (real addresses, op, region) in order."""

    name: str
    recording: str  # file name
    vaddr: np.ndarray
    op: np.ndarray
    region: np.ndarray
    ranges: dict[str, list[tuple[int, int]]]
    dropped: int  # references of regions the model has no place for
    readonly: np.ndarray  # per reference: in the image's read-only data (kallsyms type r/R)
    instructions: int = 0  # of the whole transition as recorded: entry path, body and exit

    def pages(self) -> tuple[int, int]:
        """Distinct 4 KiB (code, data) pages of the body, as recorded."""
        page = self.vaddr >> np.uint64(PAGE_4K)
        return len(np.unique(page[self.op == FETCH])), len(np.unique(page[self.op != FETCH]))


def body_of(t: Transition) -> np.ndarray:
    """The references of `t` made by instructions outside the entry path (entry text, the CPU
    entry area), CR3 writes excluded: a boolean mask."""
    refs = t.refs
    fetch = refs["op"] == FETCH
    idx = np.where(fetch, np.arange(len(refs)), 0)
    last_fetch = np.maximum.accumulate(idx)  # the instruction each reference belongs to
    entry_fetch = fetch & np.isin(refs["region"], _ENTRY_PATH)
    in_entry = entry_fetch[last_fetch] & fetch[last_fetch]
    return (~in_entry) & (refs["op"] != CR3)


def _typical(bodies: list[np.ndarray]) -> int:
    """Index of the call with the most common set of 4 KiB pages, or when every call touched
    other pages (fresh page-fault frames) the call of median length."""
    keys = [hashlib.blake2b(np.unique(b["vaddr"] >> np.uint64(PAGE_4K)).tobytes()).digest() for b in bodies]
    best, count = Counter(keys).most_common(1)[0]
    return keys.index(best) if count > 1 else sorted(range(len(bodies)), key=lambda i: len(bodies[i]))[len(bodies) // 2]


def switch_at(t: Transition) -> int | None:
    """Where `t`'s switch_mm_irqs_off CR3 write is (its only one outside the entry path), or None."""
    refs = t.refs
    fetch = refs["op"] == FETCH
    idx = np.where(fetch, np.arange(len(refs)), 0)
    last_fetch = np.maximum.accumulate(idx)
    in_entry = np.isin(refs["region"], _ENTRY_PATH)[last_fetch]
    at = np.flatnonzero((refs["op"] == CR3) & ~in_entry)
    return int(at[0]) if len(at) == 1 else None


@functools.lru_cache(maxsize=32)
def load_body(path: str, name: str) -> RecordedBody:
    """The typical call of transition `name` in the recording at `path` (the module docstring)."""
    header, records = read_recording(path)
    kind, tname = OTHER_TRANSITIONS[name][1:] if name in OTHER_TRANSITIONS else ("syscall", name)
    calls = [r for r in records if isinstance(r, Transition) and r.kind == kind and r.name == tname]
    calls = [t for t in calls if not t.switched]
    if not calls:
        raise ValueError(f"{path}: no {tname} without a task switch")
    bodies = [t.refs[body_of(t)] for t in calls]
    pick = _typical(bodies)
    instructions = int(np.count_nonzero(calls[pick].refs["op"] == FETCH))  # the plugin logs each one
    return _body(header, bodies[pick], name, path, instructions)


@functools.lru_cache(maxsize=8)
def load_switch(path: str) -> tuple[RecordedBody, RecordedBody]:
    """The typical switching call (SWITCH) of the recording at `path`, cut at its switch_mm CR3
    write: the body before it and after it (SWITCH_PARTS); the first carries the whole call's
    instructions, the second none."""
    header, records = read_recording(path)
    kind, tname = SWITCH[1:]
    calls = [r for r in records if isinstance(r, Transition) and r.kind == kind and r.name == tname and r.switched]
    cut = [(t, k) for t in calls if (k := switch_at(t)) is not None]
    if not cut:
        raise ValueError(f"{path}: no {tname} that switches tasks with one switch_mm CR3 write")
    bodies = [t.refs[body_of(t)] for t, _ in cut]
    t, k = cut[_typical(bodies)]
    mask = body_of(t)
    instructions = int(np.count_nonzero(t.refs["op"] == FETCH))
    before = _body(header, t.refs[:k][mask[:k]], SWITCH_PARTS[0], path, instructions)
    return before, _body(header, t.refs[k:][mask[k:]], SWITCH_PARTS[1], path, 0)


def _body(header: dict, refs: np.ndarray, name: str, path: str, instructions: int) -> RecordedBody:
    """A RecordedBody of `refs` (a call's body references) in the recording at `path`."""
    keep = ~np.isin(refs["region"], (_R["other"],))
    ranges = Layout.from_header(header["regions"]).ranges
    syms = sorted((int(a), str(t)) for a, t, _ in header["symbols"])
    addrs = np.array([a for a, _ in syms], dtype=np.uint64)
    ro_sym = np.array([t in "rR" for _, t in syms] + [False], dtype=bool)
    at = np.searchsorted(addrs, refs["vaddr"], side="right") - 1  # the symbol each address is in
    readonly = (refs["region"] == _R["kernel_data"]) & ro_sym[np.where(at >= 0, at, len(syms))]
    return RecordedBody(
        name,
        Path(path).name,
        refs["vaddr"][keep].copy(),
        refs["op"][keep].copy(),
        refs["region"][keep].copy(),
        {k: list(v) for k, v in ranges.items()},
        int(np.count_nonzero(~keep)),
        readonly[keep].copy(),
        instructions,
    )


@dataclass
class _Fold:
    """Real pages onto a window of model pages: by offset modulo the window, then the next free."""

    lo: int  # first model page (page number)
    pages: int
    to: dict[int, int] = field(default_factory=dict)
    used: set[int] = field(default_factory=set)

    def page(self, offset_page: int) -> int:
        got = self.to.get(offset_page)
        if got is None:
            if len(self.used) >= self.pages:
                raise ValueError("recorded kernel side: more distinct pages than the model's window has")
            k = offset_page % self.pages
            while self.lo + k in self.used:
                k = (k + 1) % self.pages
            got = self.to[offset_page] = self.lo + k
            self.used.add(got)
        return got


@dataclass
class RecordedSide:
    """Recorded syscall bodies emitted into one `EntryModel` (set as `em.kernel_side`)."""

    em: EntryModel
    kernel: str = DEFAULT_KERNEL
    bodies: dict[str, RecordedBody | None] = field(default_factory=dict)
    _frames: dict[tuple[int, int], int] = field(default_factory=dict)
    _vmalloc_next: int = 0
    _user: dict[int, int] = field(default_factory=dict)
    # (name, task pid, user pages) -> the line-merged events as EventBuilder rows: a call's mapping
    # is the same every time once its pages have their model frames
    _emitted: dict[tuple[str, int, tuple[int, ...]], list[tuple[int, int, int, int, int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lay = self.em.lay
        k0 = lay.kernel_base >> PAGE_4K
        text_pages = (lay.section("text").end - lay.kernel_base) >> PAGE_4K
        ro_lo = (lay.section("rodata").start - lay.kernel_base) >> PAGE_4K
        rw_lo = (lay.section("data").start - lay.kernel_base) >> PAGE_4K
        self._text = _Fold(k0, text_pages)
        # read-only data onto the model's .rodata, the rest onto its .data and .bss (writable)
        self._rodata = _Fold(k0 + ro_lo, rw_lo - ro_lo)
        self._rwdata = _Fold(k0 + rw_lo, (lay.kernel_end >> PAGE_4K) - k0 - rw_lo)
        self._ro_lo, self._rw_lo = ro_lo, rw_lo

    def body(self, name: str) -> RecordedBody | None:
        if name not in self.bodies:
            if name in SWITCH_PARTS:
                path = recording_path(self.kernel, "context_switch")
                parts = load_switch(str(path)) if path else (None, None)
                self.bodies.update(zip(SWITCH_PARTS, parts, strict=True))
            else:
                path = recording_path(self.kernel, name)
                self.bodies[name] = load_body(str(path), name) if path else None
        return self.bodies[name]

    def has(self, name: str) -> bool:
        if name == "context_switch":
            return self.body(SWITCH_PARTS[0]) is not None
        return self.body(name) is not None

    def instructions(self, name: str, *, pti: bool) -> int:
        """The recorded kernel's instructions for one `name` transition, entry path included: of
        the pti=on recording when `pti`, else of the nopti one (its entry has no CR3 switch); the
        pti=on count when there is no nopti recording."""
        if name == "context_switch":
            path = recording_path(self.kernel, name, pti=pti) or recording_path(self.kernel, name)
            if path is None:
                raise KeyError(name)
            return load_switch(str(path))[0].instructions
        path = None if pti else recording_path(self.kernel, name, pti=False)
        if path is None:
            b = self.body(name)
            if b is None:
                raise KeyError(name)
            return b.instructions
        return load_body(str(path), name).instructions

    # ---- addresses -------------------------------------------------------------------------------
    def _frame(self, key: tuple[int, int]) -> int:
        """A fresh direct-map page for real page `key` (region, page), the same one every call."""
        va = self._frames.get(key)
        if va is None:
            # a kernel allocation (GFP_KERNEL: nonsensitive under asi, the ASI RFC's default)
            pa = self.em.kernel.alloc_kernel_pages(1, "recorded kernel object")
            va = self._frames[key] = self.em.lay.page_offset_base + pa
        return va

    def _vmalloc(self, key: tuple[int, int]) -> int:
        va = self._frames.get(key)
        if va is None:
            k = self.em.kernel
            va = k.layout.vmalloc_base + VMALLOC_OFFSET + self._vmalloc_next * PAGE_SIZE
            self._vmalloc_next += 1
            pa = k.mem.alloc(FrameKind.DATA, "recorded vmalloc page")
            k.init.kernel_pt.map(va, pa, PAGE_SIZE, int(PAGE_KERNEL & ~PTE.G), page_size=PAGE_SIZE)
            self._frames[key] = va
        return va

    def _cea(self, off: int) -> int:
        """A CPU entry area offset: page 0 the read-only IDT, then CPU 0's area, whose first pages
        are the GDT, the entry stack and the TSS in Linux (struct cpu_entry_area,
        arch/x86/include/asm/cpu_entry_area.h) and in the model (kaiser.linux.cea)."""
        if off < PAGE_SIZE:
            return self.em.lay.cpu_entry_area_base + off
        page, low = divmod(off - PAGE_SIZE, PAGE_SIZE)
        cpu = self.em.cpu
        piece = ("gdt", "entry stack")[page] if page < 2 else "tss"
        base = cpu.cea_layout.offset(piece) + (max(page - 2, 0) * PAGE_SIZE)
        return cpu.cea + base + low

    def _map(self, b: RecordedBody, task: Task, user_buf: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Model addresses of `b`'s references (and a mask of those kept)."""
        em = self.em
        text0 = b.ranges["kernel_text"][0][0]
        stack_refs = b.vaddr[b.region == _R["task_stack"]]
        own = int(stack_refs[0]) // THREAD_SIZE if len(stack_refs) else -1
        pcpu0 = b.ranges["percpu"][0][0]
        dmap0 = b.ranges["direct_map"][0][0]
        cea0 = b.ranges["cpu_entry_area"][0][0]
        out = np.zeros(len(b.vaddr), dtype=np.uint64)
        keep = np.ones(len(b.vaddr), dtype=bool)
        for i, (va, reg, ro) in enumerate(zip(b.vaddr.tolist(), b.region.tolist(), b.readonly.tolist(), strict=True)):
            low = va & (PAGE_SIZE - 1)
            if reg in (_R["kernel_text"], _R["entry_text"]):
                out[i] = (self._text.page((va - text0) >> PAGE_4K) << PAGE_4K) | low
            elif reg == _R["kernel_data"]:
                fold, lo = (self._rodata, self._ro_lo) if ro else (self._rwdata, self._rw_lo)
                out[i] = (fold.page(((va - text0) >> PAGE_4K) - lo) << PAGE_4K) | low
            elif reg == _R["task_stack"]:
                if va // THREAD_SIZE == own:
                    out[i] = task.stack + va % THREAD_SIZE
                else:
                    out[i] = self._vmalloc((reg, va >> PAGE_4K)) | low
            elif reg == _R["percpu"]:
                off = va - pcpu0
                out[i] = em.percpu(off) if off < PERCPU_PAGES * PAGE_SIZE else self._frame((reg, off >> PAGE_4K)) | low
            elif reg == _R["direct_map"]:
                out[i] = self._frame((reg, (va - dmap0) >> PAGE_4K)) | low
            elif reg == _R["cpu_entry_area"]:
                out[i] = self._cea(va - cea0)
            elif reg == _R["user"] and user_buf:
                page = va >> PAGE_4K
                slot = self._user.setdefault(page, len(self._user))
                out[i] = (user_buf[slot % len(user_buf)] & ~(PAGE_SIZE - 1)) | low
            else:
                keep[i] = False
        return out, keep

    def mapped(self, name: str, task: Task, user_buf: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The model addresses and recorded ops of `name`'s body for `task` (references the model
        has no place for left out), before the per-line merge."""
        b = self.body(name)
        if b is None:
            raise KeyError(name)
        va, keep = self._map(b, task, list(user_buf or ()))
        return va[keep], b.op[keep]

    def emit(self, name: str, task: Task, user_buf: list[int] | None = None) -> int:
        """Append `name`'s recorded body to the model's stream (kernel mode, whatever CR3 the
        variant's entry left loaded); the number of events emitted."""
        key = (name, task.pid, tuple(user_buf or ()))
        events = self._emitted.get(key)
        if events is None:
            va, op = self.mapped(name, task, user_buf)
            line = va >> np.uint64(LINE)
            new = np.ones(len(va), dtype=bool)
            new[1:] = (line[1:] != line[:-1]) | (op[1:] != op[:-1])
            pairs = [(a, _OP[o]) for a, o in zip(va[new].tolist(), op[new].tolist(), strict=True)]
            events = self._emitted[key] = self.em.out.kernel_rows(pairs)
        self.em.out.add_rows(events)  # as out.access(a, op, 0) for each, in one extend
        self.em.ops.kernel_refs += len(events)
        return len(events)


def pages_report(names: list[str], recorded: set[str], kernel: str = DEFAULT_KERNEL) -> dict[str, dict[str, object]]:
    """Per syscall of `names` that has a recording: the distinct 4 KiB pages of the recorded body
    a call (code, data), the file, the references the model has no place for, and whether the
    run priced that body (`kernel_side`: "recorded" for the names in `recorded`) or entry.py's."""
    out: dict[str, dict[str, object]] = {}
    for name in names:
        path = recording_path(kernel, name)
        if path is None:
            continue
        if name == "context_switch":  # both parts of the switching call
            before, after = load_switch(str(path))
            b = before
            both = np.concatenate([before.vaddr, after.vaddr]) >> np.uint64(PAGE_4K)
            fetch = np.concatenate([before.op, after.op]) == FETCH
            code, data = len(np.unique(both[fetch])), len(np.unique(both[~fetch]))
        else:
            b = load_body(str(path), name)
            code, data = b.pages()
        out[name] = {
            "code_4k": code,
            "data_4k": data,
            "recording": b.recording,
            "dropped_refs": b.dropped,
            "kernel_side": "recorded" if name in recorded else "modelled",
        }
    return out
