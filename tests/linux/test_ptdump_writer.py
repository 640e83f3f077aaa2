"""The ptdump writer on small hand-built tables. Every expected line is derived by hand from the
format rules of facts/linux-kpti.md §6 (cited per test): §6.2 line format and sizes, §6.3 breaks,
markers, the guard hole and the final flush at address 0, §6.4 marker order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser.linux.layout import Marker, make_layout
from kaiser.linux.ptdump import flag_field, ptdump, ptdump_wide, size_parts
from kaiser.x86.bits import PTE
from kaiser.x86.geometry import FIVE_LEVEL, FOUR_LEVEL
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import PhysicalMemory

ESPFIX = 0xFFFFFF0000000000


def new_table(mode=FOUR_LEVEL) -> PageTable:  # type: ignore[no-untyped-def]
    return PageTable(PhysicalMemory(1 << 36, maxphyaddr=46), mode)


def user_page_table() -> PageTable:
    t = new_table()
    t.map(0x400000, 0x200000, 0x1000, PTE.US)  # one 4K user page: USR, read-only, executable
    return t


# §6.2: USR, RW/ro, PWT, PCD, PSE, PAT, GLB, NX/x, 30 columns; then the level name.
# §6.3: the first note prints the first marker; a break on flags/level/marker prints the run;
# one marker per break; the hypervisor slots 256..271 are not walked (5.6+); the final flush
# note is at address 0. Sizes: §6.2 unit reduction (0xffff878000000000 bytes is not a multiple
# of 1T, so it prints as 17179745792G, widening the %9lu field).
EXPECTED_GENERIC = """\
---[ User Space ]---
0x0000000000000000-0x0000000000400000           4M                               pmd
0x0000000000400000-0x0000000000401000           4K USR ro                     x  pte
0x0000000000401000-0x0000000000600000        2044K                               pte
0x0000000000600000-0x0000000040000000        1018M                               pmd
0x0000000040000000-0x0000008000000000         511G                               pud
0x0000008000000000-0xffff880000000000   17179745792G                               pgd
---[ Kernel Space ]---
0xffff880000000000-0xffff888000000000         512G                               pgd
---[ LDT remap ]---
0xffff888000000000-0xffff890000000000         512G                               pgd
---[ Low Kernel Mapping ]---
0xffff890000000000-0xffffc90000000000          64T                               pgd
---[ vmalloc() Area ]---
0xffffc90000000000-0xffffea0000000000          33T                               pgd
---[ Vmemmap ]---
0xffffea0000000000-0xfffffe0000000000          20T                               pgd
---[ CPU entry Area ]---
0xfffffe0000000000-0xffffff0000000000           1T                               pgd
---[ ESPfix Area ]---
0xffffff0000000000-0x0000000000000000           1T                               pgd
"""


def test_generic_dump_of_one_user_page_exact() -> None:
    assert ptdump(user_page_table(), make_layout(kaslr=False).markers) == EXPECTED_GENERIC


def test_legacy_dump_walks_the_guard_hole_as_empty_pgd_slots() -> None:
    """§6.3: pre-5.6 notes slots 256..271 as empty, so the user run ends at the normalized
    0xffff800000000000 and the 8T hole gets its own line under "Kernel Space"."""
    out = ptdump(user_page_table(), make_layout(kaslr=False).markers, dialect="legacy")
    lines = out.splitlines()
    i = lines.index("---[ Kernel Space ]---")
    assert lines[i - 1] == "0x0000008000000000-0xffff800000000000   17179737600G                               pgd"
    assert lines[i + 1] == "0xffff800000000000-0xffff880000000000           8T                               pgd"
    # Here each marker is announced on the first break at its start, not one run late.
    assert lines[i + 2 : i + 6] == [
        "---[ LDT remap ]---",
        "0xffff880000000000-0xffff888000000000         512G                               pgd",
        "---[ Low Kernel Mapping ]---",
        "0xffff888000000000-0xffffc90000000000       66048G                               pgd",
    ]
    # From vmalloc on, both dialects print the same.
    assert out.split("---[ vmalloc() Area ]---")[1] == EXPECTED_GENERIC.split("---[ vmalloc() Area ]---")[1]


def test_marker_announced_on_the_break_after_its_start() -> None:
    """§6.3: a marker whose start falls inside a run is printed after that run's line. Here the
    "LDT remap" slot is one empty pgd note that is also the first note after "Kernel Space"."""
    lines = EXPECTED_GENERIC.splitlines()
    i = lines.index("---[ LDT remap ]---")
    assert lines[i - 1].startswith("0xffff880000000000-")  # the LDT slot's own line, above its marker


def test_flag_field_columns() -> None:
    """§6.2: fixed 30 columns in Linux's order; PSE only above pte; PAT bit 7 at pte, bit 12 above."""
    everything = int(PTE.P | PTE.US | PTE.RW | PTE.PWT | PTE.PCD | PTE.PS | PTE.G | PTE.NX | (1 << 12))
    assert flag_field(everything, "pmd") == "USR RW PWT PCD PSE PAT GLB NX "
    assert flag_field(everything & ~(1 << 12), "pte") == "USR RW PWT PCD     PAT GLB NX "
    assert flag_field(int(PTE.P), "pte") == "    ro                     x  "
    assert flag_field(int(PTE.RW | PTE.US), "pte") == " " * 30  # not present: 30 blanks
    assert all(len(flag_field(v, lv)) == 30 for v in (0, everything, 1) for lv in ("pgd", "pmd", "pte"))


@pytest.mark.parametrize(
    ("delta", "want"),
    [(0x1000, (4, "K")), (57 * (1 << 40) + (1 << 39), (58880, "G")), (9 << 40, (9, "T")),
     (0x3E8000, (4000, "K")), (1023, (1023, "B")), (1 << 60, (1, "E")), (0, (0, "E"))],
)  # fmt: skip
def test_size_reduction(delta: int, want: tuple[int, str]) -> None:
    """§6.2: divide by 1024 while exact and a larger unit exists (0 reduces all the way to E)."""
    assert size_parts(delta) == want


def _kernel_lines(t: PageTable, dialect: str = "generic") -> list[str]:
    return [line for line in ptdump(t, dialect=dialect).splitlines() if line.startswith("0xffffffff8")]


def test_large_leaf_flags_and_pat_per_dialect() -> None:
    """§6.2 flags of a 2M leaf with RW PWT PCD G NX, and with the large-page PAT bit (12): the
    legacy walker prints PAT, the 5.6+ one masks bit 12 out with PTE_FLAGS_MASK."""
    t = new_table()
    t.map(0xFFFFFFFF80200000, 0x200000, 0x200000, PTE.RW | PTE.PWT | PTE.PCD | PTE.G | PTE.NX)
    t.map(0xFFFFFFFF80400000, 0x400000, 0x200000, PTE.G)
    slot = t.entry_slot(0xFFFFFFFF80400000, 2)
    assert slot is not None
    t.mem.write_u64(slot, t.mem.read_u64(slot) | (1 << 12))
    legacy = _kernel_lines(t, "legacy")
    generic = _kernel_lines(t, "generic")
    line1 = "0xffffffff80200000-0xffffffff80400000           2M     RW PWT PCD PSE     GLB NX pmd"
    assert line1 in legacy and line1 in generic
    assert "0xffffffff80400000-0xffffffff80600000           2M     ro         PSE PAT GLB x  pmd" in legacy
    assert "0xffffffff80400000-0xffffffff80600000           2M     ro         PSE     GLB x  pmd" in generic


def test_pte_pat_bit_and_gigabyte_leaf() -> None:
    t = new_table()
    t.map(0xFFFFFFFF80001000, 0x1000, 0x1000, PTE.NX)
    slot = t.entry_slot(0xFFFFFFFF80001000, 3)
    assert slot is not None
    t.mem.write_u64(slot, t.mem.read_u64(slot) | (1 << 7))  # bit 7 of a 4K PTE is PAT
    t.map(0xFFFF888000000000, 0, 1 << 30, PTE.RW | PTE.NX)
    out = ptdump(t).splitlines()
    assert "0xffffffff80001000-0xffffffff80002000           4K     ro             PAT     NX pte" in out
    assert "0xffff888000000000-0xffff888040000000           1G     RW         PSE         NX pud" in out


def test_break_on_effective_protection_only() -> None:
    """§6.3: same raw leaf flags, but the second page's PMD entry has RW clear, so the effective
    protection differs and Linux starts a new line even though both print identically."""
    t = new_table()
    t.map(0x1FF000, 0x1000, 0x2000, PTE.US | PTE.RW)
    joined = "0x00000000001ff000-0x0000000000201000           8K USR RW                     x  pte"
    assert joined in ptdump(t).splitlines()
    slot = t.entry_slot(0x200000, 2)
    assert slot is not None
    t.mem.write_u64(slot, t.mem.read_u64(slot) & ~int(PTE.RW))
    out = ptdump(t).splitlines()
    assert "0x00000000001ff000-0x0000000000200000           4K USR RW                     x  pte" in out
    assert "0x0000000000200000-0x0000000000201000           4K USR RW                     x  pte" in out
    wide = ptdump_wide(t).splitlines()
    assert any(line.startswith("0x00000000001ff000-") and line.endswith("user:rwx kernel:---") for line in wide)
    assert any(line.startswith("0x0000000000200000-") and line.endswith("user:r-x kernel:---") for line in wide)


def test_break_on_invisible_raw_bits() -> None:
    """§6.3: raw flags are compared whole (A, D, software bits), so an accessed page splits a run
    into two lines that print the same."""
    t = new_table()
    t.map(0xFFFFC90000000000, 0, 0x1000, PTE.RW | PTE.NX)
    t.map(0xFFFFC90000001000, 0x1000, 0x1000, PTE.RW | PTE.NX | PTE.A)
    out = [line for line in ptdump(t).splitlines() if line.startswith("0xffffc9000000")]
    assert out[:2] == [
        "0xffffc90000000000-0xffffc90000001000           4K     RW                     NX pte",
        "0xffffc90000001000-0xffffc90000002000           4K     RW                     NX pte",
    ]


def test_present_less_nonzero_entries_print_blank_but_break() -> None:
    """§2: P clear -> 30 blanks; the raw value (here a PAGE_NONE-like G|A) still breaks the run."""
    t = new_table()
    t.map(0xFFFFFE0000000000, 0, 0x1000, PTE.G | PTE.NX)
    for va in (0xFFFFFE0000002000, 0xFFFFFE0000003000):
        slot = t.entry_slot(va, 3)
        assert slot is not None
        t.mem.write_u64(slot, int(PTE.G | PTE.A))
    out = [line for line in ptdump(t).splitlines() if line.startswith("0xfffffe00000")]
    assert out == [
        "0xfffffe0000000000-0xfffffe0000001000           4K     ro                 GLB NX pte",
        "0xfffffe0000001000-0xfffffe0000002000           4K                               pte",
        "0xfffffe0000002000-0xfffffe0000004000           8K                               pte",
        "0xfffffe0000004000-0xfffffe0000200000        2032K                               pte",
    ]


def test_espfix_is_capped_at_16_lines() -> None:
    """§6.3/§6.4: ESPfix prints at most 16 lines; on leaving it, `... N entries skipped ... `.
    20 pages at every other slot give 39 page/gap lines, then the rest of the PTE table (1), of
    the PMD table (1), and one pud-level run: the rest of slot 510's PUD table merges with slot
    511's PUDs below EFI_VA_END (same level, same flags). 42 lines, 16 shown, 26 skipped. The
    page in the kernel image makes slot 511 a table, so the walk reaches the EFI marker."""
    t = new_table()
    for i in range(20):
        t.map(ESPFIX + 2 * i * 0x1000, 0x10000, 0x1000, PTE.G | PTE.NX)
    t.map(0xFFFFFFFF81000000, 0x1000000, 0x200000, PTE.G)
    lines = ptdump(t).splitlines()
    start = lines.index("---[ ESPfix Area ]---")
    end = lines.index("---[ EFI Runtime Services ]---")
    section = lines[start + 1 : end]
    page = "0x{:016x}-0x{:016x}           4K     ro                 GLB NX pte"
    gap = "0x{:016x}-0x{:016x}           4K                               pte"
    want = []
    for i in range(8):
        va = ESPFIX + 2 * i * 0x1000
        want += [page.format(va, va + 0x1000), gap.format(va + 0x1000, va + 0x2000)]
    assert section == [*want, "... 26 entries skipped ... "]


def test_espfix_cap_without_leaving_the_marker_prints_no_skip_line() -> None:
    """§6.3: the skip line is printed only on the break that advances past ESPfix."""
    t = new_table()
    for i in range(20):
        t.map(ESPFIX + 2 * i * 0x1000, 0x10000, 0x1000, PTE.G | PTE.NX)
    lines = ptdump(t).splitlines()
    assert lines[-1] != "---[ EFI Runtime Services ]---"
    assert not any("skipped" in line for line in lines)
    assert len(lines) - lines.index("---[ ESPfix Area ]---") - 1 == 16


def test_five_level_dump_has_p4d_lines_and_its_own_guard_hole() -> None:
    """5-level: levels pgd p4d pud pmd pte; the guard hole is ff00..-ff10.. (slots 256..271)."""
    t = new_table(FIVE_LEVEL)
    t.map(0x400000, 0x200000, 0x1000, PTE.US)
    markers = make_layout(la57=True, kaslr=False).markers
    lines = ptdump(t, markers).splitlines()
    # 511 empty P4D entries = 511 * 512G, not a multiple of 1T.
    assert "0x0000008000000000-0x0001000000000000      261632G                               p4d" in lines
    assert lines[lines.index("---[ Kernel Space ]---") - 1].startswith("0x0001000000000000-0xff10000000000000")
    legacy = ptdump(t, markers, dialect="legacy").splitlines()
    assert legacy[legacy.index("---[ Kernel Space ]---") + 1] == (
        "0xff00000000000000-0xff10000000000000           4P                               pgd"
    )
    # The last run starts at the Vmemmap marker (no later break) and ends at the wrapped 0.
    assert lines[-1] == "0xffd4000000000000-0x0000000000000000          11P                               pgd"


def test_custom_markers_and_wide_header() -> None:
    t = user_page_table()
    out = ptdump(t, [Marker("Only", 0)])
    assert out.splitlines()[0] == "---[ Only ]---"
    assert out.count("---[") == 1
    wide = ptdump_wide(t, cr3s={"kernel": 0x5000, "user": 0x6000}, live="user").splitlines()
    assert wide[0] == "# CR3 kernel=0x0000000000005000 user=0x0000000000006000 (live)"
    row = next(line for line in wide if line.startswith("0x0000000000400000-"))
    assert row == ("0x0000000000400000-0x0000000000401000  0x0000000000200000-0x0000000000201000"
                   "           4K USR ro                     x  pte  user:r-x kernel:---")  # fmt: skip


def test_wide_view_kernel_rights_follow_smep_smap() -> None:
    t = user_page_table()
    row = next(line for line in ptdump_wide(t, smep=False, smap=False).splitlines() if line.startswith("0x00000000004"))
    assert row.endswith("user:r-x kernel:r-x")


def test_bad_dialect_is_rejected() -> None:
    with pytest.raises(ValueError, match="dialect"):
        ptdump(user_page_table(), dialect="4.15")


# ---- aliased tables: the walk compresses repeated table entries, the text must not change -------
@settings(max_examples=40, deadline=None)
@given(
    pages=st.lists(st.integers(0, 511), min_size=1, max_size=12, unique=True),
    copies=st.integers(2, 40),
    first=st.integers(0, 400),
    marker_at=st.one_of(st.none(), st.integers(0, 60)),
    cap=st.booleans(),
)
def test_repeated_table_entries_print_exactly_as_walked_one_by_one(
    pages: list[int], copies: int, first: int, marker_at: int | None, cap: bool
) -> None:
    """One PTE page under `copies` consecutive PMD entries (espfix_64.c's trick) in the ESPfix
    slot (capped at 16 lines) or the vmalloc one (no cap), a marker sometimes inside the copies:
    the compressed walk prints the same text, skip count included, as the entry-by-entry walk."""
    from kaiser.linux.ptdump import ptdump_root

    t = new_table()
    base = (ESPFIX if cap else 0xFFFFC90000000000) + first * 0x200000
    for p in pages:
        t.map(base + p * 0x1000, 0x10000, 0x1000, PTE.G | PTE.NX)
    pmd_slot = t.entry_slot(base, 2)
    assert pmd_slot is not None
    pointer = t.mem.read_u64(pmd_slot)
    for n in range(1, min(copies, 512 - first)):
        t.mem.write_u64(pmd_slot + 8 * n, pointer)
    markers = list(make_layout(kaslr=False).markers)
    if marker_at is not None:
        markers.append(Marker("Inside", base + marker_at * 0x200000 + 0x1000 * (marker_at % 3)))
        markers.sort(key=lambda m: m.start)
    fast = ptdump_root(t.mem, t.root, t.mode, markers)
    slow = ptdump_root(t.mem, t.root, t.mode, markers, compress=False)
    assert fast == slow


@pytest.mark.parametrize("seed", [0, 5])
def test_booted_espfix_has_65536_aliases_and_prints_like_linux(seed: int) -> None:
    """A booted kernel's ESPfix page: 65,536 present 4K aliases, all of one frame (32 PTEs x 512
    PMD entries x 4 PUD entries); its dump is 16 lines and the skip line, as in the real 6.1 dumps."""
    from kaiser.linux.kernel import Kernel, KernelConfig
    from kaiser.linux.ptdump import ptdump_root

    k = Kernel.boot(KernelConfig(seed=seed))
    upt = k.init.user_pt
    assert upt is not None
    leaves = list(upt.leaves(k.layout.espfix_base, k.layout.espfix_base + (1 << 39)))
    assert len(leaves) == 65536 and len({leaf.pa for leaf in leaves}) == 1
    assert {leaf.va & 0xFFFF for leaf in leaves} == {k.espfix_va & 0xF000}
    text = ptdump(upt, k.layout.markers)
    assert text == ptdump_root(upt.mem, upt.root, upt.mode, k.layout.markers, compress=False)
    lines = text.splitlines()
    section = lines[lines.index("---[ ESPfix Area ]---") + 1 :]
    assert section[16].startswith("... ") and section[16].endswith(" entries skipped ... ")
