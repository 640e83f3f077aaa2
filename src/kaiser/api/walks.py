"""One translation as `kaiser walk` makes it: on the built-in sample space, or on a booted
process's user or kernel PGD with that kernel's CR3 (PCID bits included) and CR4. The walk itself
is `kaiser.x86.walker.translate`; this module only sets up the CPU state it runs under."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from kaiser.choices import PGDS
from kaiser.sample import build_sample
from kaiser.x86.bits import CR4, RFLAGS
from kaiser.x86.cpu import CpuState
from kaiser.x86.rights import Op
from kaiser.x86.walker import Fault, Translation, translate

if TYPE_CHECKING:  # kaiser walk without --variant boots no kernel: the linux layer loads only when used
    from kaiser.linux.kernel import Kernel, Task

_RFLAGS_FIXED: Final = 0x2  # bit 1 of RFLAGS reads as 1 (SDM Vol. 1 §3.4.3)


@dataclass(frozen=True)
class Walk:
    """A walk's outcome and the address space it ran in, in words."""

    result: Translation | Fault
    space: str


def _rflags(ac: bool) -> int:
    return _RFLAGS_FIXED | (RFLAGS.AC if ac else 0)


def _smap_smep(smap: bool, smep: bool) -> int:
    return (CR4.SMAP if smap else 0) | (CR4.SMEP if smep else 0)


def sample_walk(
    va: int, op: Op, *, user: bool = False, la57: bool = False, smap: bool = True, smep: bool = True, ac: bool = False
) -> Walk:
    """`va` translated on `kaiser.sample`'s space (CR4.PAE|PGE, LA57 with `la57`), from CPL 3 when
    `user` else CPL 0."""
    mem, pt, _ = build_sample(la57)
    cr4 = CR4.PAE | CR4.PGE | _smap_smep(smap, smep) | (CR4.LA57 if la57 else 0)
    state = CpuState(cr3=pt.cr3(), cr4=int(cr4), rflags=_rflags(ac), cpl=3 if user else 0)
    return Walk(translate(mem, state, va, op), "the sample space")


def process_walk(
    kernel: Kernel,
    task: Task,
    va: int,
    op: Op,
    *,
    pgd: str | None = None,
    user: bool = False,
    smap: bool = True,
    smep: bool = True,
    ac: bool = False,
) -> Walk:
    """`va` translated on `task`'s `pgd` (``user`` or ``kernel``; None: the one the CPU has loaded
    at that CPL -- the user PGD from CPL 3 when there is one). `ValueError` for ``user`` on a
    kernel without isolation (it has one PGD) or an unknown `pgd`."""
    if pgd is not None and pgd not in PGDS:
        raise ValueError(f"--pgd {pgd!r} is not one of {', '.join(PGDS)}")
    which = pgd or ("user" if user else "kernel")
    kcr3, ucr3 = kernel.cr3_pair(task)
    if which == "user" and ucr3 is None:
        if pgd is not None:
            raise ValueError(f"--pgd user: variant {kernel.variant.name} has no user PGD (no isolation)")
        which = "kernel"  # no isolation: user mode runs on the one PGD
    cr3 = kcr3 if which == "kernel" else ucr3
    assert cr3 is not None
    cr4 = (kernel.cr4() & ~int(CR4.SMAP | CR4.SMEP)) | _smap_smep(smap, smep)
    state = CpuState(cr3=cr3, cr4=int(cr4), rflags=_rflags(ac), cpl=3 if user else 0)
    where = f"{kernel.variant.name}'s {which} PGD (CR3 {cr3:#x}, pid {task.pid})"
    return Walk(translate(kernel.mem, state, va, op), where)
