"""The CPU as data: what it supports (features) and what it is set to (register state).

Every layer reads these frozen values; nothing keeps paging state in globals (the habit of angr's
`archinfo`: a CPU is a declarative description).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final

from kaiser.sourced import Source, chosen
from kaiser.x86.bits import CR0, CR4, EFER, RFLAGS, BitsError, cr3_pcid, cr3_table


@dataclass(frozen=True)
class CpuFeatures:
    """What the modelled core implements (CPUID). `maxphyaddr` is CPUID.80000008H:EAX[7:0]."""

    maxphyaddr: int = 46
    nx: bool = True
    smep: bool = True
    smap: bool = True
    pku: bool = True
    pcid: bool = True
    invpcid: bool = True
    la57: bool = True
    gbpages: bool = True  # 1 GiB pages (CPUID.80000001H:EDX[26])
    lass: bool = False  # linear-address-space separation (CPUID.(EAX=07H,ECX=1):EAX[6])

    def __post_init__(self) -> None:
        if not 36 <= self.maxphyaddr <= 52:
            raise BitsError(f"maxphyaddr={self.maxphyaddr} is outside 36..52 (SDM §4.1.4)")


# The tag of each number of `CpuFeatures` (kaiser.sourced; the switches are booleans, not numbers).
FEATURE_SOURCES: Final[dict[str, Source]] = {
    "maxphyaddr": chosen(
        "46 bits, the server parts' CPUID.80000008H:EAX[7:0] (a client i7-6700K reports 39), the same in every "
        "description: the reserved-bit checks and the referee's random cases are drawn against it"
    ),
}


# The named views below test plain ints: IntFlag arithmetic is slow on the walk's hot path.
_WP: Final = int(CR0.WP)
_SMEP: Final = int(CR4.SMEP)
_SMAP: Final = int(CR4.SMAP)
_PKE: Final = int(CR4.PKE)
_PGE: Final = int(CR4.PGE)
_PCIDE: Final = int(CR4.PCIDE)
_LA57: Final = int(CR4.LA57)
_NXE: Final = int(EFER.NXE)
_AC: Final = int(RFLAGS.AC)
_LASS: Final = int(CR4.LASS)


@dataclass(frozen=True)
class CpuState:
    """Register state the walker depends on. `cpl` is the current privilege level (0..3)."""

    cr3: int
    cr0: int = CR0.PE | CR0.PG | CR0.WP
    cr4: int = CR4.PAE | CR4.PGE
    efer: int = EFER.LME | EFER.LMA | EFER.NXE
    rflags: int = 0x2
    pkru: int = 0
    cpl: int = 0

    def __post_init__(self) -> None:
        if self.cpl not in (0, 1, 2, 3):
            raise BitsError(f"cpl={self.cpl} is not 0..3")
        if not self.cr0 & CR0.PG or not self.cr4 & CR4.PAE or not self.efer & EFER.LME:
            raise BitsError("the model covers IA-32e paging only: CR0.PG, CR4.PAE and EFER.LME must be set")
        if self.pkru >> 32:
            raise BitsError(f"PKRU={self.pkru:#x} is wider than 32 bits")
        if self.cr4 & _LASS and not self.cr4 & _SMAP:
            # Linux enables LASS only beside SMAP (its supervisor data check applies only with
            # CR4.SMAP=1, SDM Vol. 3A "Linear-Address Pre-Processing", LASS); the model refuses
            # the combination rather than model a half-enabled LASS.
            raise BitsError("CR4.LASS needs CR4.SMAP=1 (LASS's supervisor data check rests on SMAP)")

    # Named views, so rules read like the SDM.
    @property
    def wp(self) -> bool:
        return bool(self.cr0 & _WP)

    @property
    def smep(self) -> bool:
        return bool(self.cr4 & _SMEP)

    @property
    def smap(self) -> bool:
        return bool(self.cr4 & _SMAP)

    @property
    def pke(self) -> bool:
        return bool(self.cr4 & _PKE)

    @property
    def pge(self) -> bool:
        return bool(self.cr4 & _PGE)

    @property
    def pcide(self) -> bool:
        return bool(self.cr4 & _PCIDE)

    @property
    def la57(self) -> bool:
        return bool(self.cr4 & _LA57)

    @property
    def lass(self) -> bool:
        return bool(self.cr4 & _LASS)

    @property
    def nxe(self) -> bool:
        return bool(self.efer & _NXE)

    @property
    def ac(self) -> bool:
        return bool(self.rflags & _AC)

    @property
    def root(self) -> int:
        """Physical address of the top-level table."""
        return cr3_table(self.cr3)

    @property
    def pcid(self) -> int:
        return cr3_pcid(self.cr3, self.pcide)

    def replace(self, **changes: int) -> CpuState:
        """A copy with some registers changed."""
        return dataclasses.replace(self, **changes)
