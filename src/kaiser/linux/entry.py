"""Kernel entry and exit, system calls, interrupts and context switches, compiled to event streams.

`EntryModel` is one CPU running a booted `Kernel`. Each method appends to one `EventBuilder` what
the CPU does for that transition under the variant: the instruction fetches of the entry code at
the address it runs from (entry text, the 4.15 CEA trampoline, or our fixed CEA stub) under
whichever CR3 is loaded at that point, the stack, TSS and per-CPU references, the CR3 writes the
calling.h macros compute (linux-kpti.md §4.2, §4.3), and the kernel-side references of each
modelled system call, resolved per task (kernel text, the task's vmalloc'd stack, per-CPU data and
the call's own objects in the direct map; the catalogue of calls and what they touch is
`kaiser.linux.syscalls`). Switches between processes go through `kaiser.linux.asid`.

The CPU's CR3 and `cpu_tlbstate` are mirrored at compile time (`CpuTlbState`), so the stream is
exactly what the kernel would execute in that order; replaying it (either path) prices it.

Granularity: one event per distinct code or data location a step touches, not per instruction or
cache line. TLB behaviour depends only on which pages are touched, in which order, under which
CR3; the cost model charges the events that hit at `mem_ref` cycles each, identically in every
variant (`kaiser.cost.model`). Entry-code offsets below are CHOSEN: only the page each lies in
matters, and each is placed so the paths touch the number of distinct pages a real kernel does
(entry_64.S fits in a few pages of .entry.text).

KAISER-era variants (`kaiser-rfc`, `kaiser-global`) enter on the 4.14 path that the IAIK patch
modified: the SYSCALL entry spills a scratch register into a user-mapped per-CPU variable before
switching CR3 (§4.3 "KAISER-era"), and the task stack, mapped in the user tables, is where the
CPU pushes interrupt frames and where the exit path pops its last registers after switching back.
`--pcid` applies to them as in Dave Hansen's v1 posting, which added PCID on top of the IAIK patch
(§7.2: lseek1 at 3.0 M/s with PCID, 2.2 M/s without): the same kPCID/uPCID pair, NOFLUSH and
deferred user flush as the merged macros. `--no-pcid` is the IAIK original (toggle bit 12).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from kaiser.linux.asi import AsiCpu
from kaiser.linux.asid import (
    KERN_PCID_MASK,
    PTI_USER_PCID_MASK,
    PTI_USER_PGTABLE_AND_PCID_MASK,
    PTI_USER_PGTABLE_MASK,
    ContextIds,
    CpuTlbState,
    initialize_tlbstate_and_flush,
    switch_mm_irqs_off,
    write_cr3,
)
from kaiser.linux.kernel import THREAD_SIZE, Kernel, Task
from kaiser.linux.syscalls import (
    IRQ_HANDLER,
    NMI_HANDLER,
    PAGE_FAULT_HANDLER,
    PERCPU_HOT,
    PERCPU_KAISER_SCRATCH,
    PERCPU_TLBSTATE,
    RODATA_SYS_CALL_TABLE,
    SCHEDULE,
    TEXT_OFFSETS,
    Copy,
    Obj,
    Ref,
    SyscallSpec,
    get_syscall,
)
from kaiser.linux.variants import Delivery, Entry, Part
from kaiser.x86.bits import CR3_NOFLUSH, RFLAGS
from kaiser.x86.cpu import CpuState
from kaiser.x86.events import EventBuilder
from kaiser.x86.physmem import PAGE_SIZE
from kaiser.x86.rights import Op

# ---- where code and data live (CHOSEN offsets; see the module docstring) ---------------------------
# .entry.text (16 KiB in our layout, 4 pages): entry_64.S.
ENTRY_TEXT_OFFSETS: Final = {
    "entry_SYSCALL_64": 0x0000,
    "syscall_return_via_sysret": 0x0400,
    "entry_SYSCALL_64_stage2": 0x0800,  # 4.15-4.19: where the CEA trampoline jumps
    "asm_common_interrupt": 0x1000,  # idtentry stubs + error_entry
    "swapgs_restore_regs_and_return_to_usermode": 0x1800,
    "asm_exc_nmi": 0x2000,  # nmi / paranoid_entry / paranoid_exit
}
FRED_KERNEL_ENTRY: Final = 256  # events from CPL 0 enter at the configured entry point + 256 (FRED spec)
FRED_FRAME: Final = 64  # the FRED stack frame: error code, RIP, CS, RFLAGS, RSP, SS, event data, reserved
TSS_SP0, TSS_SP1, TSS_SP2 = 4, 12, 20  # offsets in struct x86_hw_tss
PT_REGS_SIZE: Final = 168  # sizeof(struct pt_regs)
IRET_FRAME: Final = 40  # SS, RSP, RFLAGS, CS, RIP
VECTOR_NMI, VECTOR_PF, VECTOR_DEVICE = 2, 14, 0x22
USER_CPL: Final = 3


@dataclass
class TaskObjects:
    """Direct-map addresses of one task's kernel objects (allocated on first use)."""

    task_struct: int
    files: int
    file: int
    mm: int


@dataclass
class OpCounts:
    """Operations compiled into the stream, for the cost model's per-operation charges."""

    syscalls: int = 0
    syscalls_by_name: dict[str, int] = field(default_factory=dict)
    body_cycles: float = 0.0  # sum of SyscallSpec.body_cycles
    interrupts: int = 0  # device interrupts (from user or kernel)
    nmis: int = 0
    asi_faults: int = 0  # asi: kernel accesses the ASI tables lack, each an asi_exit (kaiser.linux.asi)
    asi_enters: int = 0  # asi: asi_enter CR3 writes on the way to user mode, each with its flush
    exceptions: int = 0  # page faults
    context_switches: int = 0
    user_entries: int = 0  # kernel entries from user mode (each with one exit): 2 SWAPGS each
    user_refs: int = 0
    kernel_refs: int = 0
    work_cycles: float = 0.0  # user computation without memory references (workload knob)
    # Transitions whose kernel side came from a recording (`kernel_side`): priced as the real
    # kernel's instructions at `kernel_cpi` (kaiser.cost.model), not per reference and per event.
    recorded_instructions: int = 0  # the recording's kernel instructions of those transitions
    recorded_refs: int = 0  # kernel references emitted for them (entry path and body): in `kernel_refs`
    recorded_syscalls: int = 0
    recorded_interrupts: int = 0  # device interrupts from user mode
    recorded_exceptions: int = 0  # page faults
    recorded_switches: int = 0  # context switches inside a recorded switching call (pipe read)

    def add(self, other: OpCounts) -> None:
        for name, value in vars(other).items():
            if name == "syscalls_by_name":
                for k, v in value.items():
                    self.syscalls_by_name[k] = self.syscalls_by_name.get(k, 0) + v
            else:
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, object]:
        return dict(vars(self))


class KernelSide(Protocol):
    """Where system call bodies come from instead of `SyscallSpec.refs` (kaiser.record.replay:
    a recording's); `has(name)` false leaves that call modelled."""

    def has(self, name: str) -> bool: ...

    def emit(self, name: str, task: Task, user_buf: list[int] | None = None) -> int: ...

    def instructions(self, name: str, *, pti: bool) -> int:
        """The recorded kernel's instructions for one `name` transition, entry and exit included
        (of the pti=on recording when `pti`, else of the nopti one)."""
        ...


class EntryModelError(RuntimeError):
    """A transition asked for in the wrong mode (a syscall from kernel mode, ...)."""


class EntryModel:
    """One CPU of `kernel` compiling transitions into `self.out`.

    Start with `start(task)` (returns the CPU state the replay begins in: `task`'s kernel CR3, in
    kernel mode), then `return_to_user()`; after that user work, `syscall`, `interrupt`, `nmi`,
    `page_fault` and (inside the kernel) `context_switch` can be chained in any legal order.
    """

    def __init__(self, kernel: Kernel, cpu: int = 0, *, ids: ContextIds | None = None, invpcid: bool = True) -> None:
        self.kernel = kernel
        self.variant = kernel.variant
        self.cpu = kernel.cpus[cpu]
        self.lay = kernel.layout
        self.isolating = kernel.variant.isolating and not kernel.variant.asi  # asi: no PTI switch
        self.kaiser_era = kernel.variant.maps(Part.TASK_STACKS)
        self.entry = kernel.variant.entry
        self.fred = kernel.variant.delivery is Delivery.FRED  # FRED event delivery (the fred variant)
        self.ids = ids or ContextIds()
        self.tlb = CpuTlbState(
            pti=self.isolating, pcid=kernel.config.pcid, invpcid=invpcid, pge=kernel.config.pge, cr4=kernel.cr4()
        )
        self.out = EventBuilder()
        # asi: the ASI CR3 loaded from the first return to user until an ASI fault (kaiser.linux.asi)
        self.asi_cpu = AsiCpu(kernel.asi, self.tlb, self.lay.user_end) if kernel.asi is not None else None
        self.ops = OpCounts()
        self.current: Task | None = None
        self.in_user = False
        self._objects: dict[int, TaskObjects] = {}
        self._initial: CpuState | None = None
        # the pipe's buffer page is GFP_HIGHUSER (pipe_write's alloc_page), which carries
        # __GFP_SENSITIVE under ASI; its pipe_inode_info page is modelled with it (CHOSEN)
        self._pipe = self._alloc(2, "pipe", sensitive=True)
        self._device = self._alloc(1, "device")
        self.kernel_side: KernelSide | None = None  # recorded bodies (None: every call modelled)
        self.recorded_calls: dict[str, int] = {}  # syscalls whose body came from `kernel_side`
        # Event index ranges [start, end) of `out` priced as recorded instructions (the entry path,
        # body and exit of each recorded transition): the cost model's split of the cache counters.
        self.recorded_spans: list[tuple[int, int]] = []
        self.track_spans = False  # keep `recorded_spans` (kaiser.cost.run; a long trace would grow it)
        self._entry_span: tuple[int, int, int] | None = None  # the last entry: start, end, kernel refs
        self._exit_covered = False  # the current syscall's body was recorded: so is its exit
        self._pending_switch: str | None = None  # a recorded switch's second part: this syscall's body

    # ---- addresses -----------------------------------------------------------------------------
    def _alloc(self, pages: int, tag: str, *, sensitive: bool = False) -> int:
        """Direct-map address of a kernel allocation: GFP_KERNEL, or `sensitive` (asi: kept out of
        the ASI tables, kaiser.linux.asi)."""
        return self.lay.page_offset_base + self.kernel.alloc_kernel_pages(pages, tag, sensitive=sensitive)

    def objects(self, task: Task) -> TaskObjects:
        obj = self._objects.get(task.pid)
        if obj is None:
            base = self._alloc(4, f"task{task.pid} objects")
            obj = self._objects[task.pid] = TaskObjects(
                base, base + PAGE_SIZE, base + 2 * PAGE_SIZE, base + 3 * PAGE_SIZE
            )
        return obj

    def entry_text(self, name: str) -> int:
        return self.lay.entry_text[0] + ENTRY_TEXT_OFFSETS[name]

    def text(self, name: str, offset: int = 0) -> int:
        return self.lay.kernel_base + TEXT_OFFSETS[name] + offset

    @property
    def cea_stub(self) -> int:
        """The per-CPU SYSCALL trampoline (4.15) / our fixed entry stubs: a page of the CEA."""
        offset = self.cpu.cea_layout.trampoline
        if offset is None:
            raise ValueError(f"{self.kernel.variant.name}: its entry area has no stub page")
        return self.cpu.cea + offset

    @property
    def cea_tss(self) -> int:
        return self.cpu.cea + self.cpu.cea_layout.offset("tss")

    @property
    def entry_stack_top(self) -> int:
        return self.cpu.cea + self.cpu.cea_layout.offset("entry stack") + PAGE_SIZE

    @property
    def ist_stack_top(self) -> int:
        return self.cpu.cea + self.cpu.cea_layout.stack_top("NMI")

    def percpu(self, offset: int) -> int:
        return self.cpu.percpu_va + offset

    def stack_top(self, task: Task) -> int:
        return task.stack + THREAD_SIZE

    def _resolve(self, ref: Ref, task: Task) -> int:
        o = ref.obj
        if o is Obj.TEXT:
            return self.text(ref.name, ref.offset)
        if o is Obj.RODATA:
            return self.lay.section("rodata").start + ref.offset
        if o is Obj.PERCPU:
            return self.percpu(ref.offset)
        if o is Obj.STACK:
            return self.stack_top(task) - PT_REGS_SIZE - ref.offset
        if o is Obj.PIPE:
            return self._pipe + ref.offset
        objs = self.objects(task)
        base = {
            Obj.TASK: objs.task_struct,
            Obj.PARENT: self.objects_parent(task),
            Obj.FILES: objs.files,
            Obj.FILE: objs.file,
            Obj.MM: objs.mm,
        }[o]
        return base + ref.offset

    def objects_parent(self, task: Task) -> int:
        """init's task_struct stands for every modelled process's parent."""
        if 0 not in self._objects:
            base = self._alloc(1, "init task_struct")
            self._objects[0] = TaskObjects(base, base, base, base)
        return self._objects[0].task_struct

    # ---- emitting ------------------------------------------------------------------------------
    def _k(self, va: int, op: Op = Op.READ, *, implicit: bool = False) -> None:
        """A reference made in kernel mode (CPL 0), under whatever CR3 is loaded."""
        if self.asi_cpu is not None:
            self._asi_fault_if_unmapped(va, op, implicit=implicit)
        self.out.access(va, op, 0, implicit=implicit)
        self.ops.kernel_refs += 1

    def _asi_fault_if_unmapped(self, va: int, op: Op, *, implicit: bool = False) -> None:
        """asi: a kernel access the ASI tables lack faults under the ASI CR3 (the access is
        emitted and walks to its fault), and the ASI fault path's `asi_exit` loads the full
        tables before it is retried (successors.md ASI: only page faults cause an exit)."""
        asi = self.asi_cpu
        assert asi is not None
        pt = self._task().mm.pgd.user_pt
        if asi.entered and pt is not None and not asi.maps(pt, va):
            self.out.access(va, op, 0, implicit=implicit)
            asi.exit(self.out)
            self.ops.asi_faults += 1

    def _refs(self, refs: Iterable[Ref], task: Task) -> None:
        for ref in refs:
            self._k(self._resolve(ref, task), ref.op)

    def _recorded_body(self, name: str, task: Task, user_buf: Sequence[int] = ()) -> bool:
        """Emit `kernel_side`'s body of transition `name` if it has one (then True), and count the
        transition's entry (the last one, just made) and body as recorded."""
        if self.kernel_side is None or not self.kernel_side.has(name):
            return False
        start, refs0 = len(self.out), self.ops.kernel_refs
        self._emit_recorded(name, task, user_buf)
        self.recorded_calls[name] = self.recorded_calls.get(name, 0) + 1
        if self._entry_span is not None:
            s, e, n = self._entry_span
            self._cover(s, e, n)
            self._entry_span = None
        self._cover(start, len(self.out), self.ops.kernel_refs - refs0)
        self.ops.recorded_instructions += self.kernel_side.instructions(name, pti=self.isolating)
        self._exit_covered = True
        return True

    def _emit_recorded(self, name: str, task: Task, user_buf: Sequence[int]) -> None:
        """`kernel_side.emit`; under asi through a scratch stream whose kernel accesses then pass
        the ASI check one by one (a recorded body may touch sensitive memory too)."""
        assert self.kernel_side is not None
        if self.asi_cpu is None:
            self.kernel_side.emit(name, task, list(user_buf))
            return
        out, self.out = self.out, EventBuilder()
        try:
            self.kernel_side.emit(name, task, list(user_buf))
        finally:
            scratch, self.out = self.out, out
        ops = (Op.READ, Op.WRITE, Op.FETCH)
        for kind, cpl, aux, va, _ in scratch.array().tolist():
            if kind > 2:
                raise EntryModelError(f"a recorded body emitted event kind {kind}; only accesses are expected")
            if cpl == 0:
                self._asi_fault_if_unmapped(va, ops[kind], implicit=bool(aux))
            self.out.access(va, ops[kind], cpl, implicit=bool(aux))

    def _recorded_switch_before(self, prev: Task) -> bool:
        """The first part of the recorded switching call (the blocking read up to switch_mm), with
        the entry it followed, if `kernel_side` has one (then True)."""
        side = self.kernel_side
        if side is None or not side.has("context_switch"):
            return False
        if self._entry_span is not None:
            s, e, n = self._entry_span
            self._cover(s, e, n)
            self._entry_span = None
        start, refs0 = self._mark()
        side.emit("context_switch:before", prev)
        self._cover(start, len(self.out), self.ops.kernel_refs - refs0)
        return True

    def _recorded_switch_after(self, spec: SyscallSpec, task: Task, user_buf: Sequence[int]) -> None:
        """The second part of the recorded switching call: `task` (the next process) returning
        through the body of `spec`, the call it was blocked in."""
        side = self.kernel_side
        if side is None or spec.name != self._pending_switch:
            raise EntryModelError(f"{spec.name} body after a recorded switch out of {self._pending_switch}")
        self._pending_switch = None
        start, refs0 = self._mark()
        side.emit("context_switch:after", task, list(user_buf))
        self._cover(start, len(self.out), self.ops.kernel_refs - refs0)
        self.ops.recorded_instructions += side.instructions("context_switch", pti=self.isolating)
        for name in (spec.name, "context_switch"):
            self.recorded_calls[name] = self.recorded_calls.get(name, 0) + 1
        self._exit_covered = True
        self.ops.syscalls += 1
        self.ops.recorded_syscalls += 1
        self.ops.syscalls_by_name[spec.name] = self.ops.syscalls_by_name.get(spec.name, 0) + 1
        self.ops.body_cycles += spec.recorded_cycles

    def _cover(self, start: int, end: int, refs: int) -> None:
        """Events [start, end) are part of a recorded transition (merged with the last range)."""
        self.ops.recorded_refs += refs
        if end <= start or not self.track_spans:
            return
        spans = self.recorded_spans
        if spans and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))

    def _mark(self) -> tuple[int, int]:
        return len(self.out), self.ops.kernel_refs

    def _entered(self, mark: tuple[int, int]) -> None:
        """An entry from user mode ended: remember its events for `_recorded_body`."""
        self._entry_span = (mark[0], len(self.out), self.ops.kernel_refs - mark[1])
        self._exit_covered = False

    def _exited(self, mark: tuple[int, int]) -> None:
        """An exit to user mode ended: covered when its transition's body was recorded."""
        if self._exit_covered:
            self._cover(mark[0], len(self.out), self.ops.kernel_refs - mark[1])
        self._exit_covered = False
        self._entry_span = None

    def _task(self) -> Task:
        if self.current is None:
            raise EntryModelError("no current task: call start(task) first")
        return self.current

    def _need_user(self, what: str) -> Task:
        if not self.in_user:
            raise EntryModelError(f"{what} needs the CPU in user mode")
        return self._task()

    def _need_kernel(self, what: str) -> Task:
        if self.in_user:
            raise EntryModelError(f"{what} needs the CPU in kernel mode")
        return self._task()

    # ---- the calling.h macros (linux-kpti.md §4.2) ------------------------------------------------
    def switch_to_kernel_cr3(self) -> None:
        """SWITCH_TO_KERNEL_CR3: read CR3; with PCID set NOFLUSH; clear bits 11 and 12; write.
        Patched out without PTI (ALTERNATIVE on X86_FEATURE_PTI)."""
        if not self.isolating:
            return
        value = self.tlb.cr3
        if self.tlb.pcid:
            value |= CR3_NOFLUSH
        value &= ~PTI_USER_PGTABLE_AND_PCID_MASK
        write_cr3(self.tlb, self.out, value)

    def _user_cr3_value(self, cr3: int) -> int:
        """The CR3 the return to user writes: no PCID → set bit 12 (a flushing write); PCID →
        NOFLUSH unless the kPCID's bit is pending in user_pcid_flush_mask (then clear it and
        flush), and set bits 11 and 12."""
        if not self.tlb.pcid:
            return cr3 | PTI_USER_PGTABLE_MASK
        self._k(self.percpu(PERCPU_TLBSTATE))  # bt \scratch, THIS_CPU_user_pcid_flush_mask
        kpcid = cr3 & KERN_PCID_MASK
        if self.tlb.user_pcid_flush_mask & (1 << kpcid):
            self.tlb.user_pcid_flush_mask &= ~(1 << kpcid)
        else:
            cr3 |= CR3_NOFLUSH
        return cr3 | PTI_USER_PCID_MASK | PTI_USER_PGTABLE_MASK

    def switch_to_user_cr3(self) -> None:
        """SWITCH_TO_USER_CR3_NOSTACK / _STACK (the stack variant's spill is emitted by the caller)."""
        if not self.isolating:
            return
        write_cr3(self.tlb, self.out, self._user_cr3_value(self.tlb.cr3))

    def save_and_switch_to_kernel_cr3(self) -> int:
        """SAVE_AND_SWITCH_TO_KERNEL_CR3 (paranoid entry): switch only if bit 12 says user CR3."""
        saved = self.tlb.cr3
        if self.isolating and saved & PTI_USER_PGTABLE_MASK:
            self.switch_to_kernel_cr3()
        return saved

    def restore_cr3(self, saved: int) -> None:
        """RESTORE_CR3 (paranoid exit): no PCID → write `saved` back; PCID → kernel CR3 gets
        NOFLUSH, a user CR3 gets the pending-flush check of SWITCH_TO_USER_CR3."""
        if not self.isolating:
            return
        if not self.tlb.pcid:
            write_cr3(self.tlb, self.out, saved)
            return
        if not saved & PTI_USER_PGTABLE_MASK:
            write_cr3(self.tlb, self.out, saved | CR3_NOFLUSH)
            return
        self._k(self.percpu(PERCPU_TLBSTATE))
        kpcid = saved & KERN_PCID_MASK
        if self.tlb.user_pcid_flush_mask & (1 << kpcid):
            self.tlb.user_pcid_flush_mask &= ~(1 << kpcid)
            write_cr3(self.tlb, self.out, saved)
        else:
            write_cr3(self.tlb, self.out, saved | CR3_NOFLUSH)

    # ---- start, user mode --------------------------------------------------------------------------
    def start(self, task: Task) -> CpuState:
        """Put `task`'s mm on this CPU (`initialize_tlbstate_and_flush`, no event) and return the
        register state the replay starts from: kernel mode, `task`'s kernel CR3. RFLAGS.AC is set:
        the model's kernel touches user memory only in copy_{to,from}_user, which run between
        STAC and CLAC, and the event format carries no RFLAGS (SMAP stays on)."""
        initialize_tlbstate_and_flush(self.tlb, None, self.ids.of(task.pid), task.mm.pgd.kernel_pgd)
        self.current = task
        self.in_user = False
        if self.asi_cpu is not None:
            self.asi_cpu.entered = False  # started on the full tables
        self._initial = CpuState(cr3=self.tlb.cr3, cr4=self.kernel.cr4(), rflags=int(RFLAGS.AC | 0x2), cpl=0)
        return self._initial

    def initial_state(self) -> CpuState:
        """The register state `start` returned: where a replay of `self.out` begins."""
        if self._initial is None:
            raise EntryModelError("no current task: call start(task) first")
        return self._initial

    def user(self, reads: Sequence[int] = (), writes: Sequence[int] = (), fetch: int | None = None) -> None:
        """User-mode work: one instruction fetch (the loop's code page) and data references."""
        self._need_user("user work")
        if fetch is not None:
            self.out.access(fetch, Op.FETCH, USER_CPL)
            self.ops.user_refs += 1
        self.out.accesses(reads, Op.READ, USER_CPL)
        self.out.accesses(writes, Op.WRITE, USER_CPL)
        self.ops.user_refs += len(reads) + len(writes)

    def work(self, cycles: float) -> None:
        """User computation that touches no new memory: priced, no events."""
        self.ops.work_cycles += cycles

    # ---- SYSCALL / SYSRET (entry_64.S, §4.3) --------------------------------------------------------
    def syscall_entry(self) -> Task:
        """From SYSCALL to the C handler, per variant."""
        task = self._need_user("SYSCALL")
        mark = self._mark()
        self.in_user = False
        self.ops.user_entries += 1
        top = self.stack_top(task)
        if self.fred:
            self._fred_event(top, from_user=True)
        elif self.entry is Entry.ENTRY_TEXT:
            self._k(self.entry_text("entry_SYSCALL_64"), Op.FETCH)  # under the user CR3
            if self.kaiser_era:  # IAIK: spill RAX to a user-mapped per-CPU slot, switch, then rsp_scratch
                self._k(self.percpu(PERCPU_KAISER_SCRATCH), Op.WRITE)
                self.switch_to_kernel_cr3()
                self._k(self.percpu(PERCPU_HOT + 0x10), Op.WRITE)  # rsp_scratch
            else:  # 4.20+: swapgs; user RSP into TSS.sp2 (its per-CPU page is user-mapped, §3.3)
                self._k(self.cpu.tss_va + TSS_SP2, Op.WRITE)
                self.switch_to_kernel_cr3()
            self._k(self.percpu(PERCPU_HOT + 0x8))  # cpu_current_top_of_stack
        else:  # the CEA trampoline (4.15, two-pgd) or our fixed stub: scratch on the entry stack
            self._k(self.cea_stub, Op.FETCH)
            self._k(self.entry_stack_top - 8, Op.WRITE)
            self.switch_to_kernel_cr3()
            if self.entry is Entry.CEA_TRAMPOLINE:
                self._k(self.cea_tss + TSS_SP1)  # TSS.sp1 = top of the task stack
            else:
                self._k(self.percpu(PERCPU_HOT + 0x8))
            self._k(self.entry_text("entry_SYSCALL_64_stage2"), Op.FETCH)
        if not self.fred:  # FRED: the CPU pushed SS/RSP/flags/CS/RIP itself
            self._k(top - 8, Op.WRITE)  # build pt_regs: user SS/RSP/flags/CS/RIP ...
        self._k(top - PT_REGS_SIZE, Op.WRITE)  # ... down to the GPRs
        self._k(self.text("do_syscall_64"), Op.FETCH)
        self._entered(mark)
        return task

    def syscall_exit(self) -> None:
        """SYSRET path: restore registers, (PTI) move to the trampoline stack, switch CR3, sysretq."""
        task = self._need_kernel("SYSRET")
        mark = self._mark()
        top = self.stack_top(task)
        self._k(self._fred_entry() if self.fred else self.entry_text("syscall_return_via_sysret"), Op.FETCH)
        self._k(top - PT_REGS_SIZE)  # pop the GPRs
        self._return_to_user(task, iret=False)
        self._exited(mark)

    def _return_to_user(self, task: Task, *, iret: bool) -> None:
        """The common tail of SYSRET and IRET to user (entry_64.S, §4.3 steps 4-5)."""
        top = self.stack_top(task)
        name = "swapgs_restore_regs_and_return_to_usermode" if iret else "syscall_return_via_sysret"
        if self.asi_cpu is not None and self.asi_cpu.enter(self.out):  # asi_enter on the way out
            self.ops.asi_enters += 1
        if not self.isolating:
            self._k(top - 8)  # user RSP (and, for IRET, the frame) straight from pt_regs
        elif self.kaiser_era:  # the IAIK exit: switch on the (user-mapped) task stack, then pop
            self.switch_to_user_cr3()
            self._k(top - 8)
            self._k(self.entry_text(name), Op.FETCH)
        else:
            if self.entry is Entry.FIXED_CEA:
                self._k(self.cea_stub, Op.FETCH)  # jump to the stub before switching
            self._k(self.cpu.tss_va + TSS_SP0)  # TSS.sp0 = the trampoline (CEA entry) stack
            self._k(self.entry_stack_top - 8, Op.WRITE)  # push user RSP/RDI (IRET: the frame)
            self.switch_to_user_cr3()
            self._k(self.entry_stack_top - 8)  # pop RDI, RSP under the user CR3
            code = self.cea_stub if self.entry is Entry.FIXED_CEA else self.entry_text(name)
            self._k(code, Op.FETCH)  # swapgs; sysretq / iretq
        self.in_user = True

    def syscall_body(self, spec: SyscallSpec, *, user_buf: Sequence[int] = (), kernel_buf: Sequence[int] = ()) -> None:
        """`do_syscall_64` → the handler: the table read, the handler's references, and for read/
        write-like calls the copy between `user_buf` and `kernel_buf` pages (one reference each)."""
        task = self._need_kernel(f"{spec.name} body")
        if self._pending_switch is not None:
            self._recorded_switch_after(spec, task, user_buf)
            return
        if self._recorded_body(spec.name, task, user_buf):
            # the recorded body: it has its own dispatch (x64_sys_call) and user copies, and its
            # instructions are its work (OpCounts.recorded_instructions)
            self.ops.syscalls += 1
            self.ops.recorded_syscalls += 1
            self.ops.syscalls_by_name[spec.name] = self.ops.syscalls_by_name.get(spec.name, 0) + 1
            self.ops.body_cycles += spec.recorded_cycles
            return
        self._k(self.lay.section("rodata").start + RODATA_SYS_CALL_TABLE + 8 * spec.nr)
        self._refs(spec.refs, task)
        if spec.copy is Copy.TO_USER:
            for k, u in zip(kernel_buf, user_buf, strict=False):
                self._k(k)
                self._k(u, Op.WRITE)
        elif spec.copy is Copy.FROM_USER:
            for k, u in zip(kernel_buf, user_buf, strict=False):
                self._k(u)
                self._k(k, Op.WRITE)
        self.ops.syscalls += 1
        self.ops.syscalls_by_name[spec.name] = self.ops.syscalls_by_name.get(spec.name, 0) + 1
        self.ops.body_cycles += spec.body_cycles

    def syscall(self, name: str, *, user_buf: Sequence[int] = (), kernel_buf: Sequence[int] = ()) -> None:
        """A whole system call from user mode: entry, body, exit."""
        spec = get_syscall(name)
        self.syscall_entry()
        self.syscall_body(spec, user_buf=user_buf, kernel_buf=kernel_buf)
        self.syscall_exit()

    def pipe_buffer(self) -> int:
        return self._pipe + PAGE_SIZE

    # ---- interrupts and exceptions ----------------------------------------------------------------
    def _deliver(self, vector: int, stack_top: int, *, tss: int) -> None:
        """Hardware event delivery: IDT gate, TSS stack pointer, the frame pushed (implicit
        supervisor accesses, SDM Vol. 3A §6.12)."""
        self._k(self.lay.cpu_entry_area_base + 16 * vector, implicit=True)  # the RO IDT alias (§3.4)
        self._k(tss, implicit=True)
        self._k(stack_top - 8, Op.WRITE, implicit=True)
        self._k(stack_top - IRET_FRAME, Op.WRITE, implicit=True)

    def _fred_entry(self, *, kernel: bool = False) -> int:
        """FRED's entry point: IA32_FRED_CONFIG's base for events from user mode, +256 from the
        kernel; the exit path (POP_REGS, ERETU/ERETS) is the same code (entry_64_fred.S)."""
        return self.text("asm_fred_entrypoint_user") + (FRED_KERNEL_ENTRY if kernel else 0)

    def _fred_event(self, stack_top: int, *, from_user: bool) -> None:
        """FRED event delivery (fred.c): no IDT and no TSS read; the frame is pushed on stack level 0
        -- FRED_RSP0, the task stack, for every event from user mode -- or, in the kernel, on the
        current stack or the level's FRED_RSPn (NMI: level 2, the entry area's NMI stack)."""
        self._k(stack_top - 8, Op.WRITE, implicit=True)
        self._k(stack_top - FRED_FRAME, Op.WRITE, implicit=True)
        self._k(self._fred_entry(kernel=not from_user), Op.FETCH)

    def _hw_tss(self) -> int:
        """The TSS the CPU reads: the CEA alias (4.15+); KAISER's per-CPU user-mapped TSS."""
        return (self.cpu.tss_va if self.kaiser_era else self.cea_tss) + TSS_SP0

    def _idt_entry_code(self, name: str) -> int:
        """Where an IDT vector's stub runs from: entry text, or the CEA page where the user tables
        do not map entry text (our fixed stubs; two-pgd with 5-level paging)."""
        if self.entry is Entry.FIXED_CEA or not self._entry_text_user_mapped():
            return self.cea_stub
        return self.entry_text(name)

    def _entry_text_user_mapped(self) -> bool:
        if not self.isolating:
            return True
        if self.variant.maps(Part.ENTRY_TEXT):
            return True
        return self.variant.maps(Part.FIXMAP_PGD) and not self.kernel.config.la57

    def _enter_from_user(self, vector: int, stub: str) -> Task:
        """An interrupt or exception from user mode: delivery on TSS.sp0 (CEA entry stack; the
        task stack in the KAISER era), error_entry (swapgs, SWITCH_TO_KERNEL_CR3), sync_regs."""
        task = self._need_user("an interrupt from user mode")
        self.in_user = False
        self.ops.user_entries += 1
        top = self.stack_top(task)
        if self.fred:  # the frame lands on the task stack: no sync_regs, no CR3 switch
            self._fred_event(top, from_user=True)
            self._k(top - PT_REGS_SIZE, Op.WRITE)
            return task
        frame_top = top if self.kaiser_era else self.entry_stack_top  # 4.15+: always the entry stack
        self._deliver(vector, frame_top, tss=self._hw_tss())
        self._k(self._idt_entry_code(stub), Op.FETCH)
        self.switch_to_kernel_cr3()
        if self.entry is Entry.FIXED_CEA or not self._entry_text_user_mapped():
            self._k(self.entry_text(stub), Op.FETCH)  # continue in entry text under the kernel CR3
        if frame_top != top:  # sync_regs: move the frame to the task stack
            self._k(self.percpu(PERCPU_HOT + 0x8))
            self._k(frame_top - IRET_FRAME)
        self._k(top - 8, Op.WRITE)
        self._k(top - PT_REGS_SIZE, Op.WRITE)
        return task

    def _exit_to_user_iret(self) -> None:
        task = self._need_kernel("IRET to user")
        code = self._fred_entry() if self.fred else self.entry_text("swapgs_restore_regs_and_return_to_usermode")
        self._k(code, Op.FETCH)  # FRED: ERETU
        self._k(self.stack_top(task) - PT_REGS_SIZE)
        self._return_to_user(task, iret=True)

    def return_to_user(self) -> None:
        """Leave the kernel for `current`'s user mode by IRET (ret_from_fork / after exec)."""
        self._exit_to_user_iret()

    def interrupt(self) -> None:
        """A device interrupt. From user: the full entry/exit with CR3 switches; from kernel: no
        CR3 change (the kernel CR3 is already loaded), frame on the current stack."""
        task = self._task()
        if self.in_user:
            mark = self._mark()
            self._enter_from_user(VECTOR_DEVICE, "asm_common_interrupt")
            self._entered(mark)
            if self._recorded_body("interrupt", task):
                self.ops.recorded_interrupts += 1
            else:
                self._refs(IRQ_HANDLER, task)
                self._k(self._device)
            self.ops.interrupts += 1
            mark = self._mark()
            self._exit_to_user_iret()
            self._exited(mark)
            return
        top = self.stack_top(task) - PT_REGS_SIZE - 0x400  # interrupted kernel frame
        if self.fred:  # stack level 0 in the kernel: the current stack
            self._fred_event(top, from_user=False)
        else:
            self._k(self.lay.cpu_entry_area_base + 16 * VECTOR_DEVICE, implicit=True)
            self._k(top - 8, Op.WRITE, implicit=True)
            self._k(self.entry_text("asm_common_interrupt"), Op.FETCH)
        self._refs(IRQ_HANDLER, task)
        self._k(self._device)
        self._k(top - 8)  # iretq
        self.ops.interrupts += 1

    def nmi(self) -> None:
        """An NMI. From kernel: the paranoid path, SAVE_AND_SWITCH_TO_KERNEL_CR3 (no write: bit 12
        clear) and RESTORE_CR3 (a write under PTI: flushing without PCID, NOFLUSH with). From user:
        the ordinary switch on entry and SWITCH_TO_USER_CR3 on exit (entry_64.S asm_exc_nmi)."""
        task = self._task()
        if self.fred:
            self._fred_nmi(task)
            return
        if self.in_user:
            self._need_user("NMI")
            self.in_user = False
            self.ops.user_entries += 1
            self._deliver(VECTOR_NMI, self.ist_stack_top, tss=self._hw_tss())
            self._k(self._idt_entry_code("asm_exc_nmi"), Op.FETCH)
            self.switch_to_kernel_cr3()
            self._k(self.entry_text("asm_exc_nmi"), Op.FETCH)
            self._k(self.stack_top(task) - 8, Op.WRITE)  # the frame moves to the thread stack
            self._refs(NMI_HANDLER, task)
            self.ops.nmis += 1
            self._exit_to_user_iret()
            return
        self._deliver(VECTOR_NMI, self.ist_stack_top, tss=self._hw_tss())
        self._k(self.entry_text("asm_exc_nmi"), Op.FETCH)
        saved = self.save_and_switch_to_kernel_cr3()
        self._refs(NMI_HANDLER, task)
        self.restore_cr3(saved)
        self._k(self.ist_stack_top - IRET_FRAME)  # iretq
        self.ops.nmis += 1

    def _fred_nmi(self, task: Task) -> None:
        """An NMI under FRED: from user on stack level 0 like every user event, back by ERETU; in
        the kernel on stack level 2 (FRED_STKLVLS: NMI at 2, FRED_RSP2 = the NMI stack), back by
        ERETS. No paranoid CR3 handling: FRED kernels never run PTI."""
        if self.in_user:
            self.in_user = False
            self.ops.user_entries += 1
            self._fred_event(self.stack_top(task), from_user=True)
            self._refs(NMI_HANDLER, task)
            self.ops.nmis += 1
            self._exit_to_user_iret()
            return
        self._fred_event(self.ist_stack_top, from_user=False)
        self._refs(NMI_HANDLER, task)
        self._k(self.ist_stack_top - FRED_FRAME)  # ERETS
        self.ops.nmis += 1

    def page_fault(self, va: int, pte_slot: int, pte_value: int) -> None:
        """A #PF from user on a not-present page: the user access that faults, the exception entry,
        the handler (a fresh zeroed frame and the PTE write, `WRITE_PHYS`), the return, and the
        retried access."""
        task = self._need_user("a user page fault")
        self.out.access(va, Op.WRITE, USER_CPL)  # faults: the PTE is not present
        self.ops.user_refs += 1
        mark = self._mark()
        self._enter_from_user(VECTOR_PF, "asm_common_interrupt")
        self._entered(mark)
        recorded = self._recorded_body("page_fault", task)  # the clear_page and the PTE write stay ours
        if not recorded:
            self._refs(PAGE_FAULT_HANDLER, task)
        mark = self._mark()
        frame = pte_value & 0x000F_FFFF_FFFF_F000
        self._k(self.lay.page_offset_base + frame, Op.WRITE)  # clear_page() through the direct map
        self.out.write_phys(pte_slot, pte_value)  # set_pte_at()
        if recorded:  # the recorded handler's instructions did this work
            self.ops.recorded_exceptions += 1
            self._cover(mark[0], len(self.out), self.ops.kernel_refs - mark[1])
        self.ops.exceptions += 1
        mark = self._mark()
        self._exit_to_user_iret()
        self._exited(mark)
        self.out.access(va, Op.WRITE, USER_CPL)  # the retried store
        self.ops.user_refs += 1

    # ---- context switch ---------------------------------------------------------------------------
    def context_switch(self, nxt: Task, *, blocking: str | None = None) -> None:
        """schedule() → context_switch(): scheduler references, `switch_mm_irqs_off` (CR3 to the
        next mm's kernel tables, NOFLUSH when its ASID slot is current), __switch_to on the stacks
        (and TSS.sp0 for the KAISER era, whose hardware stack is the task stack).

        `blocking`: the system call (entered, body not yet run) that sleeps here and in whose body
        `nxt` returns (a pipe read): with a `kernel_side` that has a recorded switching call, its
        references before switch_mm replace the modelled schedule() here and those after it are
        that call's body; the CR3 write and the KAISER-era TSS.sp0 stay the variant's own."""
        prev = self._need_kernel("context switch")
        recorded = blocking is not None and self._recorded_switch_before(prev)
        if not recorded:
            self._refs(SCHEDULE, prev)
            self._k(self.objects(nxt).task_struct)
            self._k(self.stack_top(prev) - PT_REGS_SIZE - 0x300, Op.WRITE)  # switch_to pushes callee-saved
        if self.asi_cpu is not None:  # asi_exit before a context switch, on demand (no fault)
            self.asi_cpu.exit(self.out)
        if nxt.mm is not prev.mm:
            ctx = self.ids.of(nxt.pid)
            switch_mm_irqs_off(self.tlb, self.out, ctx, nxt.mm.pgd.kernel_pgd)
        if not recorded:
            self._k(self.stack_top(nxt) - PT_REGS_SIZE - 0x300)  # and pops the next one's
            self._k(self.percpu(PERCPU_HOT), Op.WRITE)  # current_task, top_of_stack
        if self.kaiser_era:
            self._k(self.cpu.tss_va + TSS_SP0, Op.WRITE)
        self.current = nxt
        self.ops.context_switches += 1
        if recorded:
            self.ops.recorded_switches += 1
            self._pending_switch = blocking
