"""An independent spec model of x86-64 access rights, for testing `kaiser.x86.walker`.

Written from the Intel SDM Vol. 3A tables (§4.5 reserved bits, §4.6.1 access rights, §4.6.2 protection keys,
§4.7 error code, §4.8 accessed/dirty; summarised in facts/x86-paging.md §2), on the model of kvm-unit-tests
`x86/access.c` (`ac_test_legal`, `ac_emulate_access`, `ac_test_permissions`). It imports nothing from kaiser:
bit positions are restated here so a wrong constant in `kaiser.x86.bits` cannot hide.

A case is a `Flags` vector. `entries()` says what each paging-structure entry of the walk holds, `expect()` what
the access must do: fault or not, exact error code, CR2, physical address, and every entry's value afterwards.

Accessed/dirty policy predicted exactly (stricter than access.c's "PDE.A don't-care"): A is set in every non-leaf
entry the walk passes (present, no reserved bit) even if the access faults further down; the leaf's A, and D on a
write, only when the access succeeds (SDM §4.8 permits both; QEMU does the same).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

# ---- architectural bits, restated from the SDM (not imported) -----------------------------------------------------
P: Final = 1 << 0
RW: Final = 1 << 1
US: Final = 1 << 2
A: Final = 1 << 5
D: Final = 1 << 6
PS: Final = 1 << 7  # Tables 4-15..4-19
G: Final = 1 << 8
PAT_LARGE: Final = 1 << 12  # PAT bit of a 2 MiB / 1 GiB leaf (Tables 4-17, 4-18): not an address bit, not reserved
XD: Final = 1 << 63
PKEY_SHIFT: Final = 59  # bits 62:59 of a leaf (§4.6.2); ignored in non-leaf entries

PF_P: Final = 1 << 0  # §4.7, Figure 4-12
PF_WR: Final = 1 << 1
PF_US: Final = 1 << 2
PF_RSVD: Final = 1 << 3
PF_ID: Final = 1 << 4
PF_PK: Final = 1 << 5

# ---- the fixed layout every case is built on (like access.c's 32 MiB page and 33 MiB table pool) -----------------
VA_4LEVEL: Final = 0xFFFF_9234_5678_9ABC  # upper half, every index and the page offset non-zero
VA_5LEVEL: Final = 0xFF92_3456_789A_BCDE  # canonical for 57-bit linear addresses
TABLE_PML5: Final = 0x10_0000
TABLE_PML4: Final = 0x10_1000
TABLE_PDPT: Final = 0x10_2000
TABLE_PD: Final = 0x10_3000
TABLE_PT: Final = 0x10_4000
PAGE_4K: Final = 0x200_0000  # 32 MiB, as access.c
PAGE_2M: Final = 0x60_0000
PAGE_1G: Final = 0x4000_0000
PKEY_LEAF: Final = 1  # `pkey1` puts key 1 in the leaf, else key 0
PKEY_NONLEAF: Final = 2  # always in non-leaf entries, fully disabled in PKRU: must be ignored
PKRU_HOSTILE: Final = 0xFFFF_FFFF  # loaded when CR4.PKE = 0, to prove PKRU is then ignored

# Axis names in the spelling of access.c's `ac_names` (extensions in the same style).
SPELLING: Final = {"pdpte_29": "pdpte.29", "pkey1": "pkey=1"}


@dataclass(unsafe_hash=True, slots=True)  # not frozen: construction speed matters (millions)
class Flags:
    """One permission case. Upper entries (PML5E, PML4E, PDPTE) default to P|RW|U as in access.c; the `_ro`,
    `_sup`, `_nx` and `_ps` axes take rights away or set reserved/size bits there."""

    # PTE (access.c)
    pte_rw: bool = False
    pte_user: bool = False
    pte_a: bool = False
    pte_d: bool = False
    pte_nx: bool = False
    pte_p: bool = False
    pte_51: bool = False
    pte_36: bool = False
    # PDE (access.c)
    pde_rw: bool = False
    pde_user: bool = False
    pde_a: bool = False
    pde_d: bool = False
    pde_pse: bool = False
    pde_nx: bool = False
    pde_p: bool = False
    pde_51: bool = False
    pde_36: bool = False
    pde_13: bool = False
    # PDPTE (access.c: ro; the rest are extensions)
    pdpte_ro: bool = False
    pdpte_sup: bool = False
    pdpte_nx: bool = False
    pdpte_ps: bool = False  # 1 GiB leaf
    pdpte_29: bool = False  # reserved probe in a 1 GiB leaf (bits 29:13)
    # PML4E / PML5E (extensions)
    pml4e_ro: bool = False
    pml4e_sup: bool = False
    pml4e_nx: bool = False
    pml4e_ps: bool = False  # reserved
    pml5e_ps: bool = False  # reserved, needs la57
    # leaf bits that must not change anything (extensions)
    pde_pat: bool = False  # bit 12 of a 2 MiB leaf
    g: bool = False  # G in every entry (ignored in non-leaf entries; never a right)
    # protection keys (access.c)
    pkru_ad: bool = False
    pkru_wd: bool = False
    pkey1: bool = False
    # the access (access.c + implicit)
    user: bool = False  # CPL 3
    write: bool = False
    fetch: bool = False
    twice: bool = False  # a supervisor read of the same address first
    implicit: bool = False  # system-structure access: supervisor at any CPL
    # CPU state (access.c + SMAP/AC, LA57, MAXPHYADDR)
    efer_nx: bool = False
    cr0_wp: bool = False
    cr4_smep: bool = False
    cr4_pke: bool = False
    cr4_smap: bool = False
    eflags_ac: bool = False
    la57: bool = False
    maxphyaddr: int = 46

    def __str__(self) -> str:
        names = [_spell(f.name) for f in dataclasses.fields(self) if f.name != "maxphyaddr" and getattr(self, f.name)]
        return " ".join(names + [f"maxphyaddr={self.maxphyaddr}"])


def _spell(name: str) -> str:
    return SPELLING.get(name, name.replace("_", ".", 1))


AXES: Final = tuple(f.name for f in dataclasses.fields(Flags))
MAXPHYADDRS: Final = (36, 46, 52)

# The access.c axes (its 31-bit enum minus `fep`), and its pruning for a host with MAXPHYADDR >= 37
# (`invalid_mask` removes pte.36/pde.36) and for the SMEP exclusion of `ac_test_legal`.
ACCESS_C_AXES: Final = (
    "pte_rw", "pte_user", "pte_a", "pte_d", "pte_nx", "pte_p", "pte_51", "pte_36",
    "pde_rw", "pde_user", "pde_a", "pde_d", "pde_pse", "pde_nx", "pde_p", "pde_51", "pde_36", "pde_13",
    "pdpte_ro", "pkru_ad", "pkru_wd", "pkey1", "user", "write", "fetch", "twice",
    "efer_nx", "cr0_wp", "cr4_smep", "cr4_pke",
)  # fmt: skip

# Axes an enabling axis must precede in enumeration, so that legality is monotone (see `enumerate_space`).
_ORDER: Final = ("maxphyaddr", "la57", "efer_nx", "cr4_pke", "pdpte_ps", "pde_pse")


def _values(axis: str) -> tuple[object, ...]:
    return MAXPHYADDRS if axis == "maxphyaddr" else (False, True)


# ---- legality (like ac_test_legal) -------------------------------------------------------------------------------
def reserved_probes(f: Flags) -> int:
    """How many reserved bits the vector sets across all entries (SDM §4.5, facts §2.4)."""
    n = 0
    for bit, on in ((51, f.pte_51), (36, f.pte_36), (51, f.pde_51), (36, f.pde_36)):
        n += on and bit >= f.maxphyaddr  # bits 51:MAXPHYADDR; below MAXPHYADDR they are address bits
    n += f.pde_13 + f.pdpte_29 + f.pml4e_ps + f.pml5e_ps
    if not f.efer_nx:  # XD is reserved when EFER.NXE = 0
        n += f.pte_nx + f.pde_nx + f.pdpte_nx + f.pml4e_nx
    return n


def legal(f: Flags) -> bool:
    """ac_test_legal, extended. Every rule is monotone in the flags (set -> stays illegal) once its enabling
    axis is fixed, which `enumerate_space` relies on."""
    if f.fetch and (f.write or f.implicit):  # a fetch is neither a write nor a system-structure access
        return False
    if (f.pkru_ad or f.pkru_wd) and not f.cr4_pke:  # access.c: PKRU flags only with PKE
        return False
    if (f.pde_13 or f.pde_pat) and not f.pde_pse:  # bits 13/12 are address bits of a non-leaf PDE
        return False
    if f.pdpte_29 and not f.pdpte_ps:
        return False
    if f.pml5e_ps and not f.la57:
        return False
    # Entries below a leaf are never read: keep them at their canonical all-zero form (pruning, not a rule).
    if f.pdpte_ps and (
        f.pde_pse
        or f.pde_rw
        or f.pde_user
        or f.pde_a
        or f.pde_d
        or f.pde_nx
        or f.pde_p
        or f.pde_51
        or f.pde_36
        or f.pde_13
        or f.pde_pat
    ):
        return False
    if (f.pde_pse or f.pdpte_ps) and (
        f.pte_rw or f.pte_user or f.pte_a or f.pte_d or f.pte_nx or f.pte_p or f.pte_51 or f.pte_36
    ):
        return False
    return reserved_probes(f) <= 1  # access.c e0baf253: one reserved bit at a time


def enumerate_space(free: Sequence[str], base: Flags | None = None) -> Iterator[Flags]:
    """Every legal vector whose `free` axes range over their values and whose other axes are as in `base`.

    Depth-first over the axes, enabling axes first; a partial assignment (unassigned axes False) that is illegal
    cannot become legal, so the subtree is pruned and nothing illegal is generated.
    """
    base = base or Flags()
    order = [a for a in _ORDER if a in free] + [a for a in AXES if a in free and a not in _ORDER]
    unknown = set(free) - set(AXES)
    if unknown:
        raise ValueError(f"unknown axes {sorted(unknown)}")
    start = dataclasses.replace(base, **{a: False for a in order if a != "maxphyaddr"})
    fields = dataclasses.asdict(start)

    def rec(i: int) -> Iterator[Flags]:
        if i == len(order):
            yield Flags(**fields)
            return
        axis = order[i]
        for value in _values(axis):
            fields[axis] = value
            # Setting a bool axis False leaves the (legal) parent unchanged: only True needs a check.
            if value is False or legal(Flags(**fields)):
                yield from rec(i + 1)
        fields[axis] = start.maxphyaddr if axis == "maxphyaddr" else False

    if legal(start) or "maxphyaddr" in free:
        yield from rec(0)


def random_legal(rng: random.Random, *, p_probe: float = 0.06) -> Flags:
    """A random legal vector over every axis (rejection sampling; reserved probes are drawn rarely so that
    accepted vectors are not dominated by the one-probe rule)."""
    probes = {"pte_51", "pte_36", "pde_51", "pde_36", "pde_13", "pdpte_29", "pml4e_ps", "pml5e_ps"}
    rare = probes | {"pdpte_ps", "pml4e_nx", "pdpte_nx"}
    while True:
        values: dict[str, object] = {}
        for axis in AXES:
            if axis == "maxphyaddr":
                values[axis] = rng.choice(MAXPHYADDRS)
            else:
                values[axis] = rng.random() < (p_probe if axis in rare else 0.5)
        f = Flags(**values)  # type: ignore[arg-type]
        if legal(f):
            return f


# ---- the tables a vector describes ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One paging-structure entry on the walk path, as the spec sees it."""

    name: str  # SDM name
    slot: int  # physical address of the entry
    value: int  # bits before the access
    present: bool
    reserved: bool  # some reserved bit is set (SDM §4.5)
    leaf: bool
    writable: bool
    user: bool
    xd: bool


def va_of(f: Flags) -> int:
    return VA_5LEVEL if f.la57 else VA_4LEVEL


def _idx(va: int, shift: int) -> int:
    return (va >> shift) & 0x1FF


def _addr_probe(bit: int, on: bool, maxphyaddr: int) -> int:
    """The probe bit as an address bit: only when it is below MAXPHYADDR (else it is reserved)."""
    return 1 << bit if on and bit < maxphyaddr else 0


def pkru(f: Flags) -> int:
    """PKRU as access.c loads it: key 2 fully disabled, key 1 AD/WD per flags; hostile when PKE is off."""
    if not f.cr4_pke:
        return PKRU_HOSTILE
    value = 0b11 << (2 * PKEY_NONLEAF)
    value |= (f.pkru_ad << (2 * PKEY_LEAF)) | (f.pkru_wd << (2 * PKEY_LEAF + 1))
    return value


def entries(f: Flags) -> tuple[Entry, ...]:
    """The entries of the walk of `va_of(f)`, top level first, down to the leaf."""
    va = va_of(f)
    m = f.maxphyaddr
    g = G if f.g else 0
    nonleaf_key = PKEY_NONLEAF << PKEY_SHIFT
    leaf_key = (PKEY_LEAF if f.pkey1 else 0) << PKEY_SHIFT
    out: list[Entry] = []
    if f.la57:
        value = TABLE_PML4 | P | RW | US | g | nonleaf_key | (PS if f.pml5e_ps else 0)
        out.append(Entry("PML5E", TABLE_PML5 + 8 * _idx(va, 48), value, True, f.pml5e_ps, False, True, True, False))
    value = (
        TABLE_PDPT
        | P
        | (0 if f.pml4e_ro else RW)
        | (0 if f.pml4e_sup else US)
        | g
        | nonleaf_key
        | (XD if f.pml4e_nx else 0)
        | (PS if f.pml4e_ps else 0)
    )
    rsvd = f.pml4e_ps or (f.pml4e_nx and not f.efer_nx)
    out.append(
        Entry(
            "PML4E",
            TABLE_PML4 + 8 * _idx(va, 39),
            value,
            True,
            rsvd,
            False,
            not f.pml4e_ro,
            not f.pml4e_sup,
            f.pml4e_nx,
        )
    )
    leaf = f.pdpte_ps
    value = (
        (PAGE_1G if leaf else TABLE_PD)
        | P
        | (0 if f.pdpte_ro else RW)
        | (0 if f.pdpte_sup else US)
        | g
        | (leaf_key if leaf else nonleaf_key)
        | (XD if f.pdpte_nx else 0)
        | (PS if leaf else 0)
        | (1 << 29 if f.pdpte_29 else 0)
    )
    rsvd = f.pdpte_29 or (f.pdpte_nx and not f.efer_nx)  # bits 29:13 of a 1 GiB leaf (Table 4-16)
    out.append(
        Entry(
            "PDPTE", TABLE_PDPT + 8 * _idx(va, 30), value, True, rsvd, leaf, not f.pdpte_ro, not f.pdpte_sup, f.pdpte_nx
        )
    )
    if leaf:
        return tuple(out)
    leaf = f.pde_pse
    value = (
        (PAGE_2M if leaf else TABLE_PT)
        | (P if f.pde_p else 0)
        | (RW if f.pde_rw else 0)
        | (US if f.pde_user else 0)
        | (A if f.pde_a else 0)
        | (D if f.pde_d else 0)
        | (PS if leaf else 0)
        | (XD if f.pde_nx else 0)
        | (1 << 51 if f.pde_51 else 0)
        | (1 << 36 if f.pde_36 else 0)
        | (1 << 13 if f.pde_13 else 0)
        | (PAT_LARGE if f.pde_pat else 0)
        | g
        | (leaf_key if leaf else nonleaf_key)
    )
    rsvd = (f.pde_51 and m <= 51) or (f.pde_36 and m <= 36) or f.pde_13 or (f.pde_nx and not f.efer_nx)
    out.append(Entry("PDE", TABLE_PD + 8 * _idx(va, 21), value, f.pde_p, rsvd, leaf, f.pde_rw, f.pde_user, f.pde_nx))
    if leaf:
        return tuple(out)
    table = TABLE_PT | _addr_probe(51, f.pde_51, m) | _addr_probe(36, f.pde_36, m)
    value = (
        PAGE_4K
        | (P if f.pte_p else 0)
        | (RW if f.pte_rw else 0)
        | (US if f.pte_user else 0)
        | (A if f.pte_a else 0)
        | (D if f.pte_d else 0)
        | (XD if f.pte_nx else 0)
        | (1 << 51 if f.pte_51 else 0)
        | (1 << 36 if f.pte_36 else 0)
        | g
        | leaf_key
    )
    rsvd = (f.pte_51 and m <= 51) or (f.pte_36 and m <= 36) or (f.pte_nx and not f.efer_nx)
    out.append(Entry("PTE", table + 8 * _idx(va, 12), value, f.pte_p, rsvd, True, f.pte_rw, f.pte_user, f.pte_nx))
    return tuple(out)


# ---- the expected outcome (like ac_emulate_access + ac_test_permissions) -------------------------------------------
@dataclass(frozen=True)
class Expected:
    """What one case must do. `error_code`/`cr2` only for a fault; `pa`/`page_size` only for success;
    `level` names the entry the walk ended at; `after` are the entries' values afterwards, in walk order."""

    fault: bool
    error_code: int | None
    cr2: int | None
    pa: int | None
    page_size: int | None
    level: str
    after: tuple[int, ...]


@dataclass(frozen=True)
class _Outcome:
    fault: bool
    error_code: int
    level: int  # index into entries
    set_a: frozenset[int]
    set_d: frozenset[int]


def _access(f: Flags, es: Sequence[Entry], *, cpl3: bool, implicit: bool, write: bool, fetch: bool) -> _Outcome:
    """One access through the entries `es` (SDM §4.5-4.8)."""
    user_mode = cpl3 and not implicit  # §4.6: implicit system-structure accesses are supervisor at any CPL
    error = (PF_WR if write else 0) | (PF_US if user_mode else 0)
    if fetch and (f.efer_nx or f.cr4_smep):  # §4.7: I/D only with NXE or SMEP
        error |= PF_ID
    set_a: set[int] = set()
    writable = user_addr = True
    xd = False
    for i, e in enumerate(es):
        if not e.present:  # §4.7: P = 0; reserved bits of a non-present entry are not checked
            return _Outcome(True, error, i, frozenset(set_a), frozenset())
        if e.reserved:  # §4.7: RSVD with P = 1
            return _Outcome(True, error | PF_P | PF_RSVD, i, frozenset(set_a), frozenset())
        writable &= e.writable  # §4.6.1: R/W and U/S AND-ed over every level, XD OR-ed
        user_addr &= e.user
        xd |= e.xd
        if not e.leaf:
            set_a.add(i)  # §4.8: A on every entry used (our policy: also when the access later faults)
            continue
        # §4.6.2 / §4.7 PK: data access, user-mode address, PKE; AD, or WD on a write that is user-mode or WP = 1.
        key = PKEY_LEAF if f.pkey1 else 0
        rights = pkru(f) >> (2 * key)
        pk = (
            f.cr4_pke
            and user_addr
            and not fetch
            and bool(rights & 1 or (rights & 2 and write and (user_mode or f.cr0_wp)))
        )
        if user_mode:  # facts §2.2, user rows
            ok = user_addr and (writable or not write) and not (fetch and xd)
        elif fetch:  # supervisor fetch: XD; SMEP forbids user-mode addresses
            ok = not xd and not (user_addr and f.cr4_smep)
        else:  # supervisor data access
            ok = True
            if user_addr and f.cr4_smap:  # §4.6.1 (modern text): only with EFLAGS.AC = 1 at CPL < 3
                ok = f.eflags_ac and not cpl3
            if write and f.cr0_wp and not writable:
                ok = False
        if pk or not ok:
            return _Outcome(True, error | PF_P | (PF_PK if pk else 0), i, frozenset(set_a), frozenset())
        set_a.add(i)
        return _Outcome(False, 0, i, frozenset(set_a), frozenset({i}) if write else frozenset())
    raise AssertionError("the last entry is always a leaf")


def expect(f: Flags, es: Sequence[Entry] | None = None) -> Expected:
    """The architectural outcome of the access `f` describes (after the priming read if `twice`);
    `es` may pass in `entries(f)` if already computed."""
    es = es or entries(f)
    set_a: set[int] = set()
    set_d: set[int] = set()
    if f.twice:  # access.c: a supervisor (CPL 0) read first; its own fault, if any, is ignored
        prime = _access(f, es, cpl3=False, implicit=False, write=False, fetch=False)
        set_a |= prime.set_a
        set_d |= prime.set_d
    out = _access(f, es, cpl3=f.user, implicit=f.implicit, write=f.write, fetch=f.fetch)
    set_a |= out.set_a
    set_d |= out.set_d
    after = tuple(e.value | (A if i in set_a else 0) | (D if i in set_d else 0) for i, e in enumerate(es))
    va = va_of(f)
    level = es[out.level].name
    if out.fault:
        return Expected(True, out.error_code, va, None, None, level, after)
    leaf = es[out.level]
    size = {"PDPTE": 1 << 30, "PDE": 1 << 21, "PTE": 1 << 12}[leaf.name]
    base = {"PDPTE": PAGE_1G, "PDE": PAGE_2M, "PTE": PAGE_4K}[leaf.name]
    if leaf.name in ("PDE", "PTE"):  # bit 51/36 below MAXPHYADDR are address bits
        probe51 = f.pde_51 if leaf.name == "PDE" else f.pte_51
        probe36 = f.pde_36 if leaf.name == "PDE" else f.pte_36
        base |= _addr_probe(51, probe51, f.maxphyaddr) | _addr_probe(36, probe36, f.maxphyaddr)
    return Expected(False, None, None, base | (va & (size - 1)), size, level, after)
