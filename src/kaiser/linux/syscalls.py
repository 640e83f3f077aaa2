"""The modelled kernel work: what each system call, interrupt, page fault and schedule() touches.

`SYSCALLS` is the catalogue of modelled system calls (`SyscallSpec`: number, kernel-side
references, own cycles, which way it copies user data); `IRQ_HANDLER`, `NMI_HANDLER`,
`PAGE_FAULT_HANDLER` and `SCHEDULE` are the other operations' references. A reference names a
kernel object (`Obj`) and an offset in it; `kaiser.linux.entry.EntryModel`, the transition
compiler, resolves it per task and CPU and emits it between the variant's own entry and exit.

Where the objects lie is placed here too, as data: C code's offsets in kernel text, the per-CPU
area's pieces, `sys_call_table` in .rodata. They are CHOSEN: only the page each lies in matters,
and each is placed so the paths touch the number of distinct pages a real kernel does (C code
spreads over several 2 MiB text pages). The cycles are the same in every variant (docs/cost.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from kaiser.sourced import Source, chosen, fit
from kaiser.x86.physmem import PAGE_SIZE
from kaiser.x86.rights import Op

# ---- where the kernel's code and data lie (CHOSEN offsets; see the module docstring) --------------
# Kernel .text, from _text: C code, in several 2 MiB pages (the image is mapped with 2 MiB pages).
TEXT_OFFSETS: Final = {
    "do_syscall_64": 0x0A0000,  # arch/x86/entry/common.c
    "kernel/sys.c": 0x0B0000,  # getppid, getpid
    "kernel/sched": 0x220000,  # schedule(), __switch_to, wake_up
    "kernel/irq": 0x340000,  # handle_irq_event, irq_exit
    "mm/memory.c": 0x560000,  # handle_mm_fault, do_anonymous_page
    "mm/page_alloc.c": 0x5A0000,
    "fs/read_write.c": 0x780000,  # ksys_read/write/lseek, vfs_*
    "mm/filemap.c": 0x7C0000,  # filemap_read, generic_perform_write
    "fs/pipe.c": 0x9A0000,
    "fs/open.c": 0x9E0000,  # close_fd
    "lib/usercopy": 0xB00000,  # copy_user_generic
    # entry_64_fred.S (.noinstr.text): asm_fred_entrypoint_user, page-aligned because
    # IA32_FRED_CONFIG holds its 4 KiB-aligned address (FRED_CONFIG_ENTRYPOINT, fred.c)
    "asm_fred_entrypoint_user": 0x0C0000,
}
RODATA_SYS_CALL_TABLE: Final = 0x1000  # sys_call_table, from the start of .rodata
# Our per-CPU area (kaiser.linux.cea: PERCPU_PAGES): 0 gdt, 1.. tss, 4 KAISER's user-mapped
# scratch (4.15 era), 12.. ordinary per-CPU data; the entry area's pieces alias the rest.
PERCPU_KAISER_SCRATCH: Final = 4 * PAGE_SIZE  # unsafe_stack_register_backup (IAIK patch, §4.3)
PERCPU_HOT: Final = 12 * PAGE_SIZE  # pcpu_hot: current task, top_of_stack, rsp_scratch
PERCPU_TLBSTATE: Final = 12 * PAGE_SIZE + 0x100  # cpu_tlbstate (user_pcid_flush_mask lives here)
PERCPU_RUNQUEUE: Final = 13 * PAGE_SIZE  # struct rq
PERCPU_IRQ_STAT: Final = 14 * PAGE_SIZE  # irq_stat, softirq state


class Obj(enum.Enum):
    """Kernel objects a system call body touches, resolved per task/CPU by `EntryModel`."""

    TEXT = "text"  # kernel text; offset from _text
    RODATA = "rodata"
    PERCPU = "percpu"  # offset in the CPU's per-CPU area (direct map)
    STACK = "stack"  # offset below the top of the task's kernel stack (vmalloc)
    TASK = "task"  # current task_struct (direct map)
    PARENT = "parent"  # the parent's task_struct
    FILES = "files"  # files_struct + fdtable
    FILE = "file"  # the struct file the call works on
    MM = "mm"  # mm_struct + VMAs
    PIPE = "pipe"  # pipe_inode_info + its buffer page (shared by the pipe's two ends)


@dataclass(frozen=True)
class Ref:
    """One kernel-side reference of a system call body."""

    op: Op
    obj: Obj
    offset: int = 0
    name: str = ""  # TEXT: a key of TEXT_OFFSETS (offset then added to it)


def _f(name: str) -> Ref:
    return Ref(Op.FETCH, Obj.TEXT, 0, name)


def _r(obj: Obj, offset: int = 0) -> Ref:
    return Ref(Op.READ, obj, offset)


def _w(obj: Obj, offset: int = 0) -> Ref:
    return Ref(Op.WRITE, obj, offset)


class Copy(enum.Enum):
    """Which way a system call copies user data (copy_to_user / copy_from_user)."""

    NONE = "none"
    TO_USER = "to-user"  # read(): page cache or pipe -> user buffer
    FROM_USER = "from-user"  # write(): user buffer -> page cache or pipe


@dataclass(frozen=True)
class SyscallSpec:
    """A modelled system call: its kernel-side references after entry and the cycles of its own
    work that are not memory references (the same in every variant; `kaiser.cost.params`)."""

    name: str
    nr: int  # x86-64 syscall number (arch/x86/entry/syscalls/syscall_64.tbl)
    refs: tuple[Ref, ...]
    body_cycles: float
    copy: Copy = Copy.NONE
    kernel_source: str = ""  # what the kernel-side references stand for
    # Cycles beyond the recorded kernel side's instructions (`--kernel-side recorded`), 0 but for
    # the FIT of lseek (below): the recording's instructions are the call's own work.
    recorded_cycles: float = 0.0


_STACK_FRAME = (_w(Obj.STACK, 0x200), _r(Obj.STACK, 0x200))  # C call frames under pt_regs

# read() and write() of cached file pages touch the same kernel objects (fs/read_write.c, mm/filemap.c).
_FILE_IO_REFS = (
    _f("fs/read_write.c"),
    *_STACK_FRAME,
    _r(Obj.TASK, 0x740),
    _r(Obj.FILES, 0x100),
    _r(Obj.FILE, 0x0),
    _f("mm/filemap.c"),
    _w(Obj.FILE, 0x68),
    _f("lib/usercopy"),
)
# pipe_read() and pipe_write() reach the pipe the same way: the fd, its file, fs/pipe.c.
_PIPE_OPEN = (_f("fs/read_write.c"), *_STACK_FRAME, _r(Obj.FILES, 0x100), _r(Obj.FILE, 0x0), _f("fs/pipe.c"))
LSEEK_RECORDED_CYCLES: Final = 417.5  # FIT: Hansen's lseek1 (see SYSCALLS["lseek"])
# The bodies; each cycle number's tag is in CYCLE_SOURCES below. body_cycles are CHOSEN
# (docs/cost.md): getppid/getpid/close from Garloff's 140-cycle null-call round trip (performance.md
# §3) minus the modelled entry/exit; lseek so that nopti runs will-it-scale lseek1 at Hansen's
# 5.2 M/s at the model's 3.0 GHz (§3: FIT); read/write/pipe CHOSEN.
SYSCALLS: Final = {
    s.name: s
    for s in (
        SyscallSpec("getppid", 110, (_f("kernel/sys.c"), _r(Obj.TASK, 0x5C0), _r(Obj.PARENT, 0x5B8)), 5.0),
        SyscallSpec("getpid", 39, (_f("kernel/sys.c"), _r(Obj.TASK, 0x5B8)), 5.0),
        SyscallSpec(
            "close",
            3,
            (_f("fs/open.c"), _r(Obj.TASK, 0x740), _r(Obj.FILES, 0x20), _r(Obj.FILES, 0x100)),
            10.0,
            kernel_source="close(-1): current->files, fdtable lookup, EBADF",
        ),
        SyscallSpec(
            "lseek",
            8,
            (
                _f("fs/read_write.c"),
                *_STACK_FRAME,
                _r(Obj.TASK, 0x740),
                _r(Obj.FILES, 0x20),
                _r(Obj.FILES, 0x100),
                _r(Obj.FILE, 0x0),
                _w(Obj.FILE, 0x40),  # f_pos_lock
                _w(Obj.FILE, 0x68),  # f_pos
            ),
            418.0,
            kernel_source="lseek(fd, 0, SEEK_SET) on a tmpfs file: fdget_pos, generic_file_llseek",
            # FIT (recorded side): nopti lseek1 = Hansen's 5.2 M/s at the model's 3.0 GHz (577
            # cycles) with the recorded 6.1 lseek's instructions at kernel_cpi: what his 2017
            # kernel and machine spent beyond them (docs/cost.md, "Fit and predict")
            recorded_cycles=LSEEK_RECORDED_CYCLES,
        ),
        SyscallSpec(
            "read",
            0,
            _FILE_IO_REFS,
            400.0,
            Copy.TO_USER,
            "read() of cached file pages: filemap_read, copy_to_user",
        ),
        SyscallSpec(
            "write",
            1,
            _FILE_IO_REFS,
            500.0,
            Copy.FROM_USER,
            "write() to cached file pages: generic_perform_write, copy_from_user",
        ),
        SyscallSpec(
            "pipe_write",
            1,
            (
                *_PIPE_OPEN,
                _w(Obj.PIPE, 0x0),
                _f("lib/usercopy"),
                _f("kernel/sched"),  # wake_up the reader
                _w(Obj.PERCPU, PERCPU_RUNQUEUE),
            ),
            400.0,
            Copy.FROM_USER,
            "write() to a pipe: pipe_write, copy_from_user into the pipe buffer, wake the reader",
        ),
        SyscallSpec(
            "pipe_read",
            0,
            (
                *_PIPE_OPEN,
                _r(Obj.PIPE, 0x0),
                _f("lib/usercopy"),
            ),
            350.0,
            Copy.TO_USER,
            "read() from a pipe: pipe_read, copy_to_user from the pipe buffer",
        ),
        SyscallSpec(
            "sched_yield",
            24,
            (_f("kernel/sched"), _w(Obj.PERCPU, PERCPU_RUNQUEUE)),
            100.0,
            kernel_source="sched_yield(): put the task at the back of the run queue",
        ),
    )
}
# The tag of every cycle number above (kaiser.sourced), named as `kaiser bench published` names a
# fitted one ("body_cycles[lseek]"); tests/linux/test_syscalls_sources.py checks one per number.
_NULL_CALL = "Garloff's 140-cycle getppid() round trip (performance.md §3) minus the modelled entry and exit"
_NO_FIGURE = "no published figure for this body's own work; the same in every variant"
CYCLE_SOURCES: Final[dict[str, Source]] = {
    "body_cycles[getppid]": chosen(f"5 cycles: {_NULL_CALL}"),
    "body_cycles[getpid]": chosen(f"5 cycles, as getppid: {_NULL_CALL}"),
    "body_cycles[close]": chosen(f"10 cycles, close(-1)'s fdtable lookup beside getppid's: {_NULL_CALL}"),
    "body_cycles[lseek]": fit(
        "nopti lseek1 (will-it-scale, 1 thread) = D. Hansen's 5.2 M/s at the model's 3.0 GHz with the modelled "
        "kernel side (KAISER v1 cover letter, performance.md §3)"
    ),
    "recorded_cycles[lseek]": fit(
        "nopti lseek1 = D. Hansen's 5.2 M/s at 3.0 GHz (577 cycles) with the recorded 6.1 lseek's instructions at "
        "kernel_cpi: what his 2017 kernel and machine spent beyond them (docs/cost.md, 'Fit and predict')"
    ),
    "body_cycles[read]": chosen(f"400 cycles of filemap_read and the copy besides its references: {_NO_FIGURE}"),
    "body_cycles[write]": chosen(f"500 cycles of generic_perform_write and the copy: {_NO_FIGURE}"),
    "body_cycles[pipe_write]": chosen(f"400 cycles of pipe_write, the copy and the wake-up: {_NO_FIGURE}"),
    "body_cycles[pipe_read]": chosen(f"350 cycles of pipe_read and the copy: {_NO_FIGURE}"),
    "body_cycles[sched_yield]": chosen(f"100 cycles of requeueing the task: {_NO_FIGURE}"),
}
# Kernel work of the other modelled operations (references; cycles in `kaiser.cost.params`).
IRQ_HANDLER: Final = (_f("kernel/irq"), _w(Obj.PERCPU, PERCPU_IRQ_STAT), _r(Obj.PERCPU, PERCPU_IRQ_STAT + 0x40))
NMI_HANDLER: Final = (_f("kernel/irq"), _w(Obj.PERCPU, PERCPU_IRQ_STAT + 0x80))
PAGE_FAULT_HANDLER: Final = (
    _f("mm/memory.c"),
    *_STACK_FRAME,
    _r(Obj.MM, 0x0),
    _r(Obj.MM, 0x800),
    _f("mm/page_alloc.c"),
)

SCHEDULE: Final = (_f("kernel/sched"), _r(Obj.PERCPU, PERCPU_RUNQUEUE), _w(Obj.PERCPU, PERCPU_RUNQUEUE + 0x40))


class UnknownSyscall(ValueError):
    """A system call the model does not have."""


def get_syscall(name: str) -> SyscallSpec:
    """The modelled system call `name`; `UnknownSyscall` naming the modelled ones otherwise."""
    try:
        return SYSCALLS[name]
    except KeyError:
        raise UnknownSyscall(f"unknown system call {name!r}; modelled: {', '.join(SYSCALLS)}") from None
