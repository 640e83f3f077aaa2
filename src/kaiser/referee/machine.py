"""Run one case on Unicorn (QEMU's TCG x86 MMU) and report what it observably did.

The CPU is referee/unicorn_cpu.py's (the one realcode runs on too). One `Uc` is reused: each case
restores a CPU context saved before any exception (QEMU otherwise remembers the #PF and turns the
next one into #DF), flushes the softmmu TLB and rewrites CR3 (which flushes again, QEMU
`cpu_x86_update_cr3`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unicorn import UcError
from unicorn.x86_const import (
    UC_X86_REG_CR0,
    UC_X86_REG_CR3,
    UC_X86_REG_CR4,
    UC_X86_REG_EFLAGS,
    UC_X86_REG_GDTR,
    UC_X86_REG_R14,
    UC_X86_REG_R15,
    UC_X86_REG_RAX,
    UC_X86_REG_RBX,
    UC_X86_REG_RCX,
    UC_X86_REG_RDI,
    UC_X86_REG_RDX,
    UC_X86_REG_RSI,
    UC_X86_REG_RSP,
)

from kaiser.referee import layout
from kaiser.referee.cases import CR0_ET, Case
from kaiser.referee.unicorn_cpu import ExceptionTrap, flush_tlb, new_cpu
from kaiser.x86.bits import BP_VECTOR, CR0, CR4, EFER, MSR_EFER
from kaiser.x86.cpu import CpuState
from kaiser.x86.rights import Op

_ZERO_PAGE = bytes(layout.PAGE)
_HARNESS = layout.harness_frames()


@dataclass(frozen=True)
class Observation:
    """What Unicorn did. `completed` means the access ran and the following `int3` was reached."""

    vector: int | None
    rip: int
    cr2: int
    rdi: int
    rax: int
    error: str | None
    completed: bool
    cr4: int  # read back after the run: the harness checks that the case's CR4 really took effect
    efer: int
    frames: dict[int, bytes] = field(repr=False)


def stop_address(case: Case) -> int:
    """RIP after the `int3` that follows a completed access."""
    if case.op is Op.FETCH:
        return case.va + layout.TARGET_CODE_LEN
    if case.state.cpl == 3:
        base = layout.U_LOAD if case.op is Op.READ else layout.U_STORE
    else:
        base = layout.K_LOAD if case.op is Op.READ else layout.K_STORE
    return base + layout.ACCESS_LEN + 1


def _stage(case: Case) -> int:
    if case.state.cpl == 3:
        return layout.K_IRETQ  # the iretq frame on the kernel stack names the user stage
    return {Op.READ: layout.K_LOAD, Op.WRITE: layout.K_STORE, Op.FETCH: layout.K_FETCH}[case.op]


class UnicornMachine:
    """A reusable Unicorn x86-64 CPU with the referee's harness loaded."""

    def __init__(self) -> None:
        uc = new_cpu(layout.RAM_SIZE)
        for pa, data in _HARNESS.items():
            uc.mem_write(pa, data)
        self._trap = ExceptionTrap(uc)  # the first exception; an int3 when the access completed
        uc.reg_write(UC_X86_REG_GDTR, (0, layout.GDT, layout.GDT_LIMIT, 0))
        # Enter IA-32e paging with a harness-only root (H_PML4[0] -> harness PDPT).
        uc.reg_write(UC_X86_REG_CR4, int(CR4.PAE))
        uc.msr_write(MSR_EFER, int(EFER.LME | EFER.LMA | EFER.NXE))
        uc.reg_write(UC_X86_REG_CR3, layout.H_PML4)
        uc.reg_write(UC_X86_REG_CR0, int(CR0.PE | CR0.PG) | CR0_ET)
        self.uc = uc
        self._context = uc.context_save()  # CPL 0, no exception pending
        self._written: set[int] = set()

    def _load_frames(self, frames: dict[int, bytes]) -> None:
        uc = self.uc
        for pa in self._written - frames.keys():
            uc.mem_write(pa, _HARNESS.get(pa, _ZERO_PAGE))
        for pa, data in frames.items():
            if pa not in _HARNESS or pa in self._written:
                uc.mem_write(pa, data)
        self._written = {pa for pa in frames if pa not in _HARNESS}

    def run(self, case: Case, state: CpuState | None = None, frames: dict[int, bytes] | None = None) -> Observation:
        """Run `case` (optionally with another CPU state or initial frames, for follow-up probes)."""
        state = state or case.state
        frames = case.frames if frames is None else frames
        uc = self.uc
        uc.context_restore(self._context)
        self._load_frames(frames)
        flush_tlb(uc)
        # CR4.PKE stays on until the harness has run WRPKRU (it #UDs without PKE); the harness then
        # loads the case's CR4 itself (`mov cr4, r14`), so PKRU can be hostile while PKE=0.
        uc.reg_write(UC_X86_REG_CR4, state.cr4 | int(CR4.PKE))
        uc.msr_write(MSR_EFER, state.efer)
        uc.reg_write(UC_X86_REG_CR3, state.cr3)
        uc.reg_write(UC_X86_REG_CR0, state.cr0)
        uc.reg_write(UC_X86_REG_EFLAGS, state.rflags)
        for reg, value in (
            (UC_X86_REG_RAX, state.pkru),
            (UC_X86_REG_RCX, 0),
            (UC_X86_REG_RDX, 0),
            (UC_X86_REG_R14, state.cr4),
            (UC_X86_REG_R15, _stage(case)),
            (UC_X86_REG_RBX, case.va),
            (UC_X86_REG_RSI, case.store_value),
            (UC_X86_REG_RDI, 0),
            (UC_X86_REG_RSP, layout.KSTACK_FRAME),
        ):
            uc.reg_write(reg, value)
        self._trap.reset()
        error = None
        try:
            uc.emu_start(layout.K_ENTRY, layout.K_UNTIL)
        except UcError as exc:
            error = str(exc)
        after = {pa: bytes(uc.mem_read(pa, layout.PAGE)) for pa in frames}
        for pa in _HARNESS:
            if after[pa] != _HARNESS[pa]:
                self._written.add(pa)  # a stray write hit the harness: rewrite it next time
        trap = self._trap.trap
        completed = error is None and trap is not None and trap.vector == BP_VECTOR and trap.rip == stop_address(case)
        return Observation(
            vector=None if trap is None else trap.vector,
            rip=0 if trap is None else trap.rip,
            cr2=0 if trap is None else trap.cr2,
            rdi=int(uc.reg_read(UC_X86_REG_RDI)),
            rax=int(uc.reg_read(UC_X86_REG_RAX)),
            error=error,
            completed=completed,
            cr4=int(uc.reg_read(UC_X86_REG_CR4)),
            efer=int(uc.msr_read(MSR_EFER)),
            frames=after,
        )
