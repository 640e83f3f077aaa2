"""The Linux x86-64 kernel virtual address layout as data: 4/5-level, 4.15 era or modern, KASLR.

`make_layout()` returns a frozen `Layout`: every region's bounds, the kernel image's sections
with their permissions, and the ptdump marker list, all computed from the constants of
facts/linux-kpti.md §1 (each cited next to its value). Nothing here touches page tables; the
linux model maps these regions, ptdump labels them, the audit classifies addresses with
`Layout.region_of()`.

Eras: ``"modern"`` is v4.20 and later (LDT remap in PGD slot 272, direct map one slot up);
``"4.15"`` is the layout PTI was merged with (v4.15..v4.19: LDT remap at 0xfffffe8000000000 on
4-level, direct map at 0xffff880000000000). KASAN is not modelled (it disables KASLR anyway).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final, Literal

from kaiser.linux.pgtable_types import PAGE_KERNEL, PAGE_KERNEL_RO, PAGE_KERNEL_RX
from kaiser.x86.bits import PTE
from kaiser.x86.geometry import PAGE_SIZE, GiB, KiB, MiB, TiB

Era = Literal["modern", "4.15"]
ERAS: Final = ("modern", "4.15")

TOP: Final = 1 << 64  # exclusive end of the address space

# ---- constants (facts/linux-kpti.md §1; sources as cited there) ----------------------------
PMD_SIZE: Final = 2 * MiB
THREAD_SIZE: Final = 16 * KiB  # x86-64 kernel stack, 4 pages (asm/page_64_types.h with KASAN off)
PUD_SIZE: Final = 1 * GiB
P4D_SHIFT: Final = 39  # asm/pgtable_64_types.h (P4D_SHIFT = 39 in 5-level; PGDIR_SHIFT = 39 in 4-level)
P4D_SIZE: Final = 1 << P4D_SHIFT  # 512 GiB


def _pgdir_shift(la57: bool) -> int:
    return 48 if la57 else 39  # asm/pgtable_64_types.h: PGDIR_SHIFT (§1.1)


def _slot(entry: int, shift: int) -> int:
    """`entry << shift` for a negative top-level index, as an unsigned 64-bit address."""
    return (entry << shift) % TOP


# Top-level indices (negative = counted from the top), asm/pgtable_64_types.h (§1.2, §1.3).
LDT_PGD_ENTRY_MODERN: Final = -240  # v4.20+ (d52888aa2753), both paging modes -> slot 272
LDT_PGD_ENTRY_415_L4: Final = -3  # v4.15..v4.19, 4-level -> slot 509 (0xfffffe8000000000)
LDT_PGD_ENTRY_415_L5: Final = -112  # v4.15..v4.19, 5-level (0xff90000000000000), §1.4
CPU_ENTRY_AREA_PGD: Final = -4  # << P4D_SHIFT -> 0xfffffe0000000000 in both modes (§1.2)
ESPFIX_PGD_ENTRY: Final = -2  # << P4D_SHIFT -> 0xffffff0000000000 (§1.2)
GUARD_HOLE_PGD_ENTRY: Final = -256  # hypervisor guard hole, 16 top-level slots (mm.rst, §1.2)
GUARD_HOLE_SLOTS: Final = 16

# __PAGE_OFFSET_BASE (asm/page_64_types.h; mm.rst), §1.2-§1.4.
PAGE_OFFSET_BASE: Final = {
    ("modern", False): 0xFFFF888000000000,  # __PAGE_OFFSET_BASE_L4 (4.20+), slot 273
    ("modern", True): 0xFF11000000000000,  # __PAGE_OFFSET_BASE_L5 (4.20+)
    ("4.15", False): 0xFFFF880000000000,  # 4.15..4.19 __PAGE_OFFSET_BASE, slot 272 (§1.3)
    ("4.15", True): 0xFF10000000000000,  # 4.15..4.19 5-level (§1.4)
}
VMALLOC_BASE: Final = {False: 0xFFFFC90000000000, True: 0xFFA0000000000000}  # mm.rst (§1.2, §1.4)
VMALLOC_SIZE_TB: Final = {False: 32, True: 12800}  # VMALLOC_SIZE_TB_L4 / _L5 (§1.2, §1.4)
VMEMMAP_BASE: Final = {False: 0xFFFFEA0000000000, True: 0xFFD4000000000000}  # mm.rst (§1.2, §1.4)
VMEMMAP_SIZE: Final = {False: 1 * TiB, True: 512 * TiB}  # mm.rst: 1 TB / 0.5 PB (§1.2, §1.4)
DIRECT_MAP_SIZE: Final = {False: 64 * TiB, True: 32 * 1024 * TiB}  # mm.rst: 64 TB / 32 PB (§1.2, §1.4)
MAX_PHYSMEM_BITS: Final = {False: 46, True: 52}  # asm/sparsemem.h: caps the KASLR direct-map region
STRUCT_PAGE_SIZE: Final = 64  # sizeof(struct page) on x86-64, sizes the vmemmap KASLR region
RANDOMIZE_MEMORY_PHYSICAL_PADDING_TB: Final = 10  # CONFIG_RANDOMIZE_MEMORY_PHYSICAL_PADDING default 0xa

EFI_VA_START: Final = (-4 * GiB) % TOP  # 0xffffffff00000000, region grows down (§1.2)
EFI_VA_END: Final = (-68 * GiB) % TOP  # 0xffffffef00000000 (§1.2)
START_KERNEL_MAP: Final = 0xFFFFFFFF80000000  # __START_KERNEL_map, asm/page_64_types.h (§1.1)
KERNEL_IMAGE_SIZE_KASLR: Final = 1 * GiB  # KERNEL_IMAGE_SIZE with CONFIG_RANDOMIZE_BASE (§1.2)
KERNEL_IMAGE_SIZE_FIXED: Final = 512 * MiB  # ... without it (mm.rst's table: modules at ffffffffa0000000)
LOAD_PHYSICAL_ADDR: Final = 0x1000000  # CONFIG_PHYSICAL_START default, 16 MiB: _text = 0xffffffff81000000
PHYSICAL_ALIGN: Final = 2 * MiB  # CONFIG_PHYSICAL_ALIGN: kernel KASLR granularity (§1.5)
MODULES_END: Final = 0xFFFFFFFFFF000000  # asm/pgtable_64_types.h (§1.2); also sample 02 "End Modules"
VSYSCALL_ADDR: Final = (-10 * MiB) % TOP  # 0xffffffffff600000, uapi/asm/vsyscall.h (§1.2)
FIXADDR_TOP: Final = 0xFFFFFFFFFF7FF000  # round_up(VSYSCALL_ADDR + 4K, 2M) - 4K, asm/fixmap.h (§1.2)
# Permanent fixmap slots (__end_of_permanent_fixed_addresses) depend on the config; 649 is what
# sample 02 shows (Fedora 4.18: "Fixmap Area" marker at 0xffffffffff576000 = FIXADDR_TOP - 649 pages).
DEFAULT_FIXMAP_PAGES: Final = 649
FIXMAP_FIRST_PERMANENT: Final = 512  # slots 0..511 are VSYSCALL_PAGE and above (asm/fixmap.h, §1.2)

# ptdump marker names (arch/x86/mm/dump_pagetables.c, facts §6.4). Note "CPU entry Area".
ESPFIX_MAX_LINES: Final = 16  # the ESPfix marker's line cap (§6.3, §6.4)


@dataclass(frozen=True)
class Region:
    """One named range [start, end) of the kernel's virtual address space."""

    name: str
    start: int
    end: int  # exclusive; 2**64 for the top of the address space
    doc: str = ""

    @property
    def size(self) -> int:
        return self.end - self.start

    def __contains__(self, va: object) -> bool:
        return isinstance(va, int) and self.start <= va < self.end


@dataclass(frozen=True)
class Section:
    """A kernel image section with its final protection (Linux PAGE_KERNEL_* constants, which
    carry `_PAGE_GLOBAL`; a PTI variant filters that bit by its own policy)."""

    name: str  # "text", "rodata", "data", "bss"
    start: int
    end: int
    prot: int

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def writable(self) -> bool:
        return bool(self.prot & PTE.RW)

    @property
    def executable(self) -> bool:
        return not self.prot & PTE.NX

    @property
    def perms(self) -> str:
        """`RX`, `RO NX` or `RW NX` -- the issue's notation."""
        if self.executable:
            return "RWX" if self.writable else "RX"
        return "RW NX" if self.writable else "RO NX"


@dataclass(frozen=True)
class Marker:
    """A ptdump section marker `---[ name ]---`; `max_lines` caps the lines printed in it (0 = no cap)."""

    name: str
    start: int
    max_lines: int = 0


@dataclass(frozen=True)
class ImageSizes:
    """Sizes of the kernel image's parts. Model defaults, not Linux constants: text is what the
    sample 03 dump shows (_text.._etext = 14352 KiB), the entry text sits 12 MiB into text as in
    samples 01 and 02 (its PMD at _text + 0xc00000). Section starts after text are 2 MiB-aligned,
    as x86-64 vmlinux.lds aligns rodata and `__end_rodata_aligned` to HPAGE_SIZE."""

    text: int = 14352 * KiB
    entry_text_offset: int = 0xC00000
    entry_text: int = 16 * KiB
    rodata: int = 6 * MiB
    data: int = 3 * MiB
    bss: int = 5 * MiB

    def __post_init__(self) -> None:
        for name in ("text", "entry_text", "rodata", "data", "bss", "entry_text_offset"):
            value = getattr(self, name)
            if value < 0 or value % PAGE_SIZE:
                raise ValueError(f"image size {name}={value:#x} must be a non-negative multiple of 4 KiB")
        if self.entry_text_offset + self.entry_text > self.text:
            raise ValueError("entry text must lie inside the text section")


@dataclass(frozen=True)
class Bases:
    """Boot-time bases taken from a real machine instead of drawn from the seed (`kaiser compare`
    aligns the model to a dump with them): page_offset_base, vmalloc_base, vmemmap_base
    (arch/x86/mm/kaslr.c, PUD-aligned under KASLR) and `_text` (2 MiB-aligned, PHYSICAL_ALIGN).
    None keeps the seeded (or, without KASLR, the fixed) value."""

    page_offset_base: int | None = None
    vmalloc_base: int | None = None
    vmemmap_base: int | None = None
    kernel_base: int | None = None

    def __post_init__(self) -> None:
        for name in ("page_offset_base", "vmalloc_base", "vmemmap_base"):
            value = getattr(self, name)
            if value is not None and (not 1 << 63 <= value < TOP or value % PUD_SIZE):
                raise ValueError(f"{name}={value:#x} must be a 1 GiB-aligned kernel-half address")
        kb = self.kernel_base
        if kb is not None and (not START_KERNEL_MAP <= kb < MODULES_END or kb % PHYSICAL_ALIGN):
            raise ValueError(f"kernel_base={kb:#x} must be 2 MiB-aligned inside the kernel image window")


def _round_up(value: int, align: int) -> int:
    return -(-value // align) * align


@dataclass(frozen=True)
class Layout:
    """Every region of one kernel's address space, plus the ptdump markers for it."""

    la57: bool
    era: Era
    kaslr: bool
    seed: int
    ram_size: int
    page_offset_base: int
    direct_map_size: int  # the region reserved for the direct map (KASLR shrinks it to RAM + padding)
    vmalloc_base: int
    vmalloc_size: int
    vmemmap_base: int
    vmemmap_size: int
    ldt_base: int
    cpu_entry_area_base: int
    espfix_base: int
    kernel_image_size: int
    kernel_phys: int  # physical load address of _text
    kernel_base: int  # _text
    entry_text: tuple[int, int]  # [__entry_text_start, __entry_text_end)
    sections: tuple[Section, ...]
    modules_vaddr: int
    fixaddr_start: int
    regions: tuple[Region, ...] = field(repr=False)
    markers: tuple[Marker, ...] = field(repr=False)

    # ---- derived -------------------------------------------------------------------------
    @property
    def va_bits(self) -> int:
        return 57 if self.la57 else 48

    @property
    def user_end(self) -> int:
        """First address above user space (0x0000800000000000 / 0x0100000000000000)."""
        return 1 << (self.va_bits - 1)

    @property
    def kernel_start(self) -> int:
        """First canonical kernel-half address (0xffff800000000000 / 0xff00000000000000)."""
        return TOP - self.user_end

    @property
    def guard_hole(self) -> tuple[int, int]:
        start = _slot(GUARD_HOLE_PGD_ENTRY, _pgdir_shift(self.la57))
        return start, start + (GUARD_HOLE_SLOTS << _pgdir_shift(self.la57))

    @property
    def ldt_end(self) -> int:
        return self.ldt_base + (1 << _pgdir_shift(self.la57))  # LDT_END_ADDR = base + PGDIR_SIZE

    @property
    def kernel_offset(self) -> int:
        """KASLR slide of the kernel text against the fixed 0xffffffff81000000."""
        return self.kernel_base - (START_KERNEL_MAP + LOAD_PHYSICAL_ADDR)

    @property
    def kernel_end(self) -> int:
        """`_end`."""
        return self.sections[-1].end

    def section(self, name: str) -> Section:
        for sec in self.sections:
            if sec.name == name:
                return sec
        raise KeyError(name)

    def region(self, name: str) -> Region:
        for reg in self.regions:
            if reg.name == name:
                return reg
        raise KeyError(name)

    def region_of(self, va: int) -> str:
        """Name of the region holding `va`: one of the `Region.name`s, the kernel section names
        `entry_text`, `kernel_text`, `kernel_rodata`, `kernel_data`, `kernel_bss`, or `hole`
        (unused kernel space) / `noncanonical`."""
        if not 0 <= va < TOP:
            raise ValueError(f"{va:#x} is not a 64-bit address")
        if va < self.user_end:
            return "user"
        if va < self.kernel_start:
            return "noncanonical"
        if self.entry_text[0] <= va < self.entry_text[1]:
            return "entry_text"
        for sec in self.sections:
            if sec.start <= va < sec.end:
                return f"kernel_{sec.name}"
        for reg in self.regions:
            if reg.start <= va < reg.end:
                return reg.name
        return "hole"

    def overlaps(self) -> list[tuple[str, str]]:
        """Pairs of regions that overlap. Empty except for the 4.15-era 5-level layout with KASLR,
        whose LDT slot sat inside the randomization range (the bug d52888aa2753 fixed, §1.3)."""
        found = []
        ordered = sorted(self.regions, key=lambda r: r.start)
        for i, a in enumerate(ordered):
            for b in ordered[i + 1 :]:
                if b.start >= a.end:
                    break
                found.append((a.name, b.name))
        return found


def _kaslr_memory(la57: bool, era: Era, ram_size: int, rng: random.Random) -> tuple[tuple[int, int], ...]:
    """Bases and sizes of direct map, vmalloc and vmemmap after `kernel_randomize_memory()`
    (arch/x86/mm/kaslr.c, restated): the three regions keep their order inside
    [__PAGE_OFFSET_BASE, CPU_ENTRY_AREA_BASE) ("vaddr_end for KASLR", §1.2, §1.5); the space left
    over after their sizes is the entropy; region i takes a random share of what is left divided
    by the regions still to place, aligned down to 1 GiB (PUD_SIZE; 4.15-era 5-level kernels used
    P4D_SIZE, 512 GiB), and the next region starts after it rounded up to the same alignment."""
    align = P4D_SIZE if (la57 and era == "4.15") else PUD_SIZE
    memory_tb = -(-ram_size // TiB) + RANDOMIZE_MEMORY_PHYSICAL_PADDING_TB
    direct_tb = min(memory_tb, 1 << (MAX_PHYSMEM_BITS[la57] - 40))
    vmemmap_tb = -(-(direct_tb * (TiB // PAGE_SIZE) * STRUCT_PAGE_SIZE) // TiB)
    sizes = (direct_tb * TiB, VMALLOC_SIZE_TB[la57] * TiB, vmemmap_tb * TiB)
    vaddr = PAGE_OFFSET_BASE[(era, la57)]
    vaddr_end = _slot(CPU_ENTRY_AREA_PGD, P4D_SHIFT)
    remain = vaddr_end - vaddr - sum(sizes)
    out = []
    for i, size in enumerate(sizes):
        share = remain // (len(sizes) - i)
        entropy = (rng.getrandbits(64) % (share + 1)) & ~(align - 1)
        vaddr += entropy
        out.append((vaddr, size))
        vaddr = _round_up(vaddr + size + 1, align)
        remain -= entropy
    return tuple(out)


def _kernel_image(
    kaslr: bool, ram_size: int, image_size: int, sizes: ImageSizes, rng: random.Random
) -> tuple[int, int]:
    """(physical, virtual) address of _text. Without KASLR: 16 MiB and 0xffffffff81000000.
    With it (arch/x86/boot/compressed/kaslr.c, restated; §1.5): each is an independent
    2 MiB-aligned slot -- virtual in [16 MiB, KERNEL_IMAGE_SIZE - image) of the kernel mapping
    (about 9 bits), physical in [16 MiB, RAM - image)."""
    span = _round_up(_image_span(sizes), PHYSICAL_ALIGN)
    if not kaslr:
        return LOAD_PHYSICAL_ADDR, START_KERNEL_MAP + LOAD_PHYSICAL_ADDR
    virt_slots = (image_size - LOAD_PHYSICAL_ADDR - span) // PHYSICAL_ALIGN + 1
    phys_slots = (ram_size - LOAD_PHYSICAL_ADDR - span) // PHYSICAL_ALIGN + 1
    if virt_slots < 1 or phys_slots < 1:
        raise ValueError(f"kernel image of {span:#x} bytes does not fit (RAM {ram_size:#x})")
    virt = START_KERNEL_MAP + LOAD_PHYSICAL_ADDR + rng.randrange(virt_slots) * PHYSICAL_ALIGN
    phys = LOAD_PHYSICAL_ADDR + rng.randrange(phys_slots) * PHYSICAL_ALIGN
    return phys, virt


def _image_span(sizes: ImageSizes) -> int:
    text_end = sizes.text
    rodata_end = _round_up(text_end, PMD_SIZE) + sizes.rodata
    data_start = _round_up(rodata_end, PMD_SIZE)
    return data_start + sizes.data + sizes.bss


def _sections(base: int, sizes: ImageSizes) -> tuple[Section, ...]:
    """text RX, rodata RO NX, data and bss RW NX (the issue's item 1; PAGE_KERNEL_* in
    pgtable_types.h, §2)."""
    text = Section("text", base, base + sizes.text, int(PAGE_KERNEL_RX))
    ro_start = _round_up(text.end, PMD_SIZE)
    rodata = Section("rodata", ro_start, ro_start + sizes.rodata, int(PAGE_KERNEL_RO))
    data_start = _round_up(rodata.end, PMD_SIZE)  # __end_rodata_aligned
    data = Section("data", data_start, data_start + sizes.data, int(PAGE_KERNEL))
    bss = Section("bss", data.end, data.end + sizes.bss, int(PAGE_KERNEL))
    return text, rodata, data, bss


def make_layout(
    la57: bool = False,
    kaslr: bool = True,
    seed: int = 0,
    ram_size: int = 4 * GiB,
    era: Era = "modern",
    *,
    image: ImageSizes | None = None,
    fixmap_pages: int = DEFAULT_FIXMAP_PAGES,
    kaslr_image_size: bool | None = None,
    bases: Bases | None = None,
) -> Layout:
    """Build the layout. `kaslr=False` gives mm.rst's fixed addresses (a kernel built without
    CONFIG_RANDOMIZE_BASE/MEMORY: 512 MiB image window, modules at 0xffffffffa0000000); pass
    `kaslr_image_size=True` for a KASLR-capable kernel booted with `nokaslr` (1 GiB window).
    `seed` drives every random choice, so a layout is reproducible; `bases` overrides the drawn
    (or fixed) bases with a real machine's."""
    if era not in ERAS:
        raise ValueError(f"era must be one of {ERAS}, not {era!r}")
    if ram_size <= 0 or ram_size % PAGE_SIZE:
        raise ValueError(f"ram_size {ram_size:#x} must be a positive multiple of 4 KiB")
    if not FIXMAP_FIRST_PERMANENT < fixmap_pages <= (FIXADDR_TOP - MODULES_END) // PAGE_SIZE:
        raise ValueError(
            f"fixmap_pages={fixmap_pages} must be in {FIXMAP_FIRST_PERMANENT + 1}.."
            f"{(FIXADDR_TOP - MODULES_END) // PAGE_SIZE} (slot 511 is the vsyscall page)"
        )
    sizes = image or ImageSizes()
    rng = random.Random(seed)
    pgdir_shift = _pgdir_shift(la57)

    if kaslr:
        (pob, dsize), (vmb, vsize), (vmm, vmmsize) = _kaslr_memory(la57, era, ram_size, rng)
    else:
        pob, dsize = PAGE_OFFSET_BASE[(era, la57)], DIRECT_MAP_SIZE[la57]
        vmb, vsize = VMALLOC_BASE[la57], VMALLOC_SIZE_TB[la57] * TiB
        vmm, vmmsize = VMEMMAP_BASE[la57], VMEMMAP_SIZE[la57]
    if bases is not None:
        pob = bases.page_offset_base if bases.page_offset_base is not None else pob
        vmb = bases.vmalloc_base if bases.vmalloc_base is not None else vmb
        vmm = bases.vmemmap_base if bases.vmemmap_base is not None else vmm
        if not pob < vmb < vmm:
            raise ValueError(f"bases out of order: direct map {pob:#x}, vmalloc {vmb:#x}, vmemmap {vmm:#x}")
        # regions keep their sizes unless the next base comes first (a real machine's bases)
        dsize, vsize = min(dsize, vmb - pob), min(vsize, vmm - vmb)
        vmmsize = min(vmmsize, _slot(CPU_ENTRY_AREA_PGD, P4D_SHIFT) - vmm)
    if era == "modern":
        ldt = _slot(LDT_PGD_ENTRY_MODERN, pgdir_shift)
    else:
        ldt = _slot(LDT_PGD_ENTRY_415_L5, 48) if la57 else _slot(LDT_PGD_ENTRY_415_L4, P4D_SHIFT)
    cea = _slot(CPU_ENTRY_AREA_PGD, P4D_SHIFT)
    espfix = _slot(ESPFIX_PGD_ENTRY, P4D_SHIFT)

    image_size = (
        KERNEL_IMAGE_SIZE_KASLR
        if (kaslr if kaslr_image_size is None else kaslr_image_size)
        else (KERNEL_IMAGE_SIZE_FIXED)
    )
    kphys, kbase = _kernel_image(kaslr, ram_size, image_size, sizes, rng)
    if bases is not None and bases.kernel_base is not None:
        kbase = bases.kernel_base
        if kbase + _image_span(sizes) > START_KERNEL_MAP + image_size:
            raise ValueError(f"kernel_base={kbase:#x}: the image does not fit below modules")
    sections = _sections(kbase, sizes)
    entry_text = (kbase + sizes.entry_text_offset, kbase + sizes.entry_text_offset + sizes.entry_text)
    modules = START_KERNEL_MAP + image_size  # MODULES_VADDR (§1.2)
    fixaddr_start = FIXADDR_TOP - fixmap_pages * PAGE_SIZE  # FIXADDR_START = FIXADDR_TOP - FIXADDR_SIZE

    guard = _slot(GUARD_HOLE_PGD_ENTRY, pgdir_shift)
    user_end = 1 << ((57 if la57 else 48) - 1)
    regions = (
        Region("user", 0, user_end, "user space, per mm (mm.rst)"),
        Region("guard_hole", guard, guard + (GUARD_HOLE_SLOTS << pgdir_shift), "reserved for a hypervisor"),
        Region("ldt_remap", ldt, ldt + (1 << pgdir_shift), "LDT remap for PTI, one top-level slot"),
        Region("direct_map", pob, pob + dsize, "direct map of all physical memory (page_offset_base)"),
        Region("vmalloc", vmb, vmb + vsize, "vmalloc/ioremap space (vmalloc_base)"),
        Region("vmemmap", vmm, vmm + vmmsize, "virtual memory map, struct page array (vmemmap_base)"),
        Region("cpu_entry_area", cea, cea + P4D_SIZE, "cpu_entry_area, one P4D entry"),
        Region("espfix", espfix, espfix + P4D_SIZE, "%esp fixup stacks"),
        Region("efi", EFI_VA_END, EFI_VA_START, "EFI runtime services (only in efi_pgd)"),
        Region("kernel_image", START_KERNEL_MAP, modules, "kernel text mapping (__START_KERNEL_map)"),
        Region("modules", modules, MODULES_END, "module mapping space"),
        Region("fixmap", fixaddr_start, VSYSCALL_ADDR, "fixmap (permanent slots)"),
        Region("vsyscall", VSYSCALL_ADDR, VSYSCALL_ADDR + PAGE_SIZE, "legacy vsyscall page = fixmap slot 511"),
    )
    markers = _markers(era, la57, ldt, pob, vmb, vmm, cea, espfix, modules, fixaddr_start)
    return Layout(
        la57=la57, era=era, kaslr=kaslr, seed=seed, ram_size=ram_size,
        page_offset_base=pob, direct_map_size=dsize, vmalloc_base=vmb, vmalloc_size=vsize,
        vmemmap_base=vmm, vmemmap_size=vmmsize, ldt_base=ldt, cpu_entry_area_base=cea,
        espfix_base=espfix, kernel_image_size=image_size, kernel_phys=kphys, kernel_base=kbase,
        entry_text=entry_text, sections=sections, modules_vaddr=modules, fixaddr_start=fixaddr_start,
        regions=regions, markers=markers,
    )  # fmt: skip


def _markers(
    era: Era,
    la57: bool,
    ldt: int,
    pob: int,
    vmb: int,
    vmm: int,
    cea: int,
    espfix: int,
    modules: int,
    fixaddr_start: int,
) -> tuple[Marker, ...]:
    """x86-64 ptdump markers in Linux's order (dump_pagetables.c, §6.4): the runtime bases
    (pt_dump_init fills LDT, Low Kernel, vmalloc, vmemmap, §1.5). Modern: LDT right after
    "Kernel Space"; 4.15..4.19: after "CPU entry Area" on 4-level, after "Low Kernel Mapping"
    on 5-level. KASAN markers are omitted (no KASAN in the model)."""
    ldt_marker = Marker("LDT remap", ldt)
    out = [Marker("User Space", 0), Marker("Kernel Space", 1 << 63)]
    if era == "modern":
        out.append(ldt_marker)
    out.append(Marker("Low Kernel Mapping", pob))
    if era == "4.15" and la57:
        out.append(ldt_marker)
    out += [Marker("vmalloc() Area", vmb), Marker("Vmemmap", vmm), Marker("CPU entry Area", cea)]
    if era == "4.15" and not la57:
        out.append(ldt_marker)
    out += [
        Marker("ESPfix Area", espfix, ESPFIX_MAX_LINES),
        Marker("EFI Runtime Services", EFI_VA_END),
        Marker("High Kernel Mapping", START_KERNEL_MAP),
        Marker("Modules", modules),
        Marker("End Modules", MODULES_END),
        Marker("Fixmap Area", fixaddr_start),
    ]
    return tuple(out)
