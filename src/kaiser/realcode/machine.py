"""Run the loaded realcode kernel and user program on Unicorn (QEMU's x86-64 MMU and TCG).

Unicorn runs the code: every instruction fetch, load and store is translated by QEMU's page
walker through *our* tables, copied frame for frame into its physical memory; MOV to CR3, SWAPGS,
LGDT, LRETQ, WRMSR, SYSRETQ and IRETQ (including the GDT loads at CPL 3 through the entry area's
GDT alias) are QEMU's own. Two transitions are not, and our CPU model performs them
architecturally (facts/x86-paging.md §3):

* SYSCALL is only a hook in Unicorn. The model does SDM Vol. 2B SYSCALL: RCX <- next RIP,
  R11 <- RFLAGS, RFLAGS &= ~IA32_FMASK, CS/SS flat CPL-0 selectors from IA32_STAR[47:32], RIP <-
  IA32_LSTAR (all MSRs as the kernel's own WRMSRs left them), then hands control back to Unicorn at
  LSTAR. Unicorn cannot lower CPL through a register write (QEMU checks RPL == CPL), so the CPL-0
  segment state is a QEMU context saved when the kernel's boot code had loaded CS/SS itself
  (`kaiser_cpl0_ready`); the user's registers, RFLAGS, CR3 and GS bases are written over it.
* Exceptions are not delivered through the IDT: UC_HOOK_INTR reports the vector and the run ends
  there; CR2 and the live CR3 are read from Unicorn's registers.

PCID: Unicorn accepts CR4.PCIDE but has no PCID-tagged TLB (every CR3 write flushes). CR3 bit 63
(NOFLUSH) is a write-only hint that real hardware does not store; Unicorn would store it. So the
hook on every `mov reg, %cr3` records the value the code wrote and clears bit 63 in the source
register just before QEMU executes the write.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from unicorn import UC_HOOK_CODE, UC_HOOK_INSN, Uc, UcError
from unicorn.x86_const import (
    UC_X86_INS_SYSCALL,
    UC_X86_REG_CR0,
    UC_X86_REG_CR3,
    UC_X86_REG_CR4,
    UC_X86_REG_CS,
    UC_X86_REG_EFLAGS,
    UC_X86_REG_FS_BASE,
    UC_X86_REG_GS_BASE,
    UC_X86_REG_R11,
    UC_X86_REG_RAX,
    UC_X86_REG_RCX,
    UC_X86_REG_RIP,
    UC_X86_REG_RSI,
    UC_X86_REG_RSP,
    UC_X86_REG_SS,
)

from kaiser.linux.layout import THREAD_SIZE
from kaiser.realcode import build
from kaiser.realcode.loader import Loaded
from kaiser.referee.unicorn_cpu import GPRS, ExceptionTrap, Trap, flush_tlb, new_cpu, write_frames
from kaiser.x86.bits import (
    BP_VECTOR,
    CR0,
    EFER,
    MSR_EFER,
    MSR_KERNEL_GS_BASE,
    MSR_LSTAR,
    MSR_STAR,
    MSR_SYSCALL_MASK,
    PF_VECTOR,
)

SYSCALL_LEN = 2  # 0F 05
NOFLUSH = 1 << 63
MAX_TRANSITIONS = 64
INSN_BUDGET = 20_000  # per emu_start; the whole run executes a few hundred instructions
# mov reg, %cr3 is [REX] 0F 22 /r; ModRM.rm (+ REX.B) names the source (SDM Vol. 2B MOV CR): an
# index into GPRS.
CR0_BOOT = int(CR0.PE | CR0.PG | CR0.WP) | 1 << 4 | 1 << 5 | 1 << 1  # + ET, NE, MP as Linux runs


@dataclass(frozen=True)
class Cr3Write:
    """One MOV to CR3 executed by the kernel code: where, the value written, and what it selects."""

    site: str
    value: int
    user_pgd: bool  # bit 12: the user half of the PGD pair

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "value": f"{self.value:#018x}",
            "pgd": "user" if self.user_pgd else "kernel",
            "pcid": self.value & 0xFFF,
            "noflush": bool(self.value & NOFLUSH),
        }


@dataclass(frozen=True)
class SyscallResult:
    """One system call the user program made: what it asked, expected and got back (None: not returned)."""

    name: str
    nr: int
    arg: int
    expect: int
    result: int | None  # None: the program never got there

    @property
    def ok(self) -> bool:
        return self.result == self.expect

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "nr": self.nr,
            "arg": f"{self.arg:#x}",
            "expect": f"{self.expect:#x}",
            "result": None if self.result is None else f"{self.result:#x}",
            "ok": self.ok,
        }


@dataclass
class Outcome:
    """What Unicorn did with the program."""

    syscalls_entered: int = 0  # SYSCALL transitions performed
    sysrets: int = 0  # SYSRETQ executed (system calls that came back)
    cr3_writes: list[Cr3Write] = field(default_factory=list)
    fault: Trap | None = None  # the exception that ended the run
    user_done: bool = False  # the program reached its final int3 (the kernel load did not fault)
    error: str | None = None
    results: list[SyscallResult] = field(default_factory=list)
    passed: int = 0  # the user program's own count of matching results
    leaked: int | None = None  # what the user's kernel load returned, if it did not fault
    probe: Trap | None = None  # the CPL-0 probe with the faulting CR3: its fault, if any
    probe_value: int | None = None
    deferred_boot_exit: bool = False  # the boot exit's CR3 switch was moved to its IRETQ (see RealMachine)
    seconds: float = 0.0


def _load_memory(uc: Uc, loaded: Loaded) -> None:
    """Copy every frame our model has storage for (page tables, image, per-CPU, user) into
    Unicorn's RAM. Untouched frames read as zero in both."""
    mem = loaded.kernel.mem
    write_frames(uc, mem.touched_frames(), mem.read_bytes)


def _cr3_source(code: bytes) -> int:
    """The GPR index that `mov reg, %cr3` at the start of `code` writes."""
    rex = code[0] if 0x40 <= code[0] <= 0x4F else 0
    op = code[1:] if rex else code
    if op[:2] != b"\x0f\x22" or (op[2] >> 3) & 7 != 3 or op[2] >> 6 != 3:
        raise build.BuildError(f"not a mov to %cr3: {code[:4].hex()}")
    return (op[2] & 7) | (8 if rex & 1 else 0)


class RealMachine:
    """One Unicorn CPU with the loaded machine's physical memory."""

    def __init__(self, loaded: Loaded, *, defer_boot_exit_cr3: bool = False) -> None:
        self.loaded = loaded
        self._defer = defer_boot_exit_cr3
        self._deferred_cr3: int | None = None
        image = loaded.image
        self.symbols = image.symbols
        uc = new_cpu(loaded.kernel.config.ram)
        _load_memory(uc, loaded)
        self.uc = uc
        self.out = Outcome()
        self._syscall_rip: int | None = None
        self._fault: Trap | None = None
        self._cpl0: Any = None
        self._sites: dict[int, tuple[str, int]] = {}
        for site in image.cr3_write_sites():
            self._sites[site] = (self.where(site), _cr3_source(self._code_at(site, 4)))
            uc.hook_add(UC_HOOK_CODE, self._on_cr3_write, None, site, site)
        ready = image.symbol("kaiser_cpl0_ready")
        uc.hook_add(UC_HOOK_CODE, self._on_cpl0_ready, None, ready, ready)
        iretq = image.symbol("native_iretq")
        uc.hook_add(UC_HOOK_CODE, self._on_iretq, None, iretq, iretq)
        sysretq = image.symbol("syscall_sysretq")
        uc.hook_add(UC_HOOK_CODE, self._on_sysret, None, sysretq, sysretq)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, UC_X86_INS_SYSCALL)
        self._trap = ExceptionTrap(uc)

    # ---- symbols ---------------------------------------------------------------------------
    def _code_at(self, va: int, length: int) -> bytes:
        for base, data in self.loaded.image.sections.values():
            if base <= va < base + len(data):
                return data[va - base : va - base + length]
        raise build.BuildError(f"{va:#x} is not in the realcode image")

    def where(self, va: int) -> str:
        """`symbol+offset` for an address of the image (the nearest global symbol below it)."""
        best = None
        for name, addr in self.symbols.items():
            if name.startswith("cr3_write_"):
                continue
            if addr <= va and (best is None or addr > best[1]) and va - addr < build.PAGE:
                best = (name, addr)
        if best is None:
            return f"{va:#x}"
        return best[0] if va == best[1] else f"{best[0]}+{va - best[1]:#x}"

    # ---- hooks -------------------------------------------------------------------------------
    def _on_cr3_write(self, uc: Uc, address: int, _size: int, _data: object) -> None:
        name, reg = self._sites[address]
        value = int(uc.reg_read(GPRS[reg]))
        self.out.cr3_writes.append(Cr3Write(name, value, bool(value & 1 << 12)))
        if value & NOFLUSH:
            value &= ~NOFLUSH
            uc.reg_write(GPRS[reg], value)  # the hint is not stored (SDM Vol. 3A 4.10.4.1)
        if self._defer and value & 1 << 12 and not self.out.deferred_boot_exit:
            # Keep the kernel CR3 for the rest of the boot exit; the switch happens at its IRETQ.
            self._deferred_cr3 = value
            self.out.deferred_boot_exit = True
            uc.reg_write(GPRS[reg], int(uc.reg_read(UC_X86_REG_CR3)))

    def _on_iretq(self, uc: Uc, _address: int, _size: int, _data: object) -> None:
        if self._deferred_cr3 is not None:
            uc.reg_write(UC_X86_REG_CR3, self._deferred_cr3)
            flush_tlb(uc)
            self._deferred_cr3 = None

    def _on_cpl0_ready(self, uc: Uc, _address: int, _size: int, _data: object) -> None:
        if self._cpl0 is None:
            self._cpl0 = uc.context_save()

    def _on_sysret(self, _uc: Uc, _address: int, _size: int, _data: object) -> None:
        self.out.sysrets += 1

    def _on_syscall(self, uc: Uc, _data: object) -> None:
        self._syscall_rip = int(uc.reg_read(UC_X86_REG_RIP))  # the SYSCALL instruction itself
        uc.emu_stop()

    # ---- the transitions our model performs ----------------------------------------------------
    def _perform_syscall(self, rip: int) -> int:
        """SYSCALL (SDM Vol. 2B): returns the new RIP (IA32_LSTAR)."""
        uc = self.uc
        if self._cpl0 is None:
            raise RuntimeError("SYSCALL before the kernel finished booting")
        regs = [int(uc.reg_read(r)) for r in GPRS]
        rflags = int(uc.reg_read(UC_X86_REG_EFLAGS))
        cr3 = int(uc.reg_read(UC_X86_REG_CR3))
        fs_base, gs_base = int(uc.reg_read(UC_X86_REG_FS_BASE)), int(uc.reg_read(UC_X86_REG_GS_BASE))
        kernel_gs = int(uc.msr_read(MSR_KERNEL_GS_BASE))
        efer = int(uc.msr_read(MSR_EFER))
        if not efer & EFER.SCE:
            raise RuntimeError("SYSCALL with EFER.SCE clear would #UD")
        star = int(uc.msr_read(MSR_STAR))
        lstar = int(uc.msr_read(MSR_LSTAR))
        fmask = int(uc.msr_read(MSR_SYSCALL_MASK))
        uc.context_restore(self._cpl0)  # CPL 0, flat CS/SS the kernel loaded; no stale exception
        kernel_cs = (star >> 32) & 0xFFFC
        if int(uc.reg_read(UC_X86_REG_CS)) != kernel_cs or int(uc.reg_read(UC_X86_REG_SS)) != kernel_cs + 8:
            raise RuntimeError("the saved CPL-0 state does not hold STAR's kernel CS/SS")
        for reg, value in zip(GPRS, regs, strict=True):
            uc.reg_write(reg, value)
        uc.reg_write(UC_X86_REG_RCX, rip + SYSCALL_LEN)
        uc.reg_write(UC_X86_REG_R11, rflags)
        uc.reg_write(UC_X86_REG_EFLAGS, rflags & ~fmask)
        uc.reg_write(UC_X86_REG_FS_BASE, fs_base)
        uc.reg_write(UC_X86_REG_GS_BASE, gs_base)
        uc.msr_write(MSR_KERNEL_GS_BASE, kernel_gs)
        uc.reg_write(UC_X86_REG_CR3, cr3)  # SYSCALL does not touch CR3: put the live one back
        flush_tlb(uc)
        self.out.syscalls_entered += 1
        return lstar

    # ---- the run -------------------------------------------------------------------------------------
    def _emulate(self, begin: int) -> None:
        self._trap.reset()
        self._syscall_rip = None
        try:
            self.uc.emu_start(begin, 0, count=INSN_BUDGET)
        except UcError as exc:
            self.out.error = f"{exc} at {self.where(int(self.uc.reg_read(UC_X86_REG_RIP)))}"
        trap = self._trap.trap
        self._fault = None
        if trap is not None:
            self._fault = replace(trap, where=self.where(trap.rip))

    def run(self) -> Outcome:
        started = time.perf_counter()
        uc, loaded, out = self.uc, self.loaded, self.out
        # The boot loader's state: IA-32e paging on the task's kernel CR3, RSP on its stack.
        uc.reg_write(UC_X86_REG_CR4, loaded.kernel.cr4())
        uc.msr_write(MSR_EFER, int(EFER.LME | EFER.LMA | EFER.NXE))
        uc.reg_write(UC_X86_REG_CR3, loaded.kernel_cr3)
        uc.reg_write(UC_X86_REG_CR0, CR0_BOOT)
        uc.reg_write(UC_X86_REG_RSP, loaded.task.stack + THREAD_SIZE)
        begin = loaded.image.symbol("kaiser_start_kernel")
        for _ in range(MAX_TRANSITIONS):
            self._emulate(begin)
            if out.error is not None:
                break
            if self._syscall_rip is not None:
                begin = self._perform_syscall(self._syscall_rip)
                continue
            fault = self._fault
            if fault is not None and fault.vector == BP_VECTOR and fault.rip == loaded.image.symbol("user_done") + 1:
                out.user_done = True
            elif fault is not None:
                out.fault = fault
            else:
                out.error = "the program neither faulted nor finished within the instruction budget"
            break
        self._collect()
        if out.fault is not None and out.fault.vector == PF_VECTOR and out.fault.cpl == 3:
            self._probe(out.fault.cr3, out.fault.cr2)
        out.seconds = time.perf_counter() - started
        return out

    def _read_u64(self, va_symbol: str, index: int = 0) -> int:
        loaded = self.loaded
        offset = loaded.image.symbol(va_symbol) - loaded.image.sections[".user.data"][0] + 8 * index
        return int.from_bytes(self.uc.mem_read(loaded.user_data_pa + offset, 8), "little")

    def _collect(self) -> None:
        out, loaded = self.out, self.loaded
        out.passed = self._read_u64("passed")
        for i, call in enumerate(loaded.calls):
            result = self._read_u64("calls", 4 * i + 3) if i < out.sysrets else None
            out.results.append(SyscallResult(call.name, call.nr, call.arg, call.expect, result))
        if out.user_done:
            out.leaked = self._read_u64("leaked")

    def _probe(self, cr3: int, va: int) -> None:
        """A CPL-0 load of `va` with `cr3` live: does that CR3 translate `va` at all?"""
        uc = self.uc
        uc.context_restore(self._cpl0)
        uc.reg_write(UC_X86_REG_CR3, cr3)
        flush_tlb(uc)
        uc.reg_write(UC_X86_REG_RSI, va)
        self._emulate(self.loaded.image.symbol("kaiser_probe"))
        fault = self._fault
        if (
            fault is not None
            and fault.vector == BP_VECTOR
            and fault.rip == self.loaded.image.symbol("kaiser_probe_done") + 1
        ):
            self.out.probe_value = int(uc.reg_read(UC_X86_REG_RAX))
        else:
            self.out.probe = fault
