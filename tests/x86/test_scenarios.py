"""The six scenario sub-tests of kvm-unit-tests `x86/access.c` (facts/x86-paging.md §1.5), on our walker.

Tables are built with the `PageTable` editing API where it can express the case, and with raw `write_u64` where the
case is a deliberately odd table (a PDPTE aliasing another's PD). Each test checks exact error codes (SDM Vol. 3A
§4.7) and, where the scenario is about them, accessed/dirty bits (§4.8).
"""

from __future__ import annotations

from kaiser.x86.bits import CR0, CR4, EFER, PFEC, PTE, entry_phys
from kaiser.x86.cpu import CpuState
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import FrameKind, PhysicalMemory
from kaiser.x86.rights import Op
from kaiser.x86.walker import Fault, Translation, translate

MIB2 = 1 << 21
KB4 = 1 << 12
USER_VA = 0x0000_7F12_3440_0000  # lower half: PageTable gives its upper entries U=1 (Linux _PAGE_TABLE)
KERNEL_VA = 0xFFFF_C912_3440_0000  # upper half: upper entries U=0 (Linux _KERNPG_TABLE)
NO_NXE = int(EFER.LME | EFER.LMA)


def setup() -> tuple[PhysicalMemory, PageTable]:
    mem = PhysicalMemory()
    return mem, PageTable(mem, tag="scenario")


def cpu(pt: PageTable, **regs: int) -> CpuState:
    return CpuState(cr3=pt.cr3(), **regs)


def leaf_value(pt: PageTable, va: int) -> int:
    leaf = pt.lookup(va)
    assert leaf is not None
    return leaf.entry


def expect_fault(result: Translation | Fault, error: PFEC, va: int) -> None:
    assert isinstance(result, Fault), f"expected #PF {error!r} at {va:#x}, got a translation"
    assert (result.vector, result.cr2, PFEC(result.error_code)) == (14, va, error), result.describe()


def expect_ok(result: Translation | Fault) -> Translation:
    assert isinstance(result, Translation), result.describe()
    return result


def test_corrupt_hugepage_trigger() -> None:
    """Two 2 MiB leaves under one PD, the first read-only, the second writable: each access follows its own
    mapping's rights, in either order (a walker or cache that reuses the other leaf's rights fails)."""
    mem, pt = setup()
    ro, rw = KERNEL_VA, KERNEL_VA + MIB2
    pt.map(ro, 0x4000_0000, MIB2, PTE.NX, page_size=MIB2)
    pt.map(rw, 0x4000_0000, MIB2, PTE.RW | PTE.NX, page_size=MIB2)
    assert pt.entry_slot(ro, 2) is not None and pt.entry_slot(ro, 2) + 8 == pt.entry_slot(rw, 2)  # same PD
    state = cpu(pt)  # CR0.WP = 1
    expect_ok(translate(mem, state, ro + 0x123))
    expect_fault(translate(mem, state, ro + 0x123, Op.WRITE), PFEC.P | PFEC.WR, ro + 0x123)
    assert expect_ok(translate(mem, state, rw + 0x1_2456, Op.WRITE)).pa == 0x4001_2456
    expect_fault(translate(mem, state, ro + 0x789, Op.WRITE), PFEC.P | PFEC.WR, ro + 0x789)
    assert not leaf_value(pt, ro) & PTE.D and leaf_value(pt, rw) & PTE.D


def test_check_pfec_on_prefetch_pte() -> None:
    """Neighbouring PTEs, the second with XD while EFER.NXE = 0: the first translates, the second is a
    reserved-bit fault (P|RSVD, no I/D since neither NXE nor SMEP is on)."""
    mem, pt = setup()
    good, bad = KERNEL_VA, KERNEL_VA + KB4
    pt.map(good, 0x200_0000, KB4, PTE.RW)
    pt.map(bad, 0x200_1000, KB4, PTE.RW | PTE.NX)
    state = cpu(pt, efer=NO_NXE)
    expect_ok(translate(mem, state, good, Op.FETCH))
    fault = translate(mem, state, bad, Op.FETCH)
    expect_fault(fault, PFEC.P | PFEC.RSVD, bad)
    assert isinstance(fault, Fault) and fault.level is not None and fault.level.entry == "PTE"
    expect_fault(translate(mem, state, bad, Op.WRITE), PFEC.P | PFEC.RSVD | PFEC.WR, bad)
    assert not leaf_value(pt, bad) & PTE.A
    expect_ok(translate(mem, state.replace(efer=int(EFER.LME | EFER.LMA | EFER.NXE)), bad))  # XD legal again


def test_check_large_pte_dirty_for_nowp() -> None:
    """Two read-only 2 MiB aliases of one physical page, CR0.WP = 0: a supervisor write through each alias
    succeeds and sets D in that alias's leaf only (SDM §4.8: D is per entry, not per physical page)."""
    mem, pt = setup()
    a, b = KERNEL_VA, KERNEL_VA + 4 * MIB2
    pt.map(a, 0x8000_0000, MIB2, PTE.NX, page_size=MIB2)
    pt.map(b, 0x8000_0000, MIB2, PTE.NX, page_size=MIB2)
    state = cpu(pt, cr0=int(CR0.PE | CR0.PG))
    assert expect_ok(translate(mem, state, a + 8, Op.WRITE)).pa == 0x8000_0008
    assert leaf_value(pt, a) & PTE.D and not leaf_value(pt, b) & PTE.D
    assert expect_ok(translate(mem, state, b + 8, Op.WRITE)).pa == 0x8000_0008
    assert leaf_value(pt, b) & PTE.D
    expect_fault(translate(mem, state.replace(cr0=int(CR0.PE | CR0.PG | CR0.WP)), b, Op.WRITE), PFEC.P | PFEC.WR, b)


def test_check_smep_andnot_wp() -> None:
    """A read-only user page: a supervisor write faults with CR0.WP = 1; then a supervisor fetch with SMEP = 1
    faults with I/D although EFER.NXE = 0 (SDM §4.7: I/D is reported when SMEP = 1)."""
    mem, pt = setup()
    pt.map(USER_VA, 0x300_0000, KB4, PTE.US)
    state = cpu(pt, efer=NO_NXE, cr4=int(CR4.PAE | CR4.SMEP))
    expect_fault(translate(mem, state, USER_VA, Op.WRITE), PFEC.P | PFEC.WR, USER_VA)
    expect_fault(translate(mem, state, USER_VA, Op.FETCH), PFEC.P | PFEC.ID, USER_VA)
    expect_ok(translate(mem, state, USER_VA))  # reads are fine (no SMAP)
    expect_ok(translate(mem, state.replace(cpl=3), USER_VA, Op.FETCH))  # SMEP never affects user mode
    expect_ok(translate(mem, state.replace(cr4=int(CR4.PAE)), USER_VA, Op.FETCH))


def test_check_toggle_cr0_wp() -> None:
    """A supervisor write to a read-only page faults iff CR0.WP = 1, through several toggles of WP (no state
    from an earlier access may decide a later one)."""
    mem, pt = setup()
    pt.map(KERNEL_VA, 0x300_0000, KB4, PTE.NX)
    wp_on = cpu(pt)
    wp_off = wp_on.replace(cr0=int(CR0.PE | CR0.PG))
    assert not leaf_value(pt, KERNEL_VA) & (PTE.A | PTE.D)
    for _ in range(2):
        before = leaf_value(pt, KERNEL_VA)
        expect_fault(translate(mem, wp_on, KERNEL_VA, Op.WRITE), PFEC.P | PFEC.WR, KERNEL_VA)
        assert leaf_value(pt, KERNEL_VA) == before  # a faulting access sets neither A nor D in the leaf
        expect_ok(translate(mem, wp_off, KERNEL_VA, Op.WRITE))
        assert leaf_value(pt, KERNEL_VA) == before | PTE.A | PTE.D
    expect_fault(translate(mem, wp_on.replace(cpl=3), KERNEL_VA, Op.WRITE), PFEC.P | PFEC.WR | PFEC.US, KERNEL_VA)


def test_check_effective_sp_permissions() -> None:
    """Two PDPTEs, one writable and one read-only, point at the same PD: writes through the read-only path fault
    although the shared PD/PT were just used writably; rights are per walk path, not per table."""
    mem, pt = setup()
    rw_va = USER_VA
    pt.map(rw_va, 0x500_0000, KB4, PTE.RW | PTE.US)
    rw_slot = pt.entry_slot(rw_va, 1)
    assert rw_slot is not None
    pdpte = mem.read_u64(rw_slot)
    assert pdpte & PTE.RW and pdpte & PTE.US
    ro_va = rw_va + (1 << 30)  # next PDPTE slot, same PD and PT indices and offset
    ro_slot = pt.entry_slot(ro_va, 1)
    assert ro_slot == rw_slot + 8 and mem.read_u64(ro_slot) == 0
    mem.write_u64(ro_slot, pdpte & ~PTE.RW)  # alias the same PD read-only
    assert mem.kind_of(entry_phys(pdpte)) is FrameKind.PAGE_TABLE
    for state in (cpu(pt, cpl=3), cpu(pt)):
        user = PFEC.US if state.cpl == 3 else PFEC(0)
        expect_ok(translate(mem, state, rw_va + 0x10, Op.WRITE))
        expect_fault(translate(mem, state, ro_va + 0x10, Op.WRITE), PFEC.P | PFEC.WR | user, ro_va + 0x10)
        assert expect_ok(translate(mem, state, ro_va + 0x10)).pa == 0x500_0010
        expect_ok(translate(mem, state, rw_va + 0x10, Op.WRITE))
    # With CR0.WP = 0 the supervisor may write through the read-only path; the user may not.
    expect_ok(translate(mem, cpu(pt, cr0=int(CR0.PE | CR0.PG)), ro_va, Op.WRITE))
    state = cpu(pt, cr0=int(CR0.PE | CR0.PG), cpl=3)
    expect_fault(translate(mem, state, ro_va, Op.WRITE), PFEC.P | PFEC.WR | PFEC.US, ro_va)
