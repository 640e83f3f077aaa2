"""Run one case on Unicorn (QEMU's TCG x86 MMU) and report what it observably did.

Unicorn maps *physical* memory (`mem_map`) and runs at *virtual* addresses once CR0.PG is set
(facts/x86-paging.md §3). Exceptions are not delivered through the IDT: `UC_HOOK_INTR` sees the
vector, CR2 is readable, the error code is not. One `Uc` is reused: each case restores a CPU
context saved before any exception (QEMU otherwise remembers the #PF and turns the next one into
#DF), flushes the softmmu TLB and rewrites CR3 (which flushes again, QEMU `cpu_x86_update_cr3`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_64, Uc, UcError
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH
from unicorn.x86_const import (
    UC_CPU_X86_ICELAKE_SERVER,
    UC_X86_REG_CR0,
    UC_X86_REG_CR2,
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
    UC_X86_REG_RIP,
    UC_X86_REG_RSI,
    UC_X86_REG_RSP,
)

from kaiser.referee import layout
from kaiser.referee.cases import CR0_ET, Case
from kaiser.x86.bits import CR0, CR4, EFER
from kaiser.x86.cpu import CpuState
from kaiser.x86.rights import Op

MSR_EFER = 0xC0000080
BP_VECTOR = 3  # int3: the access finished and the next instruction trapped
_ZERO_PAGE = bytes(layout.PAGE)
_HARNESS = layout.harness_frames()
CPU_MODEL = UC_CPU_X86_ICELAKE_SERVER


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
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        # The default model (qemu64) lacks SMAP and PKU: QEMU's cpu_x86_update_cr4 then silently clears
        # CR4.SMAP/PKE on a guest `mov cr4`. Icelake-Server has SMEP, SMAP, PKU, LA57 and 1 GiB pages.
        uc.ctl_set_cpu_model(CPU_MODEL)
        uc.mem_map(0, layout.RAM_SIZE)
        for pa, data in _HARNESS.items():
            uc.mem_write(pa, data)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.reg_write(UC_X86_REG_GDTR, (0, layout.GDT, layout.GDT_LIMIT, 0))
        # Enter IA-32e paging with a harness-only root (H_PML4[0] -> harness PDPT).
        uc.reg_write(UC_X86_REG_CR4, int(CR4.PAE))
        uc.msr_write(MSR_EFER, int(EFER.LME | EFER.LMA | EFER.NXE))
        uc.reg_write(UC_X86_REG_CR3, layout.H_PML4)
        uc.reg_write(UC_X86_REG_CR0, int(CR0.PE | CR0.PG) | CR0_ET)
        self.uc = uc
        self._context = uc.context_save()  # CPL 0, no exception pending
        self._written: set[int] = set()
        self._vector: int | None = None
        self._rip = 0
        self._cr2 = 0

    def _on_interrupt(self, uc: Uc, vector: int, _data: object) -> None:
        if self._vector is None:
            self._vector = vector
            self._rip = int(uc.reg_read(UC_X86_REG_RIP))
            self._cr2 = int(uc.reg_read(UC_X86_REG_CR2))
        uc.emu_stop()

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
        uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
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
        self._vector = None
        error = None
        try:
            uc.emu_start(layout.K_ENTRY, layout.K_UNTIL)
        except UcError as exc:
            error = str(exc)
        after = {pa: bytes(uc.mem_read(pa, layout.PAGE)) for pa in frames}
        for pa in _HARNESS:
            if after[pa] != _HARNESS[pa]:
                self._written.add(pa)  # a stray write hit the harness: rewrite it next time
        completed = error is None and self._vector == BP_VECTOR and self._rip == stop_address(case)
        return Observation(
            vector=self._vector,
            rip=self._rip,
            cr2=self._cr2,
            rdi=int(uc.reg_read(UC_X86_REG_RDI)),
            rax=int(uc.reg_read(UC_X86_REG_RAX)),
            error=error,
            completed=completed,
            cr4=int(uc.reg_read(UC_X86_REG_CR4)),
            efer=int(uc.msr_read(MSR_EFER)),
            frames=after,
        )
