"""`Mmu.hit_pa`, the fast path of an access that completes on an L1 TLB hit: taken before
`access` (as `kaiser.attacks.core.Core` takes it), it leaves the Mmu exactly as `access` alone
would -- the same addresses and faults, counters, TLB arrays (LRU stamps included) and clock."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaiser.x86.bits import CR4, PTE
from kaiser.x86.cpu import CpuState
from kaiser.x86.mmu import Mmu
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import PhysicalMemory
from kaiser.x86.rights import Op
from kaiser.x86.tlb_geometry import SKYLAKE_CLIENT, CacheGeometry, TlbGeometry

# A small L1 dTLB/iTLB (2 sets x 2 ways) so a short sequence evicts, refills from the STLB, and
# sees the fast path decline.
SMALL = TlbGeometry(
    "small L1",
    itlb=(CacheGeometry("iTLB 4K", 4, 2, (12,)),),
    dtlb=(CacheGeometry("dTLB 4K", 4, 2, (12,)), CacheGeometry("dTLB 2M", 4, 2, (21,))),
    stlb=SKYLAKE_CLIENT.stlb,
    psc=SKYLAKE_CLIENT.psc,
)
PAGES = [  # (va, flags): user read-only, read-write (D clear until written), no-execute; kernel
    (0x400000, PTE.US),
    (0x401000, PTE.US | PTE.RW),
    (0x402000, PTE.US | PTE.RW | PTE.NX),
    (0x403000, PTE.US | PTE.RW),
    (0x404000, PTE.US),
    (0x40600000, PTE.US | PTE.RW),  # a 2 MiB page
    (0xFFFF888000000000, PTE.RW),
]
OPS = st.tuples(
    st.sampled_from(range(len(PAGES))), st.sampled_from([Op.READ, Op.WRITE, Op.FETCH]), st.integers(0, 4095)
)


def machine(cpl: int) -> Mmu:
    mem = PhysicalMemory(1 << 30)
    pt = PageTable(mem)
    for n, (va, flags) in enumerate(PAGES):
        size = 1 << 21 if va == 0x40600000 else 1 << 12
        pt.map(va, (n + 16) << 21, size, int(flags))
    cr4 = int(CR4.PAE | CR4.PGE | CR4.SMEP | CR4.SMAP)
    return Mmu(mem, CpuState(cr3=pt.cr3(), cr4=cr4, cpl=cpl), geometry=SMALL)


def tlb_state(mmu: Mmu) -> list[list[np.ndarray]]:
    fields = ("valid", "vpn", "shift", "pfn", "pcid", "glob", "user", "writable", "nx", "dirty", "stamp")
    return [[getattr(arr, f).copy() for f in fields] for arr in mmu.tlb.arrays]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, min_size=5, max_size=60), st.sampled_from([0, 3]))
def test_hit_path_then_access_is_access(ops: list[tuple[int, Op, int]], cpl: int) -> None:
    fast, ref = machine(cpl), machine(cpl)
    for page, op, offset in ops:
        va = PAGES[page][0] + offset
        want = ref.access(va, op)
        pa = fast.hit_pa(va, op)
        if pa is None:
            got = fast.access(va, op)
            assert (got.pa, got.fault) == (want.pa, want.fault)
        else:
            assert want.fault is None and pa == want.pa
        assert fast.counters == ref.counters
        assert fast.tlb.clock == ref.tlb.clock
    for a, b in zip(tlb_state(fast), tlb_state(ref), strict=True):
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x, y)
    assert fast.mem.read_frame(fast.state.root).tolist() == ref.mem.read_frame(ref.state.root).tolist()


def test_hit_path_declines_a_miss_and_takes_a_hit() -> None:
    mmu = machine(3)
    assert mmu.hit_pa(0x400010) is None and mmu.counters.dtlb_hits == 0  # a miss: nothing done
    assert mmu.access(0x400010).pa == (16 << 21) | 0x10
    assert mmu.hit_pa(0x400020) == (16 << 21) | 0x20
    assert mmu.counters.dtlb_hits == 1
    assert mmu.hit_pa(0x400020, Op.WRITE) is None  # read-only: access must fault


@given(st.integers(0, (1 << 52) - 1))
def test_set_of_is_set_index(tag: int) -> None:
    from kaiser.x86.tlb import TlbArray
    from kaiser.x86.tlb_geometry import set_index

    for g in (*SKYLAKE_CLIENT.dtlb, *SKYLAKE_CLIENT.stlb, CacheGeometry("odd", 12, 2, (12,))):
        assert TlbArray(g).set_of(tag) == set_index(g, tag)
