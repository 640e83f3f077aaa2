"""Layout invariants and the documented fixed addresses (facts/linux-kpti.md §1, §6.4)."""

from __future__ import annotations

import pytest

from kaiser.linux.layout import (
    EFI_VA_END,
    EFI_VA_START,
    GiB,
    Layout,
    MiB,
    TiB,
    make_layout,
)
from kaiser.x86.geometry import FIVE_LEVEL, FOUR_LEVEL

TOP = 1 << 64
VARIANTS = [(la57, era) for la57 in (False, True) for era in ("modern", "4.15")]


def mode(layout: Layout):  # type: ignore[no-untyped-def]
    return FIVE_LEVEL if layout.la57 else FOUR_LEVEL


def test_nokaslr_4level_modern_matches_mm_rst() -> None:
    """§1.2 table, address for address."""
    lay = make_layout(kaslr=False)
    r = {reg.name: (reg.start, reg.end) for reg in lay.regions}
    assert r["user"] == (0, 0x0000800000000000)
    assert r["guard_hole"] == (0xFFFF800000000000, 0xFFFF880000000000)
    assert r["ldt_remap"] == (0xFFFF880000000000, 0xFFFF888000000000)
    assert r["direct_map"] == (0xFFFF888000000000, 0xFFFFC88000000000)
    assert r["vmalloc"] == (0xFFFFC90000000000, 0xFFFFE90000000000)
    assert r["vmemmap"] == (0xFFFFEA0000000000, 0xFFFFEB0000000000)
    assert r["cpu_entry_area"] == (0xFFFFFE0000000000, 0xFFFFFE8000000000)
    assert r["espfix"] == (0xFFFFFF0000000000, 0xFFFFFF8000000000)
    assert r["efi"] == (0xFFFFFFEF00000000, 0xFFFFFFFF00000000)
    assert r["kernel_image"] == (0xFFFFFFFF80000000, 0xFFFFFFFFA0000000)
    assert r["modules"] == (0xFFFFFFFFA0000000, 0xFFFFFFFFFF000000)
    assert r["vsyscall"] == (0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000)
    assert lay.fixaddr_start == 0xFFFFFFFFFF576000  # sample 02's "Fixmap Area"
    assert lay.kernel_base == 0xFFFFFFFF81000000 and lay.kernel_phys == 16 * MiB
    assert lay.kernel_offset == 0


def test_slot_numbers() -> None:
    """§1.1: guard 256..271, LDT 272, direct map 273, CEA 508, 4.15 LDT 509, ESPfix 510."""
    m = make_layout(kaslr=False)
    old = make_layout(kaslr=False, era="4.15")
    idx = FOUR_LEVEL.levels[0].index
    assert (idx(m.guard_hole[0]), idx(m.guard_hole[1] - 1)) == (256, 271)
    assert idx(m.ldt_base) == 272 and idx(m.page_offset_base) == 273
    assert idx(m.cpu_entry_area_base) == 508 and idx(m.espfix_base) == 510
    assert idx(old.ldt_base) == 509 and idx(old.page_offset_base) == 272
    five = make_layout(la57=True, kaslr=False)
    idx5, p4d = FIVE_LEVEL.levels[0].index, FIVE_LEVEL.levels[1].index
    assert idx5(five.ldt_base) == 272 and idx5(five.page_offset_base) == 273
    for va, slot in ((five.cpu_entry_area_base, 508), (five.espfix_base, 510), (five.kernel_base, 511)):
        assert idx5(va) == 511 and p4d(va) == slot


def test_nokaslr_5level_and_415_addresses() -> None:
    """§1.3, §1.4."""
    five = make_layout(la57=True, kaslr=False)
    assert (five.ldt_base, five.page_offset_base) == (0xFF10000000000000, 0xFF11000000000000)
    assert (five.vmalloc_base, five.vmemmap_base) == (0xFFA0000000000000, 0xFFD4000000000000)
    assert five.region("vmalloc").end == 0xFFD2000000000000  # 12.5 PB
    assert five.guard_hole == (0xFF00000000000000, 0xFF10000000000000)
    assert five.cpu_entry_area_base == 0xFFFFFE0000000000  # same as 4-level from fffffc.. up
    old = make_layout(kaslr=False, era="4.15")
    assert (old.page_offset_base, old.ldt_base) == (0xFFFF880000000000, 0xFFFFFE8000000000)
    assert old.region("direct_map").end == 0xFFFFC80000000000
    old5 = make_layout(la57=True, kaslr=False, era="4.15")
    assert (old5.page_offset_base, old5.ldt_base) == (0xFF10000000000000, 0xFF90000000000000)


@pytest.mark.parametrize(("la57", "era"), VARIANTS)
@pytest.mark.parametrize("seed", range(40))
def test_invariants(la57: bool, era: str, seed: int) -> None:
    lay = make_layout(la57=la57, kaslr=True, seed=seed, era=era, ram_size=(seed + 1) * 3 * GiB)
    m = mode(lay)
    for reg in lay.regions:
        assert reg.start < reg.end <= TOP, reg
        assert m.is_canonical(reg.start) and m.is_canonical(reg.end - 1), reg
        assert reg.start % 4096 == 0 and reg.end % 4096 == 0
    if not (la57 and era == "4.15"):
        assert lay.overlaps() == []
    else:
        assert all("ldt_remap" in pair for pair in lay.overlaps())  # the bug 4.20 fixed (§1.3)
    # KASLR regions: order kept, inside [__PAGE_OFFSET_BASE, CPU_ENTRY_AREA_BASE), aligned (§1.5).
    align = 512 * GiB if (la57 and era == "4.15") else GiB
    bases = [lay.page_offset_base, lay.vmalloc_base, lay.vmemmap_base]
    assert bases == sorted(bases)
    assert all(b % align == 0 for b in bases)
    assert make_layout(la57=la57, kaslr=False, era=era).page_offset_base <= lay.page_offset_base
    assert lay.region("vmemmap").end <= lay.cpu_entry_area_base
    assert lay.direct_map_size >= lay.ram_size
    # Kernel text: 2 MiB-aligned, at least 16 MiB into the 1 GiB window, image inside it (§1.5).
    assert lay.kernel_base % (2 * MiB) == 0 and lay.kernel_phys % (2 * MiB) == 0
    assert lay.kernel_base >= 0xFFFFFFFF81000000
    assert lay.kernel_end <= lay.modules_vaddr == 0xFFFFFFFFC0000000
    assert 16 * MiB <= lay.kernel_phys and lay.kernel_phys + (lay.kernel_end - lay.kernel_base) <= lay.ram_size
    # Sections: ordered, text RX, rodata RO NX, data/bss RW NX, entry text inside text.
    names = [s.name for s in lay.sections]
    assert names == ["text", "rodata", "data", "bss"]
    assert [s.perms for s in lay.sections] == ["RX", "RO NX", "RW NX", "RW NX"]
    assert all(a.end <= b.start for a, b in zip(lay.sections, lay.sections[1:], strict=False))
    text = lay.section("text")
    assert text.start <= lay.entry_text[0] < lay.entry_text[1] <= text.end
    # Markers: Linux's order and names (§6.4); starts sorted except the 4.15 5-level LDT quirk.
    starts = [mk.start for mk in lay.markers]
    if era == "modern":
        assert starts == sorted(starts)


def test_markers_order_per_era() -> None:
    names = [m.name for m in make_layout(kaslr=False).markers]
    assert names == ["User Space", "Kernel Space", "LDT remap", "Low Kernel Mapping", "vmalloc() Area",
                     "Vmemmap", "CPU entry Area", "ESPfix Area", "EFI Runtime Services",
                     "High Kernel Mapping", "Modules", "End Modules", "Fixmap Area"]  # fmt: skip
    old = [m.name for m in make_layout(kaslr=False, era="4.15").markers]
    assert old.index("LDT remap") == old.index("CPU entry Area") + 1
    old5 = [m.name for m in make_layout(la57=True, kaslr=False, era="4.15").markers]
    assert old5.index("LDT remap") == old5.index("Low Kernel Mapping") + 1
    lay = make_layout(kaslr=False)
    assert {m.name: m.start for m in lay.markers}["EFI Runtime Services"] == EFI_VA_END
    assert [m.max_lines for m in lay.markers if m.max_lines] == [16]


def test_seeds_differ_and_repeat() -> None:
    a, b = make_layout(seed=1), make_layout(seed=2)
    assert make_layout(seed=1) == a
    assert (a.page_offset_base, a.vmalloc_base, a.vmemmap_base, a.kernel_base) != (
        b.page_offset_base, b.vmalloc_base, b.vmemmap_base, b.kernel_base)  # fmt: skip
    bases = {make_layout(seed=s).kernel_base for s in range(200)}
    assert len(bases) > 100  # ~9 bits of text entropy (§1.5)
    assert len({make_layout(seed=s).page_offset_base for s in range(50)}) == 50


def test_sample02_kaslr_bases_fit_the_model() -> None:
    """The KASLR'd 4.18 dump (sample 02): direct map 0xffff8dc300000000, vmalloc
    0xffffb51ac0000000, vmemmap 0xffffe68f80000000, text 0xffffffffa0000000 -- each in its range,
    ordered, 1 GiB / 2 MiB aligned as the model draws them."""
    base = make_layout(kaslr=False, era="4.15")
    real = (0xFFFF8DC300000000, 0xFFFFB51AC0000000, 0xFFFFE68F80000000)
    assert base.page_offset_base <= real[0] < real[1] < real[2] < base.cpu_entry_area_base
    assert all(b % GiB == 0 for b in real)
    assert (0xFFFFFFFFA0000000 - 0xFFFFFFFF80000000) % (2 * MiB) == 0


def test_region_of() -> None:
    lay = make_layout(kaslr=False)
    assert lay.region_of(0x400000) == "user"
    assert lay.region_of(0x0000800000000000) == "noncanonical"
    assert lay.region_of(0xFFFF800000000000) == "guard_hole"
    assert lay.region_of(0xFFFF880000001000) == "ldt_remap"
    assert lay.region_of(0xFFFF888000000000) == "direct_map"
    assert lay.region_of(0xFFFFC88000000000) == "hole"
    assert lay.region_of(0xFFFFC90000000000) == "vmalloc"
    assert lay.region_of(0xFFFFEA0000000000) == "vmemmap"
    assert lay.region_of(0xFFFFFE0000001000) == "cpu_entry_area"
    assert lay.region_of(0xFFFFFF0000005000) == "espfix"
    assert lay.region_of(0xFFFFFFEF00000000) == "efi"
    assert lay.region_of(0xFFFFFFFF81000000) == "kernel_text"
    assert lay.region_of(lay.entry_text[0]) == "entry_text"
    assert lay.region_of(lay.section("rodata").start) == "kernel_rodata"
    assert lay.region_of(lay.section("bss").end - 1) == "kernel_bss"
    assert lay.region_of(0xFFFFFFFF9F000000) == "kernel_image"
    assert lay.region_of(0xFFFFFFFFA0000000) == "modules"
    assert lay.region_of(0xFFFFFFFFFF5FB000) == "fixmap"
    assert lay.region_of(0xFFFFFFFFFF600000) == "vsyscall"
    assert lay.region_of(0xFFFFFFFFFFE00000) == "hole"
    with pytest.raises(ValueError):
        lay.region_of(TOP)


def test_4_15_5level_kaslr_can_put_a_region_over_the_ldt_slot() -> None:
    """§1.3: why 4.20 moved the LDT -- in 5-level mode its old slot sat inside the KASLR range."""
    hits = [s for s in range(200) if make_layout(la57=True, era="4.15", seed=s).overlaps()]
    assert hits
    assert not any(make_layout(la57=True, seed=s).overlaps() for s in range(200))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_layout(era="5.0")
    with pytest.raises(ValueError):
        make_layout(ram_size=123)
    with pytest.raises(ValueError):
        make_layout(fixmap_pages=100)
    assert make_layout(kaslr=False, kaslr_image_size=True).modules_vaddr == 0xFFFFFFFFC0000000
    assert (EFI_VA_START - EFI_VA_END, TiB) == (64 * GiB, 1 << 40)
