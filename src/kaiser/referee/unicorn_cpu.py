"""The one Unicorn x86-64 CPU that every part of kaiser running real code drives: the referee's
harness (referee/machine.py) and the realcode kernel (realcode/machine.py).

Unicorn is QEMU's TCG with its x86 MMU. It maps *physical* memory (`mem_map`) and runs at virtual
addresses once CR0.PG is set (facts/x86-paging.md §3). Exceptions are not delivered through the
IDT: `UC_HOOK_INTR` sees the vector, CR2 is readable, the error code is not; `ExceptionTrap`
records the first one and stops the run there. Unicorn keeps a softmmu TLB of its own: whoever
edits the tables behind its back calls `flush_tlb`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_64, Uc
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH
from unicorn.x86_const import (
    UC_CPU_X86_ICELAKE_SERVER,
    UC_X86_REG_CR2,
    UC_X86_REG_CR3,
    UC_X86_REG_CS,
    UC_X86_REG_R8,
    UC_X86_REG_R9,
    UC_X86_REG_R10,
    UC_X86_REG_R11,
    UC_X86_REG_R12,
    UC_X86_REG_R13,
    UC_X86_REG_R14,
    UC_X86_REG_R15,
    UC_X86_REG_RAX,
    UC_X86_REG_RBP,
    UC_X86_REG_RBX,
    UC_X86_REG_RCX,
    UC_X86_REG_RDI,
    UC_X86_REG_RDX,
    UC_X86_REG_RIP,
    UC_X86_REG_RSI,
    UC_X86_REG_RSP,
)

# The default model (qemu64) lacks SMAP and PKU: QEMU's cpu_x86_update_cr4 then silently clears
# CR4.SMAP/PKE on a guest `mov cr4`. Icelake-Server has SMEP, SMAP, PKU, LA57 and 1 GiB pages.
CPU_MODEL = UC_CPU_X86_ICELAKE_SERVER
PAGE = 4096
# The general-purpose registers in their instruction-encoding order (SDM Vol. 2A Table 2-2:
# ModRM.reg/rm 0-7, then REX.B/R 8-15), so a decoded register number indexes this tuple.
GPRS = (
    UC_X86_REG_RAX,
    UC_X86_REG_RCX,
    UC_X86_REG_RDX,
    UC_X86_REG_RBX,
    UC_X86_REG_RSP,
    UC_X86_REG_RBP,
    UC_X86_REG_RSI,
    UC_X86_REG_RDI,
    UC_X86_REG_R8,
    UC_X86_REG_R9,
    UC_X86_REG_R10,
    UC_X86_REG_R11,
    UC_X86_REG_R12,
    UC_X86_REG_R13,
    UC_X86_REG_R14,
    UC_X86_REG_R15,
)


def new_cpu(ram_bytes: int) -> Uc:
    """A 64-bit Unicorn CPU of CPU_MODEL with `ram_bytes` of zeroed physical memory at 0."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_cpu_model(CPU_MODEL)
    uc.mem_map(0, ram_bytes)
    return uc


def flush_tlb(uc: Uc) -> None:
    """Drop Unicorn's softmmu TLB (after the tables changed outside a guest CR3 write)."""
    uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)


def write_frames(uc: Uc, frames: Iterable[int], read: Callable[[int, int], bytes]) -> None:
    """Copy the 4 KiB frames at physical addresses `frames` into Unicorn's RAM, one write per run
    of contiguous frames; `read(pa, length)` gives their bytes."""
    ordered = sorted(set(frames))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + PAGE:
            j += 1
        start = ordered[i]
        uc.mem_write(start, read(start, ordered[j] + PAGE - start))
        i = j + 1


@dataclass(frozen=True)
class Trap:
    """An exception Unicorn raised (reported by UC_HOOK_INTR, never delivered): its vector, RIP,
    CR2, the live CR3 and the CPL at the time; `where`: the symbol at RIP, for a harness that knows
    its code's symbols (realcode), else empty."""

    vector: int
    rip: int
    cr2: int
    cr3: int
    cpl: int
    where: str = ""

    def to_json(self) -> dict[str, Any]:
        """The trap as JSON: addresses as 16-digit hex."""
        return {
            "vector": self.vector,
            "rip": f"{self.rip:#018x}",
            "cr2": f"{self.cr2:#018x}",
            "cr3": f"{self.cr3:#018x}",
            "cpl": self.cpl,
            "where": self.where,
        }


class ExceptionTrap:
    """Records the first exception since `reset()` (`trap`) and stops emulation there."""

    def __init__(self, uc: Uc) -> None:
        self.trap: Trap | None = None
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)

    def reset(self) -> None:
        self.trap = None

    def _on_interrupt(self, uc: Uc, vector: int, _data: object) -> None:
        if self.trap is None:
            self.trap = Trap(
                vector=vector,
                rip=int(uc.reg_read(UC_X86_REG_RIP)),
                cr2=int(uc.reg_read(UC_X86_REG_CR2)),
                cr3=int(uc.reg_read(UC_X86_REG_CR3)),
                cpl=int(uc.reg_read(UC_X86_REG_CS)) & 3,
            )
        uc.emu_stop()
