"""Architectural bit layouts: page-table entries, control registers, EFER, RFLAGS, #PF error code.

Every constant is named after the Intel SDM (Vol. 3A), with the section that defines it; what an
OS calls these bits and which combinations it writes are the OS layer's (Linux's:
`kaiser.linux.pgtable_types`). Encoders check every field's width and raise instead of silently
masking (the habit of Qiling's `x86_utils.py`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

MASK64: Final = (1 << 64) - 1


class PTE(enum.IntFlag):
    """Bits of a 64-bit paging-structure entry (SDM Vol. 3A §4.5, Tables 4-14..4-20). SW1..SW5 are
    bits the walk ignores, left to software (the OS layer names them)."""

    P = 1 << 0  # present
    RW = 1 << 1  # writable
    US = 1 << 2  # user accessible
    PWT = 1 << 3  # page write-through
    PCD = 1 << 4  # page cache disable
    A = 1 << 5  # accessed (set by the walker, SDM §4.8)
    D = 1 << 6  # dirty (leaf only, SDM §4.8)
    PS = 1 << 7  # page size in PDPTE/PDE; the PAT bit in a 4 KiB PTE
    G = 1 << 8  # global (leaf only, needs CR4.PGE; SDM §4.10.2.4)
    SW1 = 1 << 9  # ignored by the walk: available to software (Tables 4-15..4-20)
    SW2 = 1 << 10  # ignored
    SW3 = 1 << 11  # ignored (the restart bit R for HLAT paging, not modelled)
    PAT_LARGE = 1 << 12  # PAT bit of a 2 MiB / 1 GiB leaf
    SW4 = 1 << 57  # ignored (bits 58:52 of every entry)
    SW5 = 1 << 58  # ignored
    PKEY0 = 1 << 59  # protection key bits 62:59 (SDM §4.6.2)
    PKEY1 = 1 << 60
    PKEY2 = 1 << 61
    PKEY3 = 1 << 62
    NX = 1 << 63  # execute-disable (XD), reserved unless EFER.NXE (SDM §4.5)


PTE_PAT_4K: Final = PTE.PS  # bit 7 of a 4 KiB PTE is PAT (SDM Table 4-20)
PKEY_SHIFT: Final = 59
PKEY_MASK: Final = 0xF << PKEY_SHIFT
ADDR_MASK_52: Final = ((1 << 52) - 1) & ~0xFFF  # bits 51:12, the widest address field


class CR0(enum.IntFlag):
    """CR0 bits the paging model reads (SDM Vol. 3A §2.5)."""

    PE = 1 << 0
    WP = 1 << 16  # supervisor writes honour R/W (SDM §4.6.1)
    PG = 1 << 31


class CR4(enum.IntFlag):
    """CR4 bits the paging model reads (SDM Vol. 3A §2.5)."""

    PSE = 1 << 4
    PAE = 1 << 5
    PGE = 1 << 7  # global pages (SDM §4.10.2.4)
    LA57 = 1 << 12  # 5-level paging (SDM §4.5)
    PCIDE = 1 << 17  # process-context identifiers (SDM §4.10.1)
    SMEP = 1 << 20
    SMAP = 1 << 21
    PKE = 1 << 22  # protection keys for user pages
    PKS = 1 << 24  # protection keys for supervisor pages
    LASS = 1 << 27  # linear-address-space separation (SDM Vol. 3A §2.5; needs SMAP: see CpuState)


class EFER(enum.IntFlag):
    """IA32_EFER bits (SDM Vol. 3A §2.2.1)."""

    SCE = 1 << 0
    LME = 1 << 8
    LMA = 1 << 10
    NXE = 1 << 11


class RFLAGS(enum.IntFlag):
    """RFLAGS bits the paging model reads (SDM Vol. 1 §3.4.3)."""

    IF = 1 << 9
    AC = 1 << 18  # alignment check / SMAP override (SDM Vol. 3A §4.6.1)


class PFEC(enum.IntFlag):
    """Page-fault error code pushed with #PF (SDM Vol. 3A §4.7, Figure 4-12)."""

    P = 1 << 0  # 0: non-present entry; 1: protection / reserved bit / PK
    WR = 1 << 1  # the access was a write
    US = 1 << 2  # the access was a user-mode access
    RSVD = 1 << 3  # a reserved bit was set in a paging-structure entry
    ID = 1 << 4  # instruction fetch (only reported with NXE or SMEP)
    PK = 1 << 5  # protection-key violation
    SS = 1 << 6  # shadow-stack access
    HLAT = 1 << 7
    SGX = 1 << 15


PF_VECTOR: Final = 14  # #PF (SDM Vol. 3A §6.15)
BP_VECTOR: Final = 3  # #BP, raised by INT3 (SDM Vol. 3A §6.15)
SS_VECTOR: Final = 12  # #SS (SDM Vol. 3A §6.15): a LASS violation of a stack access

# Architectural MSRs (SDM Vol. 4 Table 2-2).
MSR_EFER: Final = 0xC0000080
MSR_STAR: Final = 0xC0000081  # SYSCALL/SYSRET segment selectors
MSR_LSTAR: Final = 0xC0000082  # the 64-bit SYSCALL entry point
MSR_SYSCALL_MASK: Final = 0xC0000084  # IA32_FMASK: RFLAGS bits SYSCALL clears
MSR_GS_BASE: Final = 0xC0000101
MSR_KERNEL_GS_BASE: Final = 0xC0000102  # swapped with GS.base by SWAPGS

# CR3 (SDM Vol. 3A §4.5, Table 4-12 and 4-13).
CR3_PWT: Final = 1 << 3  # only without CR4.PCIDE
CR3_PCD: Final = 1 << 4  # only without CR4.PCIDE
CR3_PCID_MASK: Final = 0xFFF  # bits 11:0 with CR4.PCIDE
CR3_NOFLUSH: Final = 1 << 63  # MOV to CR3 with PCIDE: do not invalidate the new PCID


def cr3_reserved_mask(maxphyaddr: int) -> int:
    """Bits 62:MAXPHYADDR of a value moved to CR3: reserved, #GP if set (SDM Vol. 3A §4.5,
    Table 4-12/4-13; bit 63 is NOFLUSH with CR4.PCIDE, else reserved too)."""
    return ((1 << 63) - 1) & ~((1 << maxphyaddr) - 1)


class BitsError(ValueError):
    """A field does not fit its architectural width."""


def _check_width(name: str, value: int, bits: int) -> None:
    if value < 0 or value >= 1 << bits:
        raise BitsError(f"{name}={value:#x} does not fit in {bits} bits")


def pkey_of(entry: int) -> int:
    """Protection key of a leaf entry (bits 62:59)."""
    return (entry >> PKEY_SHIFT) & 0xF


def _check_maxphyaddr(maxphyaddr: int) -> None:
    if not 1 <= maxphyaddr <= 52:
        raise BitsError(f"maxphyaddr={maxphyaddr} is outside 1..52 (SDM §4.1.4)")


def make_entry(phys: int, flags: int, *, maxphyaddr: int = 52, pkey: int = 0, align: int = 4096) -> int:
    """Encode a paging-structure entry. `phys` must be `align`-aligned and below 2**maxphyaddr.

    `align` is the page size of a leaf (4 KiB for tables and PTEs); bit 12 (PAT_LARGE) may be set
    in `flags` only when `align` is larger, where it is the PAT bit rather than an address bit.
    """
    _check_maxphyaddr(maxphyaddr)
    if align < 4096 or align & (align - 1):
        raise BitsError(f"alignment {align:#x} is not a power of two of at least 4 KiB")
    if phys % align:
        raise BitsError(f"physical address {phys:#x} is not aligned to {align:#x}")
    _check_width("physical address", phys, maxphyaddr)
    _check_width("pkey", pkey, 4)
    flags = int(flags)
    _check_width("flags", flags, 64)
    allowed_addr_bits = int(PTE.PAT_LARGE) if align > 4096 else 0
    if flags & (ADDR_MASK_52 | PKEY_MASK) & ~allowed_addr_bits:
        raise BitsError(f"flags {flags:#x} overlap the address or key field")
    return phys | flags | (pkey << PKEY_SHIFT)


def entry_phys(entry: int, page_size: int = 4096) -> int:
    """Physical address held by an entry mapping (or pointing to) `page_size` bytes."""
    return entry & ADDR_MASK_52 & ~(page_size - 1)


@dataclass(frozen=True)
class EntryFields:
    """A decoded paging-structure entry: the inverse of `make_entry` for one page size."""

    phys: int
    flags: int  # every bit outside the address and key fields (PAT_LARGE included for large pages)
    pkey: int


def decode_entry(entry: int, page_size: int = 4096) -> EntryFields:
    """Split an entry mapping (or pointing to) `page_size` bytes into address, flags and key."""
    _check_width("entry", entry, 64)
    phys = entry_phys(entry, page_size)
    return EntryFields(phys, entry & ~phys & ~PKEY_MASK, pkey_of(entry))


def make_cr3(
    pgd_phys: int,
    *,
    pcid: int = 0,
    noflush: bool = False,
    pcide: bool = False,
    pwt: bool = False,
    pcd: bool = False,
    maxphyaddr: int = 52,
) -> int:
    """Encode CR3. With `pcide` bits 11:0 are the PCID (and bit 63 NOFLUSH, used by MOV to CR3);
    without it bits 3 and 4 are PWT/PCD and a PCID or NOFLUSH is an error (SDM Tables 4-12/4-13)."""
    _check_maxphyaddr(maxphyaddr)
    if pgd_phys % 4096:
        raise BitsError(f"CR3 table address {pgd_phys:#x} is not 4 KiB aligned")
    _check_width("CR3 table address", pgd_phys, maxphyaddr)
    if pcide:
        _check_width("PCID", pcid, 12)
        if pwt or pcd:
            raise BitsError("CR3.PWT/PCD do not exist with CR4.PCIDE=1 (bits 11:0 are the PCID)")
        return pgd_phys | pcid | (CR3_NOFLUSH if noflush else 0)
    if pcid or noflush:
        raise BitsError(f"a PCID ({pcid:#x}) or NOFLUSH in CR3 needs CR4.PCIDE=1")
    return pgd_phys | (CR3_PWT if pwt else 0) | (CR3_PCD if pcd else 0)


def cr3_table(cr3: int) -> int:
    """Physical address of the top-level table named by CR3."""
    return cr3 & ADDR_MASK_52


def cr3_pcid(cr3: int, pcide: bool) -> int:
    """PCID of a CR3 value (0 when CR4.PCIDE is clear, SDM §4.10.1)."""
    return cr3 & CR3_PCID_MASK if pcide else 0


@dataclass(frozen=True)
class Cr3Fields:
    """A decoded CR3 (SDM Tables 4-12/4-13): `pcid`/`noflush` only with CR4.PCIDE, `pwt`/`pcd`
    only without it (the other pair is always 0/False)."""

    table: int
    pcide: bool
    pcid: int = 0
    noflush: bool = False
    pwt: bool = False
    pcd: bool = False

    def encode(self) -> int:
        """The CR3 value again (`make_cr3` with these fields)."""
        return make_cr3(self.table, pcid=self.pcid, noflush=self.noflush, pcide=self.pcide, pwt=self.pwt, pcd=self.pcd)

    def describe(self) -> str:
        if self.pcide:
            return f"table={self.table:#x} pcid={self.pcid:#x}" + (" NOFLUSH" if self.noflush else "")
        return f"table={self.table:#x}" + (" PWT" if self.pwt else "") + (" PCD" if self.pcd else "")


def decode_cr3(cr3: int, pcide: bool) -> Cr3Fields:
    """Decode a CR3 value as read (or as written by MOV to CR3, for NOFLUSH) under CR4.PCIDE.

    Bits 62:52 are reserved (SDM §4.5), and bit 63 means NOFLUSH only with PCIDE: a value that
    sets them is rejected as a model input error.
    """
    _check_width("CR3", cr3, 64)
    if cr3 & ((1 << 63) - 1) & ~((1 << 52) - 1):
        raise BitsError(f"CR3 {cr3:#x} sets reserved bits 62:52")
    table = cr3_table(cr3)
    if pcide:
        return Cr3Fields(table, True, pcid=cr3 & CR3_PCID_MASK, noflush=bool(cr3 & CR3_NOFLUSH))
    if cr3 & CR3_NOFLUSH:
        raise BitsError(f"CR3 {cr3:#x} sets bit 63 (NOFLUSH), which needs CR4.PCIDE=1")
    return Cr3Fields(table, False, pwt=bool(cr3 & CR3_PWT), pcd=bool(cr3 & CR3_PCD))


def describe(flag_type: type[enum.IntFlag], value: int) -> str:
    """Names of the set bits, `|`-joined in bit order; unknown bits as hex. E.g. `P|RW|NX`, or
    `describe(PFEC, 0b10111) == "P|WR|US|ID"`. Works for PTE, CR0, CR4, EFER, RFLAGS and PFEC."""
    _check_width(flag_type.__name__, int(value), 64)
    names = []
    rest = int(value)
    for member in flag_type:
        if member.value & value:
            names.append(member.name or hex(member.value))
            rest &= ~member.value
    if flag_type is PTE and rest:
        if rest & ADDR_MASK_52:
            names.append(f"addr={rest & ADDR_MASK_52:#x}")
        rest &= ~ADDR_MASK_52
    if rest:
        names.append(f"{rest:#x}")
    return "|".join(names) if names else "0"


def describe_entry(entry: int, page_size: int | None = None) -> str:
    """Human form of an entry: flags, physical address and protection key.

    With the `page_size` of a leaf the PAT bit is named where it lives: bit 7 of a 4 KiB PTE
    (shown as `PAT`, not `PS`), bit 12 of a 2 MiB / 1 GiB leaf (SDM Tables 4-16, 4-18, 4-20).
    """
    _check_width("entry", entry, 64)
    phys = entry_phys(entry, page_size or 4096)
    flags = entry & ~phys & ~PKEY_MASK
    names = describe(PTE, flags & ~int(PTE.PAT_LARGE)).split("|")
    if page_size == 4096 and flags & PTE_PAT_4K:
        names[names.index("PS")] = "PAT"
    if flags & PTE.PAT_LARGE:
        names.append("PAT")
    text = "|".join(n for n in names if n != "0") or "0"
    key = pkey_of(entry)
    return f"{text} phys={phys:#x}" + (f" pkey={key}" if key else "")
