"""The reference page walker: linear address + access + CPU state -> translation or fault.

The readable path. It sequences the rules of `kaiser.x86.rights` over the levels of the paging
mode and writes accessed/dirty bits back into the tables as hardware does (SDM Vol. 3A §4.8):
A is set in each non-leaf entry as the walk passes it (present, no reserved bit), so an access
that faults lower down may still leave A set above (permitted by §4.8, done by QEMU, tolerated by
kvm-unit-tests); the leaf's A, and D for a write, are set only when the access succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kaiser.x86.bits import PF_VECTOR, PFEC, PTE, SS_VECTOR, describe, entry_phys, pkey_of
from kaiser.x86.cpu import CpuFeatures, CpuState
from kaiser.x86.geometry import Level, mode_for
from kaiser.x86.hexrepr import hex_fields
from kaiser.x86.physmem import PhysicalMemory
from kaiser.x86.rights import Op, Rights, access_error_bits, check_access, lass_violation, reserved_mask

GP_VECTOR = 13


@hex_fields("table", "value")
@dataclass(frozen=True)
class EntryRef:
    """One paging-structure entry the walk read: where it lives and its value when read."""

    level: Level
    table: int  # physical address of the table
    index: int
    value: int

    @property
    def address(self) -> int:
        return self.table + 8 * self.index

    def describe(self) -> str:
        """``PML4E[508] at 0x423bfe0 = 0x1fc063 (P|RW|A|D phys=0x1fc000)``."""
        from kaiser.x86.bits import describe_entry

        return f"{self.level.entry}[{self.index}] at {self.address:#x} = {self.value:#x} ({describe_entry(self.value)})"


@hex_fields("va", "pa", "page_size", "leaf")
@dataclass(frozen=True)
class Translation:
    """A successful translation."""

    va: int
    pa: int
    page_size: int
    entries: tuple[EntryRef, ...]
    rights: Rights
    leaf: int  # leaf entry value after A/D update
    ok: bool = field(default=True, init=False)

    @property
    def global_(self) -> bool:
        return bool(self.leaf & PTE.G)

    @property
    def pkey(self) -> int:
        return pkey_of(self.leaf)

    def describe(self) -> str:
        """``0x400000 -> 0x703c000 (4K page, user r-x, global)``."""
        r = self.rights
        rights = f"{'user' if r.user else 'supervisor'} r{'w' if r.writable else '-'}{'-' if r.nx else 'x'}"
        size = (
            f"{self.page_size >> 30}G"
            if self.page_size >= 1 << 30
            else (f"{self.page_size >> 20}M" if self.page_size >= 1 << 20 else f"{self.page_size >> 10}K")
        )
        return f"{self.va:#x} -> {self.pa:#x} ({size} page, {rights}{', global' if self.global_ else ''})"


@hex_fields("cr2", "error_code")
@dataclass(frozen=True)
class Fault:
    """An exception instead of a translation: #PF (vector 14, CR2, error code), #GP(0) (13) for a
    non-canonical address or a LASS violation, #SS(0) (12) for a LASS violation of a stack
    access. `entry` is the entry at which the walk stopped, if any."""

    vector: int
    cr2: int | None
    error_code: int
    reason: str
    entry: EntryRef | None = None
    entries: tuple[EntryRef, ...] = ()
    ok: bool = field(default=False, init=False)

    @property
    def level(self) -> Level | None:
        return self.entry.level if self.entry else None

    def describe(self) -> str:
        if self.vector == GP_VECTOR:
            return f"#GP(0): {self.reason}"
        if self.vector == SS_VECTOR:
            return f"#SS(0): {self.reason}"
        where = f" at {self.entry.level.entry}[{self.entry.index}]" if self.entry else ""
        error = f"{describe(PFEC, self.error_code)} ({self.error_code:#x})"
        return f"#PF cr2={self.cr2:#018x} error={error}{where}: {self.reason}"


_P, _PS, _A = int(PTE.P), int(PTE.PS), int(PTE.A)  # plain ints: IntFlag arithmetic is slow


def translate(
    mem: PhysicalMemory,
    state: CpuState,
    va: int,
    op: Op = Op.READ,
    *,
    implicit: bool = False,
    features: CpuFeatures | None = None,
    set_ad: bool = True,
    stack: bool = False,
) -> Translation | Fault:
    """Translate `va` for one access under `state` (SDM Vol. 3A §4.5-4.8).

    `implicit` marks a system-structure access (GDT/IDT/TSS...), which is a supervisor access at
    any CPL (§4.6). `stack` marks a stack access (push, pop, call, SS-relative), whose LASS
    violation is #SS(0) instead of #GP(0). With `set_ad=False` the tables are left untouched
    (a "probe" walk).
    """
    features = features or CpuFeatures(maxphyaddr=mem.maxphyaddr)
    mode = mode_for(state.la57)
    if not mode.is_canonical(va):
        return Fault(GP_VECTOR, None, 0, f"non-canonical address {va:#018x}")  # SDM Vol. 3A §6.15 #GP
    lass = lass_violation(va, op, state, implicit)
    if lass is not None:  # before paging: no walk, no A/D, no CR2 (rights.lass_violation)
        return Fault(SS_VECTOR if stack else GP_VECTOR, None, 0, lass)
    access_bits = access_error_bits(op, state, implicit)
    nxe = state.nxe
    table = state.root
    rights = Rights()
    walked: list[EntryRef] = []
    for depth, level in enumerate(mode.levels):
        index = level.index(va)
        value = mem.read_u64(table + 8 * index)
        ref = EntryRef(level, table, index, value)
        walked.append(ref)
        if not value & _P:  # SDM §4.7: P=0 in the error code; reserved bits not checked
            return Fault(PF_VECTOR, va, int(access_bits), f"{level.entry} not present", ref, tuple(walked))
        is_leaf = depth == len(mode.levels) - 1 or (level.leaf_ok and bool(value & _PS))
        large = is_leaf and depth != len(mode.levels) - 1
        bad = value & reserved_mask(level, depth == 0, large, features, nxe)
        if bad:
            return Fault(
                PF_VECTOR,
                va,
                int(access_bits | PFEC.P | PFEC.RSVD),
                f"reserved bits {bad:#x} set in {level.entry}",
                ref,
                tuple(walked),
            )
        rights = rights.through(value, nxe)
        if not is_leaf:
            if set_ad and not value & _A:
                mem.write_u64(ref.address, value | _A)  # SDM §4.8: A set in every entry used
            table = entry_phys(value)
            continue
        check = check_access(rights, value, op, state, implicit)
        if not check.allowed:
            return Fault(PF_VECTOR, va, int(access_bits | check.error_bits), check.reason, ref, tuple(walked))
        leaf = int(value | PTE.A | (PTE.D if op is Op.WRITE else 0))
        if set_ad and leaf != value:
            mem.write_u64(ref.address, leaf)  # SDM §4.8: A on use, D on a write through the leaf
        size = level.span
        return Translation(va, entry_phys(value, size) | (va & (size - 1)), size, tuple(walked), rights, leaf)
    raise AssertionError("unreachable: the last level is always a leaf")
