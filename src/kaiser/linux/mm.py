"""Processes' address spaces (Linux's `struct mm_struct`): VMAs and the user page tables behind them.

User memory is populated eagerly (as with MAP_POPULATE) in 4 KiB pages, so page-table footprints
are those of a fully touched process. fork() shares data frames copy-on-write: writable private
pages become read-only in parent and child, as `copy_present_pte()` does (mm/memory.c).
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass
from typing import Protocol

from kaiser.x86.bits import PTE
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import PAGE_SIZE

LDT_ENTRIES, LDT_ENTRY_SIZE = 8192, 8  # asm/ldt.h: an LDT slot holds 64 KiB of descriptors (§7.5)


class PgdTables(Protocol):
    """An mm's top-level tables as the mm uses them (`kaiser.linux.kernel.PgdPair` is one)."""

    kernel_pt: PageTable
    user_pt: PageTable | None

    @property
    def kernel_pgd(self) -> int: ...


class MmKernel(Protocol):
    """What an mm asks of its kernel (`kaiser.linux.kernel.Kernel` is one): its PGDs, user frames
    and LDT mapping. A protocol rather than an import, so mm.py does not import kernel.py, which
    builds `Mm`s (no import cycle, not even for the type checker)."""

    @property
    def user_top(self) -> int: ...

    def new_pgd(self, mm: Mm) -> PgdTables: ...

    def free_pgd(self, mm: Mm) -> None: ...

    def alloc_user_frames(self, pid: int, count: int) -> int: ...

    def get_user_frame(self, pa: int) -> None: ...

    def put_user_frame(self, pa: int) -> None: ...

    def frame_shared(self, pa: int) -> bool: ...

    def map_ldt(self, mm: Mm, entries: int) -> None: ...


class Prot(enum.IntFlag):
    """mmap protections (include/uapi/asm-generic/mman-common.h)."""

    NONE = 0
    READ = 1
    WRITE = 2
    EXEC = 4


def prot_to_pte(prot: Prot, cow: bool = False) -> int:
    """Leaf flags for a user page with `prot` (Linux's protection_map[] for x86-64 with NX)."""
    flags = PTE.US
    if prot & Prot.WRITE and not cow:
        flags |= PTE.RW
    if not prot & Prot.EXEC:
        flags |= PTE.NX
    return int(flags)


@dataclass
class Vma:
    """A virtual memory area [start, end) with one protection."""

    start: int
    end: int
    prot: Prot
    name: str

    @property
    def size(self) -> int:
        return self.end - self.start


class MmError(ValueError):
    """A process operation that cannot be done (bad range, no room, process gone)."""


@dataclass(frozen=True)
class ProgramImage:
    """What exec() lays out: sizes of the ELF segments, heap start gap and stack."""

    name: str = "a.out"
    text: int = 256 << 10
    rodata: int = 64 << 10
    data: int = 32 << 10
    bss: int = 64 << 10
    stack: int = 132 << 10
    base: int = 0x400000  # non-PIE ELF load address


MMAP_BASE = 0x7F0000000000  # top-down mmap area start (arch/x86/mm/mmap.c, without randomization)


class Mm:
    """One process: its VMAs and page tables (a kernel PGD and, under isolation, a user PGD)."""

    def __init__(self, kernel: MmKernel, pid: int) -> None:
        self.kernel = kernel
        self.pid = pid
        self.vmas: list[Vma] = []
        self.brk_start = 0
        self.brk_end = 0
        self.alive = True
        self.pgd = kernel.new_pgd(self)  # PGD pair + the page table of the kernel PGD
        self.pt: PageTable = self.pgd.kernel_pt
        self.ldt_entries = 0  # descriptors in the LDT (0: none); Kernel.map_ldt keeps these two
        self.ldt_pa = 0  # its first frame

    # ---- VMA bookkeeping -------------------------------------------------------------------
    def _check(self, addr: int, length: int) -> None:
        if not self.alive:
            raise MmError(f"pid {self.pid} has exited")
        if addr % PAGE_SIZE or length <= 0 or length % PAGE_SIZE:
            raise MmError(f"pid {self.pid}: range {addr:#x}+{length:#x} is not page-aligned and positive")
        if addr + length > self.kernel.user_top:
            raise MmError(f"pid {self.pid}: range {addr:#x}+{length:#x} is above the user address space")

    def find_vma(self, addr: int) -> Vma | None:
        starts = [v.start for v in self.vmas]
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and self.vmas[i].start <= addr < self.vmas[i].end:
            return self.vmas[i]
        return None

    def _overlaps(self, addr: int, end: int) -> list[Vma]:
        return [v for v in self.vmas if v.start < end and addr < v.end]

    def _free_area(self, length: int) -> int:
        """Top-down first fit below MMAP_BASE (arch/x86/mm/mmap.c, legacy off)."""
        top = min(MMAP_BASE, self.kernel.user_top)
        for vma in sorted(self.vmas, key=lambda v: -v.start):
            if vma.start >= top:
                top = min(top, vma.start) if vma.end > top else top
                continue
            if top - vma.end >= length:
                return top - length
            top = vma.start
        if top - length >= 0x10000:
            return top - length
        raise MmError(f"pid {self.pid}: no room for {length:#x} bytes")

    # ---- populate / depopulate ---------------------------------------------------------------
    def _populate(self, start: int, end: int, prot: Prot, frames: list[int] | None = None, cow: bool = False) -> None:
        if prot == Prot.NONE:
            return  # PROT_NONE: no present PTEs
        if frames is None:  # fresh memory: one contiguous run of frames, mapped in one call
            pa = self.kernel.alloc_user_frames(self.pid, (end - start) // PAGE_SIZE)
            self.pt.map(start, pa, end - start, prot_to_pte(prot, cow), page_size=PAGE_SIZE)
            return
        for i, va in enumerate(range(start, end, PAGE_SIZE)):
            self.pt.map(va, frames[i], PAGE_SIZE, prot_to_pte(prot, cow), page_size=PAGE_SIZE)

    def _depopulate(self, start: int, end: int) -> None:
        for leaf in list(self.pt.leaves(start, end)):
            self.kernel.put_user_frame(leaf.pa)
        self.pt.unmap(start, end - start)

    # ---- system calls --------------------------------------------------------------------------
    def mmap(
        self, length: int, prot: Prot = Prot.READ | Prot.WRITE, addr: int | None = None, name: str = "anon"
    ) -> int:
        """MAP_PRIVATE|MAP_ANONYMOUS(|MAP_FIXED if addr): returns the start address."""
        length = -(-length // PAGE_SIZE) * PAGE_SIZE
        if addr is None:
            addr = self._free_area(length)
        self._check(addr, length)
        if self._overlaps(addr, addr + length):
            self.munmap(addr, length)  # MAP_FIXED replaces what was there
        self._populate(addr, addr + length, prot)
        bisect.insort(self.vmas, Vma(addr, addr + length, prot, name), key=lambda v: v.start)
        return addr

    def munmap(self, addr: int, length: int) -> None:
        """Remove [addr, addr+length); VMAs cut by the range are split."""
        length = -(-length // PAGE_SIZE) * PAGE_SIZE
        self._check(addr, length)
        end = addr + length
        kept: list[Vma] = []
        for v in self.vmas:
            if v.end <= addr or v.start >= end:
                kept.append(v)
                continue
            if v.start < addr:
                kept.append(Vma(v.start, addr, v.prot, v.name))
            if v.end > end:
                kept.append(Vma(end, v.end, v.prot, v.name))
            self._depopulate(max(v.start, addr), min(v.end, end))
        self.vmas = sorted(kept, key=lambda v: v.start)

    def mprotect(self, addr: int, length: int, prot: Prot) -> None:
        """Change the protection of [addr, addr+length); every page must belong to a VMA (else ENOMEM)."""
        length = -(-length // PAGE_SIZE) * PAGE_SIZE
        self._check(addr, length)
        end = addr + length
        covered = addr
        for v in sorted(self._overlaps(addr, end), key=lambda v: v.start):
            if v.start > covered:
                break
            covered = v.end
        if covered < end:
            raise MmError(f"pid {self.pid}: mprotect {addr:#x}+{length:#x}: {covered:#x} is not mapped (ENOMEM)")
        new: list[Vma] = []
        for v in self.vmas:
            if v.end <= addr or v.start >= end:
                new.append(v)
                continue
            lo, hi = max(v.start, addr), min(v.end, end)
            if v.start < lo:
                new.append(Vma(v.start, lo, v.prot, v.name))
            new.append(Vma(lo, hi, prot, v.name))
            if v.end > hi:
                new.append(Vma(hi, v.end, v.prot, v.name))
            self._reprotect(lo, hi, v.prot, prot)
        self.vmas = sorted(new, key=lambda v: v.start)

    def _reprotect(self, lo: int, hi: int, old: Prot, prot: Prot) -> None:
        if prot == Prot.NONE:
            self._depopulate(lo, hi)  # model PROT_NONE as not present; frames go back
        elif old == Prot.NONE:
            self._populate(lo, hi, prot)
        else:
            for leaf in list(self.pt.leaves(lo, hi)):
                cow = not leaf.entry & PTE.RW and bool(old & Prot.WRITE) and self.kernel.frame_shared(leaf.pa)
                self.pt.protect(leaf.va, leaf.size, prot_to_pte(prot, cow) | int(leaf.entry & (PTE.A | PTE.D)))

    def brk(self, new_end: int) -> int:
        """Grow or shrink the heap; returns the new break (the old one if the request is refused)."""
        if new_end < self.brk_start:
            return self.brk_end
        new_top = -(-new_end // PAGE_SIZE) * PAGE_SIZE
        old_top = -(-self.brk_end // PAGE_SIZE) * PAGE_SIZE
        if new_top > old_top:
            if self._overlaps(old_top, new_top):
                return self.brk_end
            heap = self.find_vma(self.brk_start) if self.brk_start < old_top else None
            self._populate(old_top, new_top, Prot.READ | Prot.WRITE)
            if heap is not None:
                heap.end = new_top
            else:
                bisect.insort(self.vmas, Vma(old_top, new_top, Prot.READ | Prot.WRITE, "[heap]"), key=lambda v: v.start)
        elif new_top < old_top:
            self.munmap(new_top, old_top - new_top)
        self.brk_end = new_end
        return new_end

    def exec(self, image: ProgramImage = ProgramImage()) -> None:
        """Replace the address space with a fresh program image (ELF segments, heap, stack, vDSO)."""
        for v in list(self.vmas):
            self.munmap(v.start, v.size)
        base = image.base
        text_end = base + image.text
        self.mmap(image.text, Prot.READ | Prot.EXEC, base, f"{image.name} text")
        self.mmap(image.rodata, Prot.READ, text_end, f"{image.name} rodata")
        data = text_end + image.rodata
        self.mmap(image.data + image.bss, Prot.READ | Prot.WRITE, data, f"{image.name} data+bss")
        self.brk_start = self.brk_end = data + image.data + image.bss + (2 << 20)
        stack_top = min(0x7FFFFFFFF000, self.kernel.user_top)
        self.mmap(image.stack, Prot.READ | Prot.WRITE, stack_top - image.stack, "[stack]")
        self.mmap(2 * PAGE_SIZE, Prot.READ | Prot.EXEC, stack_top - image.stack - (16 << 20), "[vdso]")

    def fork(self, child_pid: int) -> Mm:
        """A copy of this address space; private writable pages are shared copy-on-write."""
        if not self.alive:
            raise MmError(f"pid {self.pid} has exited")
        child = Mm(self.kernel, child_pid)
        child.brk_start, child.brk_end = self.brk_start, self.brk_end
        for v in self.vmas:
            child.vmas.append(Vma(v.start, v.end, v.prot, v.name))
            for leaf in list(self.pt.leaves(v.start, v.end)):
                self.kernel.get_user_frame(leaf.pa)
                writable_private = bool(v.prot & Prot.WRITE)
                if writable_private:
                    self.pt.protect(
                        leaf.va, leaf.size, prot_to_pte(v.prot, cow=True) | int(leaf.entry & (PTE.A | PTE.D))
                    )
                child.pt.map(
                    leaf.va, leaf.pa, leaf.size, prot_to_pte(v.prot, cow=writable_private), page_size=leaf.size
                )
        if self.ldt_entries:
            child.modify_ldt(self.ldt_entries)
        return child

    @property
    def ldt_pages(self) -> int:
        """Pages the LDT occupies (alloc_ldt_struct(): 8 bytes a descriptor); 0 without one."""
        return -(-self.ldt_entries * LDT_ENTRY_SIZE // PAGE_SIZE)

    def modify_ldt(self, entries: int = 1) -> None:
        """Write LDT descriptor `entries - 1` (modify_ldt(1, ...), arch/x86/kernel/ldt.c): the LDT
        grows to `entries` descriptors; under PTI it is aliased into the LDT slot."""
        self.kernel.map_ldt(self, max(entries, self.ldt_entries))

    def exit(self) -> None:
        """Tear the address space down and free its tables, PGDs and frames."""
        if not self.alive:
            raise MmError(f"pid {self.pid} has already exited")
        for v in list(self.vmas):
            self.munmap(v.start, v.size)
        self.kernel.free_pgd(self)
        self.alive = False

    def user_footprint(self) -> int:
        """Bytes of user memory mapped."""
        return sum(v.size for v in self.vmas if v.prot != Prot.NONE)


# A small dynamically linked server process, sized after a typical /proc/PID/maps: the program,
# libc and the loader (text, rodata, data), heap, a malloc arena, a locale archive and thread stacks.
TYPICAL_MAPPINGS: tuple[tuple[str, int, Prot], ...] = (
    ("libc.so.6 text", 1600 << 10, Prot.READ | Prot.EXEC),
    ("libc.so.6 rodata", 400 << 10, Prot.READ),
    ("libc.so.6 data", 32 << 10, Prot.READ | Prot.WRITE),
    ("ld-linux text", 160 << 10, Prot.READ | Prot.EXEC),
    ("ld-linux data", 16 << 10, Prot.READ | Prot.WRITE),
    ("libm.so.6 text", 500 << 10, Prot.READ | Prot.EXEC),
    ("locale-archive", 3 << 20, Prot.READ),
    ("malloc arena", 8 << 20, Prot.READ | Prot.WRITE),
    ("thread stack", 2 << 20, Prot.READ | Prot.WRITE),
    ("thread stack", 2 << 20, Prot.READ | Prot.WRITE),
)


def populate_typical(mm: Mm) -> None:
    """Give a freshly exec'd process the footprint of a typical small server (~19 MiB resident)."""
    mm.brk(mm.brk_end + (4 << 20))
    for name, size, prot in TYPICAL_MAPPINGS:
        mm.mmap(size, prot, name=name)
