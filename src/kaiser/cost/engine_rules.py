"""The SDM's paging rules for the compiled engine: a numba port of `kaiser.x86.rights`.

One module, one place: reserved bits, the combined rights of a walk, and the access-rights and
protection-key decision, each next to its Intel SDM Vol. 3A citation. The reference rules
(`kaiser.x86.rights`) are the definition; these functions must decide exactly as they do
(`tests/cost/test_engine.py` replays random streams through both paths and compares).

Encodings (plain integers, so the engine's hot loop holds no Python objects):

* rights: bit 0 = U/S (user), bit 1 = R/W (writable), bit 2 = XD (execute-disable).
* op: 0 = read, 1 = write, 2 = fetch (the `Ev` kinds of `kaiser.x86.events`).
* a decision: 0 = allowed, else the #PF error-code bits the rights add (P, and PK for a key).
"""

from __future__ import annotations

from typing import Final

import numba

from kaiser.x86.bits import PKEY_SHIFT as PKEY_SHIFT  # engine_core reads it from here; one definition

# Bits of an entry (SDM Vol. 3A §4.5, Tables 4-14..4-20), as int64 (XD is the sign bit).
P: Final = 1 << 0
RW: Final = 1 << 1
US: Final = 1 << 2
A: Final = 1 << 5
D: Final = 1 << 6
PS: Final = 1 << 7
G: Final = 1 << 8
NX: Final = -(1 << 63)  # bit 63 as int64
ADDR_MASK_52: Final = ((1 << 52) - 1) & ~0xFFF  # bits 51:12

# Rights bits.
R_USER: Final = 1
R_WRITABLE: Final = 2
R_NX: Final = 4
R_ALL: Final = R_USER | R_WRITABLE  # what a walk starts from: user, writable, executable

# Ops (= Ev.READ/WRITE/FETCH).
OP_READ: Final = 0
OP_WRITE: Final = 1
OP_FETCH: Final = 2

# #PF error-code bits (SDM §4.7, Figure 4-12).
PFEC_P: Final = 1 << 0
PFEC_WR: Final = 1 << 1
PFEC_US: Final = 1 << 2
PFEC_RSVD: Final = 1 << 3
PFEC_ID: Final = 1 << 4
PFEC_PK: Final = 1 << 5

# Register bits the rules read (SDM Vol. 3A §2.5, §2.2.1; Vol. 1 §3.4.3).
CR0_WP: Final = 1 << 16
CR4_PAE: Final = 1 << 5
CR4_PGE: Final = 1 << 7
CR4_LA57: Final = 1 << 12
CR4_PCIDE: Final = 1 << 17
CR4_SMEP: Final = 1 << 20
CR4_SMAP: Final = 1 << 21
CR4_PKE: Final = 1 << 22
CR4_LASS: Final = 1 << 27
EFER_NXE: Final = 1 << 11
RFLAGS_AC: Final = 1 << 18

_jit = numba.njit(cache=True, inline="always")


def reserved_mask(level_shift: int, leaf_ok: bool, large: bool, maxphyaddr: int, gbpages: bool, nxe: bool) -> int:
    """Bits that must be 0 in a present entry at a level (SDM §4.5, Tables 4-14..4-20; §4.6.1 for
    XD). Plain Python: the engine computes the masks once per replay, as an int64 table."""
    mask = ((1 << 52) - 1) & ~((1 << maxphyaddr) - 1)  # bits 51:MAXPHYADDR in every entry
    if not nxe:
        mask |= 1 << 63  # XD is reserved when EFER.NXE = 0 (SDM §4.5, Table 4-14 note)
    if not leaf_ok:
        mask |= PS  # PS is reserved in PML5E and PML4E (SDM Tables 4-14, 4-15)
    elif large:
        if level_shift == 30 and not gbpages:
            mask |= PS  # 1 GiB pages unsupported: PDPTE.PS reserved (Table 4-16)
        mask |= ((1 << level_shift) - 1) & ~0x1FFF  # address bits below the page, except PAT (bit 12)
    return mask - (1 << 64) if mask >> 63 else mask  # as int64


@_jit
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


@_jit
def smap_blocks(cr4: int, rflags: int, cpl: int) -> bool:
    """Does SMAP forbid a supervisor data access to a user-mode address? (SDM §4.6.1) With
    CR4.SMAP=1 an access at CPL<3 is allowed only with EFLAGS.AC=1; implicit accesses at CPL 3
    ignore AC and are always checked."""
    if not cr4 & CR4_SMAP:
        return False
    return not (rflags & RFLAGS_AC and cpl < 3)


@_jit
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


@_jit
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


@_jit
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
