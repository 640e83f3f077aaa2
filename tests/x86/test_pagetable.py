"""PageTable editing: property tests against an independent model, page-size choice, splits,
table freeing, and bad input (every error names the address; the tables are left unchanged)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from kaiser.x86.bits import ADDR_MASK_52, CR4, PTE, entry_phys, pkey_of
from kaiser.x86.cpu import CpuState
from kaiser.x86.geometry import FIVE_LEVEL, FOUR_LEVEL, AddressError, PagingMode, kernel_half_start, user_half_end
from kaiser.x86.pagetable import LEAF_FLAG_MASK, PageTable, PagingError
from kaiser.x86.physmem import FrameKind, PhysicalMemory, PhysMemError
from kaiser.x86.rights import Op
from kaiser.x86.walker import Translation, translate

K4, M2, G1 = 1 << 12, 1 << 21, 1 << 30
RAM = 16 << 30
MODES = [FOUR_LEVEL, FIVE_LEVEL]
AD = int(PTE.A | PTE.D)


def cpu(pt: PageTable, cpl: int) -> CpuState:
    cr4 = CR4.PAE | CR4.PGE | (CR4.LA57 if pt.mode is FIVE_LEVEL else 0)
    return CpuState(cr3=pt.cr3(), cr4=cr4, cpl=cpl)


# ---- the independent model: sorted runs of 4 KiB pages ----------------------------------------
@dataclass(frozen=True)
class Run:
    va: int
    end: int
    pa: int
    flags: int  # leaf flags as requested, with P (no PS/PAT/address/key)
    pkey: int

    def cut(self, lo: int, hi: int) -> Run:
        return Run(lo, hi, self.pa + (lo - self.va), self.flags, self.pkey)


class Model:
    """What the tables must map: disjoint runs, each va -> pa contiguous with one flags/pkey."""

    def __init__(self) -> None:
        self.runs: list[Run] = []

    def overlapping(self, va: int, end: int) -> list[Run]:
        return [r for r in self.runs if r.va < end and va < r.end]

    def covered(self, va: int, end: int) -> bool:
        pos = va
        for r in sorted(self.overlapping(va, end), key=lambda r: r.va):
            if r.va > pos:
                return False
            pos = r.end
        return pos >= end

    def remove(self, va: int, end: int) -> list[Run]:
        """Remove [va, end); return the removed pieces."""
        kept, gone = [], []
        for r in self.runs:
            if r.end <= va or r.va >= end:
                kept.append(r)
                continue
            if r.va < va:
                kept.append(r.cut(r.va, va))
            if r.end > end:
                kept.append(r.cut(end, r.end))
            gone.append(r.cut(max(r.va, va), min(r.end, end)))
        self.runs = sorted(kept, key=lambda r: r.va)
        return gone

    def add(self, run: Run) -> None:
        bisect.insort(self.runs, run, key=lambda r: r.va)

    def find(self, va: int) -> Run | None:
        for r in self.runs:
            if r.va <= va < r.end:
                return r
        return None


def merged(runs: list[Run]) -> list[Run]:
    out: list[Run] = []
    for r in sorted(runs, key=lambda r: r.va):
        if out:
            p = out[-1]
            if p.end == r.va and p.pa + (p.end - p.va) == r.pa and (p.flags, p.pkey) == (r.flags, r.pkey):
                out[-1] = Run(p.va, r.end, p.pa, p.flags, p.pkey)
                continue
        out.append(r)
    return out


def table_runs(pt: PageTable) -> list[Run]:
    """The tables' mapping as runs, checking each leaf's PS/PAT encoding on the way."""
    runs = []
    last = len(pt.levels) - 1
    for leaf in pt.leaves():
        if leaf.depth == last:
            assert not leaf.entry & PTE.PS, f"PAT set in 4 KiB PTE at {leaf.va:#x}"
        else:
            assert leaf.entry & PTE.PS and not leaf.entry & PTE.PAT_LARGE, f"bad large leaf at {leaf.va:#x}"
        assert leaf.va % leaf.size == 0 and leaf.pa % leaf.size == 0
        runs.append(Run(leaf.va, leaf.va + leaf.size, leaf.pa, leaf.entry & LEAF_FLAG_MASK, pkey_of(leaf.entry)))
    return runs


def snapshot(pt: PageTable) -> tuple[dict[int, bytes], object]:
    frames = {table: pt.mem.read_frame(table).tobytes() for table, _ in pt.tables()}
    return frames, pt.mem.stats()


def check_structure(pt: PageTable) -> None:
    """No empty non-root table is allocated, and every allocated page-table frame is in the tree."""
    tables = list(pt.tables())
    for table, depth in tables:
        if table != pt.root:
            assert pt.mem.read_frame(table).any(), f"empty table at depth {depth} left allocated ({table:#x})"
        assert pt.mem.kind_of(table) is FrameKind.PAGE_TABLE
    assert len({t for t, _ in tables}) == len(tables)
    assert pt.mem.stats().page_table == len(tables), "page-table frames leaked"


def check_iterators(pt: PageTable, tables: list[tuple[int, int]]) -> None:
    """`tables` over a range and `leaves` with `prune` agree with the leaves' paths, and each
    leaf's path is the walker's (every non-root table leads to a leaf: check_structure)."""
    below = {t for t, d in tables if d > 0}
    leaves = list(pt.leaves())
    for leaf in leaves:
        walked = translate(pt.mem, cpu(pt, 0), leaf.va, Op.READ, set_ad=False).entries
        assert tuple(r.value for r in walked) == (*leaf.above, leaf.entry)
    half = user_half_end(pt.mode)
    for lo, hi in ((0, half), (kernel_half_start(pt.mode), 1 << 64), (0, 1 << 64)):
        got = [t for t, d in pt.tables(start=lo, end=hi) if d > 0]
        assert len(got) == len(set(got))
        paths = {entry_phys(e) for leaf in leaves if lo <= leaf.va < hi for e in leaf.above}
        assert set(got) == paths <= below
    if below:
        cut = min(below)
        kept = [leaf for leaf in leaves if cut not in {entry_phys(e) for e in leaf.above}]
        assert list(pt.leaves(prune={cut})) == kept
        assert cut not in {t for t, _ in pt.tables(prune={cut})}


def expect_access(pt: PageTable, va: int, run: Run | None) -> None:
    """Walk `va` for every (CPL, op) and compare with what `run` says (None: unmapped)."""
    user_half = va < user_half_end(pt.mode)
    for cpl in (0, 3):
        state = cpu(pt, cpl)
        for op in (Op.READ, Op.WRITE, Op.FETCH):
            got = translate(pt.mem, state, va, op, set_ad=False)
            if run is None:
                assert not got.ok and got.error_code & 1 == 0, f"{va:#x} should be unmapped: {got}"
                continue
            user_ok = bool(run.flags & PTE.US) and user_half
            allowed = {
                (0, Op.READ): True,
                (0, Op.WRITE): bool(run.flags & PTE.RW),
                (0, Op.FETCH): not run.flags & PTE.NX,
                (3, Op.READ): user_ok,
                (3, Op.WRITE): user_ok and bool(run.flags & PTE.RW),
                (3, Op.FETCH): user_ok and not run.flags & PTE.NX,
            }[(cpl, op)]
            assert got.ok == allowed, f"{va:#x} cpl{cpl} {op}: {got}"
            if isinstance(got, Translation):
                assert got.pa == run.pa + (va - run.va)
                assert got.pkey == run.pkey


def check_against_model(pt: PageTable, model: Model, probes: list[int]) -> None:
    assert merged(table_runs(pt)) == merged(model.runs)
    check_structure(pt)
    points = set(probes)
    for r in model.runs:
        points.update({r.va, r.end - 1, r.end, r.va - 1, (r.va + r.end) // 2 & ~0xFFF})
    for va in sorted(points):
        if pt.mode.is_canonical(va) and 0 <= va < 1 << 64:
            expect_access(pt, va, model.find(va))


# ---- random operation sequences ---------------------------------------------------------------
WINDOW = 4 * G1  # each region is 4 GiB, so 1 GiB pages fit


def regions(mode: PagingMode) -> list[int]:
    half = user_half_end(mode)
    return [
        0,  # bottom of the user half
        half - WINDOW,  # top of the user half
        kernel_half_start(mode),  # bottom of the kernel half
        kernel_half_start(mode) + (0x88 << (mode.va_bits - 9)),  # a direct-map-like spot
        (1 << 64) - WINDOW,  # top of the address space
    ]


FLAG_BITS = [PTE.RW, PTE.US, PTE.NX, PTE.G, PTE.A, PTE.D, PTE.PWT, PTE.PCD, PTE.SW1, PTE.SW3, PTE.SW4]


@st.composite
def operations(draw: st.DrawFn, mode: PagingMode) -> tuple:
    kind = draw(st.sampled_from(["map", "map", "map", "unmap", "protect", "inside", "inside", "inside"]))
    if kind == "inside":  # unmap/protect a piece of an existing run, resolved against the model
        flags = 0
        for bit in draw(st.lists(st.sampled_from(FLAG_BITS), max_size=4)):
            flags |= int(bit)
        return (
            "inside",
            draw(st.sampled_from(["unmap", "protect"])),
            draw(st.integers(0, 50)),
            draw(st.integers(0, 1000)),
            draw(st.integers(0, 1000)),
            flags,
            draw(st.sampled_from([None, 3])),
        )
    base = draw(st.sampled_from(regions(mode)))
    unit = draw(st.sampled_from([K4, M2, M2, G1]))
    jitter = draw(st.sampled_from([0, 0, K4, 0x7000, M2 - K4, M2]))
    start = draw(st.integers(0, WINDOW // unit - 1)) * unit + jitter
    size = draw(st.integers(1, 3)) * unit + draw(st.sampled_from([0, 0, K4, -K4, M2]))
    size = max(K4, min(size, WINDOW - start))
    assume(start < WINDOW)
    va = base + start
    flags = 0
    for bit in draw(st.lists(st.sampled_from(FLAG_BITS), max_size=4)):
        flags |= int(bit)
    pkey = draw(st.integers(0, 15))
    if kind == "map":
        pa_unit = draw(st.sampled_from([K4, M2, G1]))
        pa = draw(st.integers(0, (RAM - size) // pa_unit)) * pa_unit
        if draw(st.booleans()):  # same offset as the va in a 1 GiB page: large pages can happen
            pa = (pa & ~(G1 - 1)) + (va & (G1 - 1))
        forced = draw(st.sampled_from([None, None, None, K4, M2, G1]))
        if forced == K4 or (pa - va) % M2:
            size = min(size, 2 * M2)  # 4 KiB pages only: keep the table count (and run time) small
        assume(pa + size <= RAM)
        return ("map", va, size, pa, flags, forced, pkey)
    if kind == "protect":
        return ("protect", va, size, flags, draw(st.sampled_from([None, pkey])))
    return ("unmap", va, size)


def resolve(model: Model, op: tuple) -> tuple | None:
    """Turn an "inside" op into an unmap/protect of a 4 KiB-aligned piece of an existing run."""
    if op[0] != "inside":
        return op
    _, kind, index, lo, hi, flags, pkey = op
    if not model.runs:
        return None
    r = model.runs[index % len(model.runs)]
    pages = (r.end - r.va) // K4
    first, last = sorted((pages * lo // 1000, pages * hi // 1000))
    va, end = r.va + first * K4, r.va + max(last, first + 1) * K4
    end = min(end, r.end)
    return ("unmap", va, end - va) if kind == "unmap" else ("protect", va, end - va, flags, pkey)


def apply(pt: PageTable, model: Model, op: tuple) -> None:
    resolved = resolve(model, op)
    if resolved is None:
        return
    op = resolved
    before = snapshot(pt)
    if op[0] == "map":
        _, va, size, pa, flags, forced, pkey = op
        align = forced or K4
        bad = va % align or size % align or pa % align or model.overlapping(va, va + size)
        if bad:
            with pytest.raises((PagingError, AddressError)):
                pt.map(va, pa, size, flags, page_size=forced, pkey=pkey)
            assert snapshot(pt) == before
            return
        pt.map(va, pa, size, flags, page_size=forced, pkey=pkey)
        event(f"map ok, page sizes {sorted({leaf.size for leaf in pt.leaves(va, va + size)})}")
        model.add(Run(va, va + size, pa, flags | int(PTE.P), pkey))
        check_page_sizes(pt, va, size, pa, forced)
    elif op[0] == "unmap":
        _, va, size = op
        tables = len(list(pt.tables()))
        pt.unmap(va, size)
        event(f"unmap: tables {'more' if len(list(pt.tables())) > tables else 'not more'}")
        model.remove(va, va + size)
    else:
        _, va, size, flags, pkey = op
        if not model.covered(va, va + size):
            with pytest.raises(PagingError, match=r"0x[0-9a-f]+"):
                pt.protect(va, size, flags, pkey=pkey)
            assert snapshot(pt) == before
            return
        tables = len(list(pt.tables()))
        pt.protect(va, size, flags, pkey=pkey)
        event(f"protect ok: tables {'more' if len(list(pt.tables())) > tables else 'not more'}")
        for r in model.remove(va, va + size):
            new = flags | int(PTE.P) | (r.flags & AD)  # A/D are kept (Linux pte_modify)
            model.add(Run(r.va, r.end, r.pa, new, r.pkey if pkey is None else pkey))


def greedy_sizes(va: int, size: int, pa: int, sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    """(va, page size) chosen by largest-page-that-fits over an empty range."""
    out, end = [], va + size
    while va < end:
        s = next(s for s in sizes if va % s == 0 and pa % s == 0 and end - va >= s)
        out.append((va, s))
        va, pa = va + s, pa + s
    return out


def check_page_sizes(pt: PageTable, va: int, size: int, pa: int, forced: int | None) -> None:
    got = [(leaf.va, leaf.size) for leaf in pt.leaves(va, va + size)]
    if forced is not None:
        assert {s for _, s in got} == {forced}
    else:
        assert got == greedy_sizes(va, size, pa, (G1, M2, K4))


def run_sequence(mode: PagingMode, ops: list[tuple], probes: list[int]) -> None:
    mem = PhysicalMemory(RAM)
    pt = PageTable(mem, mode, tag="test")
    baseline = mem.stats().page_table
    model = Model()
    for op in ops:
        apply(pt, model, op)
        check_against_model(pt, model, probes)
    check_iterators(pt, list(pt.tables()))
    # Unmapping both halves entirely leaves only the root.
    pt.unmap(0, user_half_end(mode))
    pt.unmap(kernel_half_start(mode), user_half_end(mode))
    assert list(pt.leaves()) == []
    assert mem.stats().page_table == baseline == 1
    assert list(pt.tables()) == [(pt.root, 0)]
    assert not mem.read_frame(pt.root).any()


def probe_points(mode: PagingMode) -> st.SearchStrategy[list[int]]:
    return st.lists(
        st.builds(
            lambda b, o: b + o, st.sampled_from(regions(mode)), st.integers(0, WINDOW // K4 - 1).map(lambda n: n * K4)
        ),
        max_size=4,
    )


# The default run: 30 sequences of up to 12 edits per paging mode (derandomized, so the same 30
# every run); the slow run's LONG settings below take 1000 sequences of up to 30 edits.
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _sequences(mode: PagingMode, max_ops: int) -> st.SearchStrategy:
    return st.tuples(st.lists(operations(mode), min_size=1, max_size=max_ops), probe_points(mode))


@SETTINGS
@given(_sequences(FOUR_LEVEL, 12))
def test_random_edit_sequences_match_model_4level(case: tuple[list[tuple], list[int]]) -> None:
    run_sequence(FOUR_LEVEL, *case)


@SETTINGS
@given(_sequences(FIVE_LEVEL, 12))
def test_random_edit_sequences_match_model_5level(case: tuple[list[tuple], list[int]]) -> None:
    run_sequence(FIVE_LEVEL, *case)


LONG = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.slow
@LONG
@given(_sequences(FOUR_LEVEL, 30))
def test_random_edit_sequences_match_model_4level_long(case: tuple[list[tuple], list[int]]) -> None:
    run_sequence(FOUR_LEVEL, *case)


@pytest.mark.slow
@LONG
@given(_sequences(FIVE_LEVEL, 30))
def test_random_edit_sequences_match_model_5level_long(case: tuple[list[tuple], list[int]]) -> None:
    run_sequence(FIVE_LEVEL, *case)


# ---- page sizes, splits, PAT, A/D ---------------------------------------------------------------
@pytest.fixture(params=MODES, ids=lambda m: m.name)
def pt(request: pytest.FixtureRequest) -> PageTable:
    return PageTable(PhysicalMemory(RAM), request.param, tag="t")


def test_one_gib_aligned_map_uses_one_pdpte_leaf(pt: PageTable) -> None:
    va = kernel_half_start(pt.mode) + 5 * G1
    pt.map(va, 2 * G1, G1, int(PTE.RW | PTE.NX))
    (leaf,) = pt.leaves()
    assert (leaf.va, leaf.size, leaf.pa, pt.levels[leaf.depth].entry) == (va, G1, 2 * G1, "PDPTE")
    assert leaf.entry & PTE.PS
    assert len(list(pt.tables())) == len(pt.levels) - 2  # root .. PDPT, no PD or PT


def test_largest_page_that_fits_each_step(pt: PageTable) -> None:
    # 4 KiB up to the 2 MiB boundary, 2 MiB pages up to 1 GiB, one 1 GiB page, 2 MiB, then 4 KiB.
    va, pa = G1 - M2 - 3 * K4, 3 * G1 - M2 - 3 * K4
    size = 3 * K4 + M2 + G1 + M2 + 2 * K4
    pt.map(va, pa, size, int(PTE.RW))
    sizes = [leaf.size for leaf in pt.leaves()]
    assert sizes == [K4] * 3 + [M2] + [G1] + [M2] + [K4] * 2
    assert [(leaf.va, leaf.size) for leaf in pt.leaves()] == greedy_sizes(va, size, pa, (G1, M2, K4))


def test_phys_alignment_limits_the_page_size(pt: PageTable) -> None:
    pt.map(0, M2 + K4, 2 * M2, int(PTE.RW))  # va 1 GiB-aligned, pa only 4 KiB-aligned
    assert {leaf.size for leaf in pt.leaves()} == {K4}
    pt.unmap(0, 2 * M2)
    pt.map(0, M2, G1, int(PTE.RW))  # pa 2 MiB-aligned: 2 MiB pages, never 1 GiB
    assert {leaf.size for leaf in pt.leaves()} == {M2}


# A non-leaf entry's own bits (everything but its table address): what `table_flags` may choose.
TABLE_FLAG_BITS = [PTE.RW, PTE.US, PTE.PWT, PTE.PCD, PTE.A, PTE.D, PTE.SW1, PTE.SW3, PTE.NX]


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    user=st.sets(st.sampled_from(TABLE_FLAG_BITS)),
    kernel=st.sets(st.sampled_from(TABLE_FLAG_BITS)),
)
def test_new_tables_carry_the_callers_table_flags(mode: PagingMode, user: set[PTE], kernel: set[PTE]) -> None:
    """Every non-leaf entry a map creates holds exactly the `table_flags` of its half (P added by
    the caller's choice), nothing else of the editor's own."""
    flags = tuple(int(PTE.P) | sum(int(b) for b in bits) for bits in (user, kernel))
    pt = PageTable(PhysicalMemory(RAM), mode, tag="t", table_flags=(flags[0], flags[1]))
    lo, hi = 0x400000, kernel_half_start(mode) + (1 << 40)
    for va, want in ((lo, flags[0]), (hi, flags[1])):
        pt.map(va, 0x200000, K4, int(PTE.RW))
        (leaf,) = pt.leaves(va, va + K4)
        assert len(leaf.above) == len(mode.levels) - 1
        assert all(e & ~ADDR_MASK_52 == want for e in leaf.above), [hex(e) for e in leaf.above]


def test_no_gbpages_uses_2mib() -> None:
    pt = PageTable(PhysicalMemory(RAM), gbpages=False)
    pt.map(G1, G1, G1, 0)
    assert {leaf.size for leaf in pt.leaves()} == {M2}
    with pytest.raises(PagingError, match="0x0000000080000000"):
        pt.map(2 * G1, G1, G1, 0, page_size=G1)


def test_forced_page_sizes(pt: PageTable) -> None:
    pt.map(0, 0, G1, 0, page_size=M2)
    assert {leaf.size for leaf in pt.leaves()} == {M2}
    pt.map(G1, G1, 2 * M2, 0, page_size=K4)
    assert len(list(pt.leaves(G1, G1 + 2 * M2))) == 1024


def test_split_1g_to_2m_to_4k_keeps_flags_key_and_moves_pat(pt: PageTable) -> None:
    """Unmapping one 4 KiB page of a 1 GiB page: 1 GiB -> 2 MiB keeps PAT at bit 12, 2 MiB -> 4 KiB
    moves it to bit 7 (SDM Tables 4-16, 4-18, 4-20); everything else is inherited."""
    va = G1
    flags = int(PTE.RW | PTE.G | PTE.A | PTE.D | PTE.PWT | PTE.NX | PTE.SW1)
    pt.map(va, 4 * G1, G1, flags, pkey=5)
    slot = pt.entry_slot(va, len(pt.levels) - 3)
    assert slot is not None
    pt.mem.write_u64(slot, pt.mem.read_u64(slot) | PTE.PAT_LARGE)  # the API never sets PAT: poke it
    hole = va + 3 * M2 + 7 * K4
    pt.unmap(hole, K4)
    by_size: dict[int, list] = {}
    for leaf in pt.leaves():
        by_size.setdefault(leaf.size, []).append(leaf)
    assert len(by_size[M2]) == 511 and len(by_size[K4]) == 511
    for leaf in pt.leaves():
        assert leaf.pa == 4 * G1 + (leaf.va - va)
        assert leaf.entry & LEAF_FLAG_MASK == flags | PTE.P
        assert pkey_of(leaf.entry) == 5
        if leaf.size == M2:
            assert leaf.entry & PTE.PS and leaf.entry & PTE.PAT_LARGE
        else:
            assert leaf.entry & PTE.PS, "PAT must move to bit 7 of the 4 KiB PTE"  # (bit 12: address, checked above)
    # protect keeps the PAT bit where it lives, and A/D.
    pt.protect(va, hole - va, int(PTE.US))
    pt.protect(hole + K4, va + G1 - hole - K4, int(PTE.US))
    for leaf in pt.leaves():
        assert leaf.entry & LEAF_FLAG_MASK == int(PTE.P | PTE.US | PTE.A | PTE.D)
        assert leaf.entry & (PTE.PAT_LARGE if leaf.size == M2 else PTE.PS)
        assert leaf.pa == 4 * G1 + (leaf.va - va)


def test_protect_keeps_accessed_and_dirty_set_by_the_walker(pt: PageTable) -> None:
    pt.map(0x400000, 0x800000, 2 * K4, int(PTE.RW | PTE.US))
    state = cpu(pt, 3)
    assert translate(pt.mem, state, 0x400000, Op.WRITE).ok  # sets A and D in the first PTE
    pt.protect(0x400000, 2 * K4, int(PTE.US))
    first, second = pt.leaves()
    assert first.entry & (PTE.A | PTE.D) == PTE.A | PTE.D and not first.entry & PTE.RW
    assert not second.entry & (PTE.A | PTE.D)
    assert not translate(pt.mem, state, 0x400000, Op.WRITE).ok


def test_protect_changes_only_the_key_when_asked(pt: PageTable) -> None:
    pt.map(0, 0, 2 * K4, 0, pkey=2)
    pt.protect(0, K4, 0, pkey=9)
    pt.protect(K4, K4, int(PTE.RW))
    assert [pkey_of(leaf.entry) for leaf in pt.leaves()] == [9, 2]


def test_unmap_frees_tables_emptied_after_splits(pt: PageTable) -> None:
    va = kernel_half_start(pt.mode) + G1
    pt.map(va, G1, G1, int(PTE.RW))
    pt.unmap(va + M2 + K4, K4)  # split twice
    assert len(list(pt.tables())) == len(pt.levels)
    pt.unmap(va, M2 + K4)  # the 2 MiB before the hole and the PTEs before it
    pt.unmap(va + M2 + 2 * K4, M2 - 2 * K4)  # the rest of the split 2 MiB: its PT empties
    check_structure(pt)
    assert all(leaf.size == M2 for leaf in pt.leaves()) and len(list(pt.leaves())) == 510
    pt.unmap(va, G1)
    assert list(pt.tables()) == [(pt.root, 0)] and pt.mem.stats().page_table == 1


def test_unmap_with_holes_and_of_nothing(pt: PageTable) -> None:
    pt.unmap(0, G1)  # nothing mapped: fine, like munmap
    pt.map(M2, 0, K4, 0)
    pt.map(3 * M2, 0, K4, 0)
    pt.unmap(0, G1)
    assert list(pt.leaves()) == [] and list(pt.tables()) == [(pt.root, 0)]


def test_leaves_are_canonical_and_ordered_in_both_halves(pt: PageTable) -> None:
    top = (1 << 64) - K4
    low = user_half_end(pt.mode) - K4
    pt.map(top, 0, K4, 0)
    pt.map(kernel_half_start(pt.mode), 0, K4, 0)
    pt.map(low, 0, K4, int(PTE.US))
    pt.map(0, 0, K4, int(PTE.US))
    assert [leaf.va for leaf in pt.leaves()] == [0, low, kernel_half_start(pt.mode), top]
    assert [leaf.va for leaf in pt.leaves(kernel_half_start(pt.mode), 1 << 64)] == [kernel_half_start(pt.mode), top]
    assert pt.lookup(top + 0xFFF) is not None and pt.lookup(top - 1) is None
    for va in (top, low, kernel_half_start(pt.mode), 0):
        assert translate(pt.mem, cpu(pt, 0), va, set_ad=False).ok


def test_map_replaces_an_empty_table_left_by_entry_slot(pt: PageTable) -> None:
    """entry_slot(create=True) leaves empty tables; a later map still gets its large page and the
    empty tables are freed, instead of tripping over them."""
    va = 4 * G1
    pt.entry_slot(va, len(pt.levels) - 1, create=True)  # builds PDPT, PD and PT, all empty below
    pt.map(va, 0, G1, 0, page_size=G1)
    (leaf,) = pt.leaves()
    assert leaf.size == G1
    assert pt.mem.stats().page_table == len(list(pt.tables())) == len(pt.levels) - 2


def test_destroy_frees_every_table_once_and_disables_the_object(pt: PageTable) -> None:
    pt.map(0, 0, 4 * M2 + K4, int(PTE.US))
    pt.map(kernel_half_start(pt.mode), 0, G1, 0)
    data = pt.mem.alloc(FrameKind.DATA, "d")
    pt.destroy()
    assert pt.mem.stats().page_table == 0 and pt.mem.stats().data == 1 and pt.mem.kind_of(data) is FrameKind.DATA
    with pytest.raises(PagingError, match="destroyed"):
        pt.map(0, 0, K4, 0)
    with pytest.raises(PagingError, match="destroyed"):
        list(pt.leaves())


def test_destroy_leaves_shared_tables_alone() -> None:
    """A second tree sharing a lower table (as PTI's user PGD shares user-half tables)."""
    mem = PhysicalMemory(RAM)
    kernel = PageTable(mem, tag="kernel")
    kernel.map(0x400000, 0, K4, int(PTE.US))
    user = PageTable(mem, tag="user")
    shared_entry = mem.read_u64(kernel.root)
    mem.write_u64(user.root, shared_entry)
    user.destroy(shared={entry_phys(shared_entry)})
    assert mem.stats().page_table_by_tag == {"kernel": 4}
    assert kernel.lookup(0x400000) is not None
    kernel.destroy()
    assert mem.stats().page_table == 0


def test_root_hook_mirrors_top_level_writes_and_their_undo() -> None:
    mem = PhysicalMemory(RAM)
    pt = PageTable(mem)
    mirror = PageTable(mem, tag="mirror")

    def hook(index: int, value: int) -> int:
        mem.write_u64(mirror.root + 8 * index, value)
        return value

    pt.root_hook = hook
    pt.map(0x400000, 0, K4, int(PTE.US))
    assert mem.read_u64(mirror.root) == mem.read_u64(pt.root) != 0
    pt.unmap(0x400000, K4)
    assert mem.read_u64(mirror.root) == mem.read_u64(pt.root) == 0
    # A map that fails midway (out of frames) is undone through the hook too.
    mem2 = PhysicalMemory(1 << 36, first_free=(1 << 36) - 3 * K4)
    pt2 = PageTable(mem2)
    seen: list[tuple[int, int]] = []
    pt2.root_hook = lambda i, v: seen.append((i, v)) or v
    with pytest.raises(PhysMemError):
        pt2.map(0, 0, 2 * M2, 0, page_size=K4)
    assert seen[-1] == (0, 0) and not mem2.read_frame(pt2.root).any()


# ---- bad input: clear errors naming the address, tables unchanged -------------------------------
def populated(mode: PagingMode) -> PageTable:
    pt = PageTable(PhysicalMemory(RAM), mode, tag="t")
    pt.map(0x400000, 0x200000, 0x3000, int(PTE.US))
    pt.map(G1, G1, G1, int(PTE.RW))
    pt.map(kernel_half_start(mode) + 2 * M2, 0, 2 * M2 + K4, int(PTE.RW | PTE.NX))
    return pt


def _bad_cases(mode: PagingMode) -> list[tuple[str, object, str]]:
    ks = kernel_half_start(mode)
    half = user_half_end(mode)
    noncanon = half  # first non-canonical address
    return [
        ("map", dict(va=noncanon, pa=0, size=K4, flags=0), f"{noncanon:#018x}"),
        ("map", dict(va=ks - K4, pa=0, size=K4, flags=0), f"{ks - K4:#018x}"),
        ("map", dict(va=half - K4, pa=0, size=2 * K4, flags=0), f"{half - K4:#018x}"),  # runs past the half
        ("map", dict(va=(1 << 64) - K4, pa=0, size=2 * K4, flags=0), f"{(1 << 64) - K4:#018x}"),
        ("map", dict(va=-K4, pa=0, size=K4, flags=0), "0x"),
        ("map", dict(va=0x10000123, pa=0, size=K4, flags=0), "0x0000000010000123"),
        ("map", dict(va=0x10000000, pa=0x123, size=K4, flags=0), "0x0000000010000000"),
        ("map", dict(va=0x10000000, pa=0, size=0x123, flags=0), "0x0000000010000000"),
        ("map", dict(va=0x10000000 + K4, pa=0, size=M2, flags=0, page_size=M2), "0x0000000010001000"),
        ("map", dict(va=0x10000000, pa=K4, size=M2, flags=0, page_size=M2), "0x0000000010000000"),
        ("map", dict(va=0x10000000, pa=0, size=M2 + K4, flags=0, page_size=M2), "0x0000000010000000"),
        ("map", dict(va=4 * G1 + M2, pa=0, size=G1, flags=0, page_size=G1), "0x0000000100200000"),
        ("map", dict(va=4 * G1, pa=M2, size=G1, flags=0, page_size=G1), "0x0000000100000000"),
        ("map", dict(va=0x10000000, pa=0, size=K4, flags=0, page_size=8 * K4), "0x0000000010000000"),
        ("map", dict(va=0x400000 + 2 * K4, pa=0, size=2 * K4, flags=0), "0x0000000000402000"),  # overlap
        ("map", dict(va=G1 + 5 * K4, pa=0, size=K4, flags=0), "0x0000000040005000"),  # inside a 1 GiB page
        ("map", dict(va=0x10000000, pa=0, size=0, flags=0), "0x0000000010000000"),
        ("map", dict(va=0x10000000, pa=0, size=-K4, flags=0), "0x0000000010000000"),
        ("map", dict(va=0x10000000, pa=RAM, size=K4, flags=0), "0x0000000010000000"),  # phys outside RAM
        ("map", dict(va=0x10000000, pa=RAM - K4, size=2 * K4, flags=0), "0x0000000010000000"),
        ("map", dict(va=0x10000000, pa=-K4, size=K4, flags=0), "0x0000000010000000"),
        ("map", dict(va=0x10000000, pa=0, size=K4, flags=int(PTE.PS)), "0x0000000010000000"),
        ("map", dict(va=0x10000000, pa=0, size=K4, flags=int(PTE.PAT_LARGE)), "0x0000000010000000"),
        ("map", dict(va=0x10000000, pa=0, size=K4, flags=0x5000), "0x0000000010000000"),  # address bits
        ("map", dict(va=0x10000000, pa=0, size=K4, flags=1 << 60), "0x0000000010000000"),  # key bits
        ("map", dict(va=0x10000000, pa=0, size=K4, flags=0, pkey=16), "0x0000000010000000"),
        ("map", dict(va=0x10000000, pa=0, size=K4, flags=0, pkey=-1), "0x0000000010000000"),
        ("protect", dict(va=0x400000, size=4 * K4, flags=0), "0x0000000000403000"),  # hole at the end
        ("protect", dict(va=0x3FF000, size=2 * K4, flags=0), "0x00000000003ff000"),  # hole at the start
        ("protect", dict(va=ks + 2 * M2 - K4, size=3 * K4, flags=0), f"{ks + 2 * M2 - K4:#018x}"),
        ("protect", dict(va=0x400000, size=K4, flags=int(PTE.PS)), "0x0000000000400000"),
        ("protect", dict(va=0x400000, size=K4, flags=0, pkey=16), "0x0000000000400000"),
        ("protect", dict(va=0x400000, size=0, flags=0), "0x0000000000400000"),
        ("protect", dict(va=0x400800, size=K4, flags=0), "0x0000000000400800"),
        ("protect", dict(va=noncanon, size=K4, flags=0), f"{noncanon:#018x}"),
        ("unmap", dict(va=noncanon, size=K4), f"{noncanon:#018x}"),
        ("unmap", dict(va=half - K4, size=2 * K4), f"{half - K4:#018x}"),
        ("unmap", dict(va=0x400800, size=K4), "0x0000000000400800"),
        ("unmap", dict(va=0x400000, size=-1), "0x0000000000400000"),
        ("unmap", dict(va=0x400000, size=0x800), "0x0000000000400000"),
    ]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_bad_requests_raise_naming_the_address_and_change_nothing(mode: PagingMode) -> None:
    pt = populated(mode)
    for method, kwargs, where in _bad_cases(mode):
        before = snapshot(pt)
        with pytest.raises((PagingError, AddressError)) as info:
            getattr(pt, method)(**kwargs)
        message = str(info.value)
        assert where in message, f"{method}{kwargs}: {message!r} does not name {where}"
        assert "\n" not in message
        assert snapshot(pt) == before, f"{method}{kwargs} changed the tables"


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_running_out_of_frames_midway_leaves_tables_unchanged(mode: PagingMode) -> None:
    mem = PhysicalMemory(1 << 36, first_free=(1 << 36) - 8 * K4)  # room for the root and 7 tables
    pt = PageTable(mem, mode)
    pt.map(0, 0, G1, 0)  # one 1 GiB page: root..PDPT
    before = snapshot(pt)
    with pytest.raises(PhysMemError, match=r"map \[0x0000000080000000"):
        pt.map(2 * G1, 0, 8 * M2, 0, page_size=K4)  # needs 1 PD + 8 PTs
    assert snapshot(pt) == before
    done = 0
    with pytest.raises(PhysMemError, match="unmap"):  # each unmap splits; the frames run out
        for i in range(8):
            pt.unmap(i * 4 * M2 + K4, K4)
            done += 1
    assert done == mem.stats().page_table - (len(pt.levels) - 2) - 1  # one PT per unmap, plus the PD
    check_structure(pt)
    assert sum(r.end - r.va for r in merged(table_runs(pt))) == G1 - done * K4
