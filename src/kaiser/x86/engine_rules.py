"""The SDM's paging rules for the compiled engine: a numba port of `kaiser.x86.rights`.

One module, one place: the combined rights of a walk, and the access-rights and protection-key
decision, each next to its Intel SDM Vol. 3A citation. Reserved bits are the reference's own rule
and every bit is `kaiser.x86.bits`'s; the reference rules (`kaiser.x86.rights`) are the
definition, and these functions must decide exactly as they do (`tests/x86/test_engine.py`
replays random streams through both paths and compares).

Encodings (plain integers, so the engine's hot loop holds no Python objects):

* rights: bit 0 = U/S (user), bit 1 = R/W (writable), bit 2 = XD (execute-disable).
* op: 0 = read, 1 = write, 2 = fetch (the `Ev` kinds of `kaiser.x86.events`).
* a decision: 0 = allowed, else the #PF error-code bits the rights add (P, and PK for a key).
"""

from __future__ import annotations

from typing import Final

from kaiser.x86 import rights as reference
from kaiser.x86.bits import ADDR_MASK_52 as ADDR_MASK_52  # engine_core reads it from here; one definition
from kaiser.x86.bits import CR0, CR3_NOFLUSH, CR3_PCID_MASK, CR4, EFER, PFEC, PTE, RFLAGS
from kaiser.x86.bits import PKEY_SHIFT as PKEY_SHIFT
from kaiser.x86.cpu import CpuFeatures
from kaiser.x86.engine_jit import inline
from kaiser.x86.events import Ev
from kaiser.x86.geometry import Level


def as_int64(value: int) -> int:
    """A u64 bit pattern as the int64 numba holds (bit 63 is the sign bit)."""
    return value - (1 << 64) if value >> 63 else value


# Every bit below is x86/bits.py's (SDM Vol. 3A §4.5, §4.7, §2.5; Vol. 1 §3.4.3), as the plain
# int64 numba freezes into the compiled code as a global: none is restated here.
# Bits of an entry (Tables 4-14..4-20).
P: Final = int(PTE.P)
RW: Final = int(PTE.RW)
US: Final = int(PTE.US)
A: Final = int(PTE.A)
D: Final = int(PTE.D)
PS: Final = int(PTE.PS)
G: Final = int(PTE.G)
NX: Final = as_int64(int(PTE.NX))  # bit 63: negative as int64

# CR3 fields (SDM Vol. 3A §4.5, Tables 4-12/4-13): the PCID in bits 11:0 with CR4.PCIDE, NOFLUSH.
PCID_MASK: Final = CR3_PCID_MASK
NOFLUSH: Final = as_int64(CR3_NOFLUSH)  # bit 63: negative as int64

# Rights bits.
R_USER: Final = 1
R_WRITABLE: Final = 2
R_NX: Final = 4
R_ALL: Final = R_USER | R_WRITABLE  # what a walk starts from: user, writable, executable

# Ops: the access kinds of `kaiser.x86.events.Ev`.
OP_READ: Final = int(Ev.READ)
OP_WRITE: Final = int(Ev.WRITE)
OP_FETCH: Final = int(Ev.FETCH)

# #PF error-code bits (SDM §4.7, Figure 4-12).
PFEC_P: Final = int(PFEC.P)
PFEC_WR: Final = int(PFEC.WR)
PFEC_US: Final = int(PFEC.US)
PFEC_RSVD: Final = int(PFEC.RSVD)
PFEC_ID: Final = int(PFEC.ID)
PFEC_PK: Final = int(PFEC.PK)

# Register bits the rules read (SDM Vol. 3A §2.5, §2.2.1; Vol. 1 §3.4.3).
CR0_WP: Final = int(CR0.WP)
CR4_PAE: Final = int(CR4.PAE)
CR4_PGE: Final = int(CR4.PGE)
CR4_LA57: Final = int(CR4.LA57)
CR4_PCIDE: Final = int(CR4.PCIDE)
CR4_SMEP: Final = int(CR4.SMEP)
CR4_SMAP: Final = int(CR4.SMAP)
CR4_PKE: Final = int(CR4.PKE)
CR4_LASS: Final = int(CR4.LASS)
EFER_NXE: Final = int(EFER.NXE)
RFLAGS_AC: Final = int(RFLAGS.AC)


def reserved_mask(level: Level, is_top: bool, large: bool, features: CpuFeatures, nxe: bool) -> int:
    """`kaiser.x86.rights.reserved_mask` (SDM §4.5, Tables 4-14..4-20) as int64: the engine
    computes the masks once per replay, as an int64 table, from the reference rule itself."""
    return as_int64(reference.reserved_mask(level, is_top, large, features, nxe))


@inline
def through(rights: int, entry: int, nxe: bool) -> int:
    """Rights combined with one more entry (SDM §4.6.1): U/S and R/W AND-ed, XD OR-ed (XD only
    with EFER.NXE=1)."""
    keep = R_NX
    if entry & US:
        keep |= R_USER
    if entry & RW:
        keep |= R_WRITABLE
    out = rights & keep
    if nxe and entry & NX:
        out |= R_NX
    return out


@inline
def smap_blocks(cr4: int, rflags: int, cpl: int) -> bool:
    """Does SMAP forbid a supervisor data access to a user-mode address? (SDM §4.6.1) With
    CR4.SMAP=1 an access at CPL<3 is allowed only with EFLAGS.AC=1; implicit accesses at CPL 3
    ignore AC and are always checked."""
    if not cr4 & CR4_SMAP:
        return False
    return not (rflags & RFLAGS_AC and cpl < 3)


@inline
def lass_blocks(va: int, op: int, cpl: int, implicit: bool, cr4: int, rflags: int) -> bool:
    """`kaiser.x86.rights.lass_violation` on the int64 address (bit 63 set: negative): with
    CR4.LASS, a user-mode access to the upper half, a supervisor fetch from the lower half, and a
    supervisor data access to the lower half with SMAP and (AC=0 or implicit) fault before paging
    (Intel SDM Vol. 3A, chapter 4 "Linear-Address Pre-Processing", LASS)."""
    if not cr4 & CR4_LASS:
        return False
    upper = va < 0
    if cpl == 3 and not implicit:
        return upper
    if upper:
        return False
    if op == OP_FETCH:
        return True
    return (cr4 & CR4_SMAP) != 0 and (implicit or not rflags & RFLAGS_AC)


@inline
def check_access(
    rights: int, pkey: int, op: int, cpl: int, implicit: bool, cr0: int, cr4: int, rflags: int, pkru: int
) -> int:
    """The access-rights decision of SDM §4.6.1 and the protection-key rule of §4.6.2 for the
    combined `rights` and the leaf's `pkey`: 0 if allowed, else the error-code bits it adds."""
    user_mode = cpl == 3 and not implicit  # SDM §4.6: CPL 3 and not an implicit supervisor access
    write = op == OP_WRITE
    user = rights & R_USER
    # §4.6.2: protection keys apply to data accesses to user-mode addresses, with CR4.PKE.
    if cr4 & CR4_PKE and user and op != OP_FETCH:
        ad = (pkru >> (2 * pkey)) & 1
        wd = (pkru >> (2 * pkey + 1)) & 1
        if ad:
            return PFEC_P | PFEC_PK  # PKRU.ADk=1: no data access
        if wd and write and (user_mode or cr0 & CR0_WP):
            return PFEC_P | PFEC_PK  # PKRU.WDk=1: no write (supervisor too with CR0.WP=1)
    if user_mode:
        if not user:
            return PFEC_P  # user access to a supervisor-mode address
        if write and not rights & R_WRITABLE:
            return PFEC_P  # user write to a read-only address
        if op == OP_FETCH and rights & R_NX:
            return PFEC_P  # user fetch from an execute-disabled address
        return 0
    # Supervisor-mode access.
    if op == OP_FETCH:
        if user and cr4 & CR4_SMEP:
            return PFEC_P  # supervisor fetch from a user-mode address with CR4.SMEP=1
        if rights & R_NX:
            return PFEC_P  # supervisor fetch from an execute-disabled address
        return 0
    if user and smap_blocks(cr4, rflags, cpl):
        return PFEC_P  # supervisor data access to a user-mode address with SMAP
    if write and not rights & R_WRITABLE and cr0 & CR0_WP:
        return PFEC_P  # supervisor write to a read-only address with CR0.WP=1
    return 0


@inline
def access_error_bits(op: int, cpl: int, implicit: bool, nxe: bool, cr4: int) -> int:
    """Error-code bits that describe the access itself (SDM §4.7): W/R, U/S, and I/D, which is
    reported only when EFER.NXE=1 or CR4.SMEP=1."""
    bits = 0
    if op == OP_WRITE:
        bits |= PFEC_WR
    if cpl == 3 and not implicit:
        bits |= PFEC_US
    if op == OP_FETCH and (nxe or cr4 & CR4_SMEP):
        bits |= PFEC_ID
    return bits
