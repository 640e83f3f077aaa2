"""The SDM's paging rules in one place: reserved bits, combined rights, and the access check.

Every rule cites Intel SDM Vol. 3A. The walker only sequences these rules; it decides nothing
itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kaiser.x86.bits import PFEC, PTE, pkey_of
from kaiser.x86.cpu import CpuFeatures, CpuState
from kaiser.x86.geometry import Level


class Op(enum.Enum):
    """The kind of access."""

    READ = "read"
    WRITE = "write"
    FETCH = "fetch"


def reserved_mask(level: Level, is_top: bool, large: bool, features: CpuFeatures, nxe: bool) -> int:
    """Bits that must be 0 in a present entry at `level` (SDM §4.5, Tables 4-14..4-20; §4.6.1 for XD)."""
    mask = ((1 << 52) - 1) & ~((1 << features.maxphyaddr) - 1)  # bits 51:MAXPHYADDR in every entry
    if not nxe:
        mask |= int(PTE.NX)  # XD is reserved when EFER.NXE = 0 (SDM §4.5, Table 4-14 note)
    if not level.leaf_ok:
        mask |= int(PTE.PS)  # PS is reserved in PML5E and PML4E (SDM Tables 4-14, 4-15)
    elif large:
        if level.shift == 30 and not features.gbpages:
            mask |= int(PTE.PS)  # 1 GiB pages unsupported: PDPTE.PS reserved (Table 4-16)
        # Address bits below the page size, except the PAT bit 12 (Tables 4-16, 4-18).
        mask |= ((1 << level.shift) - 1) & ~0x1FFF
    return mask


_US, _RW, _NX = int(PTE.US), int(PTE.RW), int(PTE.NX)  # plain ints: IntFlag arithmetic is slow


@dataclass(frozen=True)
class Rights:
    """Rights combined over every entry of a walk (SDM §4.6.1): U/S and R/W are AND-ed, XD OR-ed."""

    user: bool = True
    writable: bool = True
    nx: bool = False

    def through(self, entry: int, nxe: bool) -> Rights:
        return Rights(
            user=self.user and bool(entry & _US),
            writable=self.writable and bool(entry & _RW),
            nx=self.nx or (nxe and bool(entry & _NX)),
        )


@dataclass(frozen=True)
class AccessCheck:
    """Outcome of the rights check: allowed, or the error-code bits it adds (P always, PK maybe)."""

    allowed: bool
    error_bits: PFEC = PFEC(0)
    reason: str = ""


def is_user_mode(state: CpuState, implicit: bool) -> bool:
    """User-mode access = CPL 3 and not an implicit system-structure access (SDM §4.6)."""
    return state.cpl == 3 and not implicit


def smap_blocks(state: CpuState, implicit: bool) -> bool:
    """Does SMAP forbid this supervisor data access to a user-mode address? (SDM §4.6.1)

    With CR4.SMAP=1: explicit accesses (CPL<3) are allowed only with EFLAGS.AC=1; implicit
    accesses honour AC the same way at CPL<3, while at CPL 3 AC is ignored and they are always
    checked (SDM §4.6.1; kvm-unit-tests `x86/smap.c` notes; QEMU `cpu_mmu_index_kernel`).
    """
    if not state.smap:
        return False
    return not (state.ac and state.cpl < 3)


def lass_violation(va: int, op: Op, state: CpuState, implicit: bool) -> str | None:
    """Does linear-address-space separation forbid this access? The reason, or None.

    The check is on bit 63 of the linear address and comes before paging (Intel SDM Vol. 3A,
    chapter 4 "Paging", "Linear-Address Pre-Processing": "Linear-Address-Space Separation
    (LASS)"; first in the ISE, chapter "Linear Address Space Separation"). With CR4.LASS=1:

    * a user-mode access (CPL 3, not implicit; data or instruction fetch) to an address with
      bit 63 = 1 violates LASS;
    * a supervisor-mode instruction fetch from an address with bit 63 = 0 violates it, whatever
      EFLAGS.AC;
    * a supervisor-mode data access to an address with bit 63 = 0 violates it when CR4.SMAP=1
      and either EFLAGS.AC=0 or the access is an implicit supervisor-mode access (at any CPL;
      unlike SMAP, AC never excuses an implicit access).

    The fault is #GP(0), or #SS(0) for a stack access; no walk, no A/D, no TLB fill, no CR2
    (the caller builds it). Software prefetches of a blocked address are dropped (the caller).
    """
    if not state.lass:
        return None
    upper = bool(va >> 63)
    if is_user_mode(state, implicit):
        return "LASS: user-mode access to the upper half (bit 63 = 1)" if upper else None
    if upper:
        return None
    if op is Op.FETCH:
        return "LASS: supervisor instruction fetch from the lower half (bit 63 = 0)"
    if state.smap and (implicit or not state.ac):
        why = "an implicit supervisor access" if implicit else "EFLAGS.AC=0"
        return f"LASS: supervisor data access to the lower half (bit 63 = 0), {why}"
    return None


def check_access(rights: Rights, leaf: int, op: Op, state: CpuState, implicit: bool) -> AccessCheck:
    """The access-rights decision of SDM §4.6.1 (Table in facts/x86-paging.md §2.2) and the
    protection-key rule of §4.6.2, for the combined `rights` and the `leaf` entry."""
    user_mode = is_user_mode(state, implicit)
    write = op is Op.WRITE
    # §4.6.2: protection keys apply to data accesses to user-mode addresses, with CR4.PKE.
    if state.pke and rights.user and op is not Op.FETCH:
        key = pkey_of(leaf)
        ad = (state.pkru >> (2 * key)) & 1
        wd = (state.pkru >> (2 * key + 1)) & 1
        if ad:
            return AccessCheck(False, PFEC.P | PFEC.PK, f"PKRU.AD{key}=1")
        if wd and write and (user_mode or state.wp):
            return AccessCheck(False, PFEC.P | PFEC.PK, f"PKRU.WD{key}=1")
    if user_mode:
        if not rights.user:
            return AccessCheck(False, PFEC.P, "user access to a supervisor-mode address")
        if write and not rights.writable:
            return AccessCheck(False, PFEC.P, "user write to a read-only address")
        if op is Op.FETCH and rights.nx:
            return AccessCheck(False, PFEC.P, "user fetch from an execute-disabled address")
        return AccessCheck(True)
    # Supervisor-mode access.
    if op is Op.FETCH:
        if rights.user and state.smep:
            return AccessCheck(False, PFEC.P, "supervisor fetch from a user-mode address with SMEP")
        if rights.nx:
            return AccessCheck(False, PFEC.P, "supervisor fetch from an execute-disabled address")
        return AccessCheck(True)
    if rights.user and smap_blocks(state, implicit):
        return AccessCheck(False, PFEC.P, "supervisor data access to a user-mode address with SMAP")
    if write and not rights.writable and state.wp:
        return AccessCheck(False, PFEC.P, "supervisor write to a read-only address with CR0.WP=1")
    return AccessCheck(True)


def access_error_bits(op: Op, state: CpuState, implicit: bool) -> PFEC:
    """Error-code bits that describe the access itself (SDM §4.7): W/R, U/S, and I/D, which is
    reported only when EFER.NXE=1 or CR4.SMEP=1."""
    bits = PFEC(0)
    if op is Op.WRITE:
        bits |= PFEC.WR
    if is_user_mode(state, implicit):
        bits |= PFEC.US
    if op is Op.FETCH and (state.nxe or state.smep):
        bits |= PFEC.ID
    return bits
