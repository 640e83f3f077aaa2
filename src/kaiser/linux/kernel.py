"""A booted Linux kernel on the paging model: init_mm's tables, PTI's user tables, processes.

`Kernel(config)` lays out the kernel for a variant (`kaiser.linux.variants`), maps every region
into init_mm's kernel PGD with Linux's protections, builds the user PGD's kernel half the way the
variant does (`kaiser.linux.pti`), and then creates processes (`kaiser.linux.mm.Mm`) whose PGD
pairs copy both kernel halves from init_mm (`clone_pgd_range`, linux-kpti.md §3.1) and mirror
every user-half top-level write into the user PGD (`pti_set_user_pgtbl`, §3.2).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kaiser.choices import PTI_MODES, VENDORS, VSYSCALL_MODES
from kaiser.linux import pti
from kaiser.linux.asi import Asi, asi_cr3, asi_set_user_pgtbl
from kaiser.linux.cea import PAGE_NONE, PERCPU_PAGES, PERCPU_TSS, CeaLayout, Kind, cea_layout
from kaiser.linux.layout import (
    DEFAULT_FIXMAP_PAGES,
    FIXADDR_TOP,
    THREAD_SIZE,
    VSYSCALL_ADDR,
    Bases,
    GiB,
    ImageSizes,
    Layout,
    MiB,
    make_layout,
)
from kaiser.linux.mm import LDT_ENTRIES, Mm, ProgramImage
from kaiser.linux.pgtable_types import (
    KERNPG_TABLE,
    PAGE_KERNEL,
    PAGE_KERNEL_RO,
    PAGE_KERNEL_RX,
    PAGE_KERNEL_VVAR,
    TABLE_FLAGS,
)
from kaiser.linux.variants import Delivery, Entry, GlobalPolicy, Part, Variant, booted_variant, get_variant
from kaiser.x86.bits import CR4, PTE, make_cr3
from kaiser.x86.geometry import PagingMode, mode_for
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import PAGE_SIZE, FrameKind, PhysicalMemory

FIX_IO_PAGES = 515  # fixmap index of the two RW PCD I/O pages (APIC, IO-APIC): FIXADDR_TOP - 515 pages
# espfix_64.c: 64-byte ministacks, 64 a page; page_random spans 2^(P4D_SHIFT - PAGE_SHIFT - 16) pages.
ESPFIX_STACK_SIZE, ESPFIX_STACKS_PER_PAGE, ESPFIX_PAGE_SPACE = 64, 64, 1 << (39 - 12 - 16)
ESPFIX_PTE_CLONES, ESPFIX_PMD_CLONES, ESPFIX_PUD_CLONES = 32, 512, 4  # 32 * 512 * 4 = 65,536 aliases


@dataclass(frozen=True)
class KernelConfig:
    """Machine switches: the variant plus the orthogonal PCID, LA57 and KASLR switches."""

    variant: str = "linux"
    pcid: bool = True
    la57: bool = False
    kaslr: bool = True
    seed: int = 0
    ncpus: int = 2
    ram: int = 4 * GiB
    pge: bool = True
    # Build and boot choices that distributions make differently (docs/real-kernel.md):
    # emulate: a USR ro NX page; xonly and none: no PTE at all. None: the era's Linux default --
    # xonly since 5.3 (CONFIG_LEGACY_VSYSCALL_XONLY, commit 625b7b7f79c6), emulate before (the 4.15 era)
    vsyscall: str | None = None
    cea_random: bool = True  # per-CPU entry areas at random slots under KASLR (6.2+; 6.1: False)
    kaslr_image_size: bool | None = None  # built with RANDOMIZE_BASE (1 GiB image window); None: = kaslr
    fixmap_pages: int = DEFAULT_FIXMAP_PAGES  # __end_of_permanent_fixed_addresses (649 Fedora 4.18, 646 Debian 6.1)
    image: ImageSizes | None = None  # the kernel image's section sizes; None: the model's defaults
    # pti=auto: isolation only on a CPU with X86_BUG_CPU_MELTDOWN (Intel here; AMD is not affected),
    # and the kernel image global when pti_kernel_image_global_ok(): no PCID, pti=auto, not K8
    # (every AMD family >= 0xf is K8), no RANDSTRUCT (facts linux-kpti.md §3.3). pti=on: always
    # isolate, never a global image.
    pti: str = "auto"
    vendor: str = "intel"  # intel: the entry area maps the debug store (percpu_setup_debug_store())
    # A real machine's boot-time choices instead of the seed's (kaiser compare aligns to a dump):
    bases: Bases | None = None  # page_offset_base, vmalloc_base, vmemmap_base, _text
    espfix_page: int | None = None  # espfix_64.c page_random (0..2047): where the espfix page lands
    cea_slots: tuple[int, ...] | None = None  # per-CPU entry-area slot of each CPU (6.2+ randomizes them)
    tss_phys: tuple[int, ...] | None = None  # physical address of each CPU's cpu_tss_rw page
    # A CPU with LASS (CPUID.(EAX=07H,ECX=1):EAX[6]); the kernel sets CR4.LASS unless the
    # vsyscall mode forbids it (`lass_active`). The `lass` variant is such a CPU whatever this says.
    lass: bool = False
    # A CPU with INVLPGB (AMD Zen 3+, CPUID 8000_0008h EBX[3]): broadcast TLB flushes, which Linux
    # uses only without PTI and with PCID (`invlpgb_active`).
    invlpgb: bool = False

    def __post_init__(self) -> None:
        era = get_variant(self.variant).era
        if self.vsyscall is None:
            object.__setattr__(self, "vsyscall", "emulate" if era == "4.15" else "xonly")
        if self.vsyscall not in VSYSCALL_MODES:
            raise ValueError(f"vsyscall={self.vsyscall!r} must be one of {', '.join(VSYSCALL_MODES)}")
        if not 1 <= self.ncpus <= 64:
            raise ValueError(f"ncpus={self.ncpus} must be 1..64")
        if self.ram < 256 * MiB or self.ram % (2 * MiB):
            raise ValueError(f"ram={self.ram:#x} must be a multiple of 2 MiB and at least 256 MiB")
        if self.pti not in PTI_MODES:
            raise ValueError(f"pti={self.pti!r} must be one of {', '.join(PTI_MODES)} (nopti: --variant nopti)")
        if self.vendor not in VENDORS:
            raise ValueError(f"vendor={self.vendor!r} must be one of {', '.join(VENDORS)}")
        if self.espfix_page is not None and not 0 <= self.espfix_page < ESPFIX_PAGE_SPACE:
            raise ValueError(f"espfix_page={self.espfix_page} must be 0..{ESPFIX_PAGE_SPACE - 1}")
        for name in ("cea_slots", "tss_phys"):
            value = getattr(self, name)
            if value is not None and (len(value) != self.ncpus or len(set(value)) != len(value)):
                raise ValueError(f"{name} needs {self.ncpus} distinct values (one per CPU), not {value}")
        if self.tss_phys is not None and any(pa % PAGE_SIZE or not PAGE_SIZE <= pa < self.ram for pa in self.tss_phys):
            raise ValueError(f"tss_phys {self.tss_phys}: each must be a page inside RAM above page 0")

    @property
    def lass_active(self) -> bool:
        """Does the kernel set CR4.LASS? Linux's LASS series (6.19) clears X86_FEATURE_LASS when
        vsyscall=emulate: emulation reads the vsyscall page (0xffffffffff600000, upper half)
        from user mode, which LASS forbids. With xonly (and none) LASS stays on, and a user call
        into the vsyscall page is then a #GP(0) from the LASS check, not a #PF, so the XONLY
        emulation moves into the #GP handler (facts/successors.md, LASS)."""
        return (self.lass or get_variant(self.variant).lass_cpu) and self.vsyscall != "emulate"

    @property
    def fred_active(self) -> bool:
        """Does the kernel deliver events by FRED? Only the `fred` variant's hardware has it, and
        pti=on turns it off (`booted_variant`: pti_check_boottime_disable(), 932d922285ef)."""
        booted = booted_variant(get_variant(self.variant), pti=self.pti, vendor=self.vendor)
        return booted.delivery is Delivery.FRED

    @property
    def invlpgb_active(self) -> bool:
        """Does the kernel flush other CPUs' TLBs with INVLPGB? Not under PTI: its per-CPU
        user_pcid_flush_mask cannot name INVLPGB's global ASIDs, so pti_check_boottime_disable()
        clears X86_FEATURE_INVLPGB when it enables PTI (94a17f2dc90b, "x86/mm: Disable INVLPGB when
        PTI is enabled", Jun 2025); nor with PCID off (`nopcid` also disables INVLPGB, which needs
        global PCIDs: Rik van Riel's INVLPGB series, "x86/mm: add noinvlpgb commandline option")."""
        return self.invlpgb and self.pcid and not self.isolates

    @property
    def isolates(self) -> bool:
        """Does the kernel isolate? An isolating variant under pti=auto only on a Meltdown-affected
        CPU: pti_check_boottime_disable() leaves PTI off without X86_BUG_CPU_MELTDOWN (AMD)."""
        return booted_variant(get_variant(self.variant), pti=self.pti, vendor=self.vendor).isolating


@dataclass
class Cpu:
    """Per-CPU kernel objects: where its entry area and per-CPU data live."""

    index: int
    cea: int  # virtual base of its struct cpu_entry_area
    percpu_pa: int  # physical base of its per-CPU area (direct-mapped)
    percpu_va: int

    cea_layout: CeaLayout

    @property
    def tss_va(self) -> int:
        """`cpu_tss_rw` at its per-CPU (direct-map) address: what 4.20+ SYSCALL entry writes."""
        return self.percpu_va + PERCPU_TSS * PAGE_SIZE

    @property
    def entry_stack(self) -> int:
        """The top word of the entry stack in the entry area (4.15's RSP_SCRATCH)."""
        return self.cea + self.cea_layout.offset("entry stack") + PAGE_SIZE - 8


@dataclass
class PgdPair:
    """An mm's top-level tables: the kernel PGD and, under isolation, the user PGD at +4 KiB."""

    kernel_pt: PageTable
    user_pt: PageTable | None

    @property
    def kernel_pgd(self) -> int:
        return self.kernel_pt.root

    @property
    def user_pgd(self) -> int | None:
        return self.user_pt.root if self.user_pt else None


@dataclass
class Task:
    """A process: its mm and its kernel stack in vmalloc space."""

    pid: int
    mm: Mm
    stack: int  # lowest address of the THREAD_SIZE stack


@dataclass
class Kernel:
    """A booted kernel. Build with `Kernel.boot(KernelConfig(...))`."""

    config: KernelConfig
    variant: Variant
    layout: Layout
    mem: PhysicalMemory
    init: PgdPair
    cpus: list[Cpu]
    tasks: dict[int, Task] = field(default_factory=dict)
    _frame_refs: dict[int, int] = field(default_factory=dict)
    _vmalloc_next: int = 0
    _free_stacks: list[int] = field(default_factory=list)
    _next_pid: int = 1
    baseline_frames: int = 0
    asi: Asi | None = None  # the asi variant's nonsensitive PGD and pageblocks (kaiser.linux.asi)

    # ---- boot ------------------------------------------------------------------------------
    @classmethod
    def boot(cls, config: KernelConfig | None = None, *, variant: Variant | None = None) -> Kernel:
        """`variant` boots a design that is not in the registry (e.g. a deliberately broken one);
        by default the registry entry `config.variant` is used."""
        config = config or KernelConfig()
        variant = booted_variant(variant or get_variant(config.variant), pti=config.pti, vendor=config.vendor)
        layout = make_layout(
            config.la57,
            config.kaslr,
            config.seed,
            config.ram,
            era=variant.era,  # type: ignore[arg-type]
            fixmap_pages=config.fixmap_pages,
            kaslr_image_size=config.kaslr_image_size,
            image=config.image,
            bases=config.bases,
        )
        mem = PhysicalMemory(config.ram)
        mode = mode_for(config.la57)
        image_span = layout.kernel_end - layout.kernel_base
        mem.reserve(layout.kernel_phys, -(-image_span // (2 * MiB)) * 2 * MiB, FrameKind.DATA, "kernel image")
        for cpu, tss in enumerate(config.tss_phys or ()):  # a real machine's per-CPU areas
            mem.reserve(tss - PERCPU_TSS * PAGE_SIZE, PERCPU_PAGES * PAGE_SIZE, FrameKind.DATA, f"percpu{cpu}")
        init = cls._alloc_pgd_pair(mem, mode, variant, "init_mm")
        kernel = cls(config, variant, layout, mem, init, [])
        kernel._vmalloc_next = layout.vmalloc_base + 2 * MiB
        kernel._map_kernel()
        if variant.isolating:
            kernel._pti_init()
        kernel._preallocate_stack_tables()
        if variant.asi:
            assert init.user_pt is not None
            percpu = tuple(cpu.percpu_va for cpu in kernel.cpus)
            kernel.asi = Asi.global_init(init.kernel_pt, init.user_pt, layout, percpu)
        kernel.baseline_frames = mem.frames_of(FrameKind.PAGE_TABLE)  # stats() would count tags too: 1/3 of a boot
        return kernel

    @staticmethod
    def _alloc_pgd_pair(mem: PhysicalMemory, mode: PagingMode, variant: Variant, tag: str) -> PgdPair:
        if variant.isolating:
            # PGD_ALLOCATION_ORDER 1: an 8 KiB, 8 KiB-aligned pair (asm/pgalloc.h, §3.1).
            kpgd = mem.alloc(FrameKind.PAGE_TABLE, tag, count=2, align=2)
            return PgdPair(
                PageTable(mem, mode, tag=tag, root=kpgd, table_flags=TABLE_FLAGS),
                PageTable(mem, mode, tag=f"{tag} pti", root=pti.kernel_to_user_pgd(kpgd), table_flags=TABLE_FLAGS),
            )
        return PgdPair(PageTable(mem, mode, tag=tag, table_flags=TABLE_FLAGS), None)

    # ---- global-bit policy -----------------------------------------------------------------
    def _global(self, shared: bool) -> int:
        """G for a kernel mapping: everywhere without isolation, nowhere under the RFC and 4.15,
        only on what the user tables also map under the review's policy (§2 notes, §3.3, §7.3)."""
        if not self.config.pge:
            return 0
        policy = self.variant.global_policy
        if policy is GlobalPolicy.ALL_KERNEL:
            return int(PTE.G)
        if policy is GlobalPolicy.NONE:
            return 0
        return int(PTE.G) if shared else 0

    def kernel_text_shared(self) -> bool:
        """Is the kernel text mapped in the user tables? Modern PTI clones it only when
        `pti_kernel_image_global_ok()`: no PCID and pti=auto (§3.3); two-pgd's shared top-level
        entry holds the whole image."""
        if self.variant.maps(Part.FIXMAP_PGD):
            return True
        return (
            self.variant.global_policy is GlobalPolicy.SHARED_AND_TEXT_WITHOUT_PCID
            and self.variant.maps(Part.KERNEL_TEXT)
            and not self.config.pcid
            and self.config.pti == "auto"  # pti=on: the more secure choice, no global image
            and self.config.vendor == "intel"  # X86_FEATURE_K8: never on AMD
        )

    # ---- kernel mappings (init_mm) ---------------------------------------------------------
    def _map_kernel(self) -> None:
        lay, kpt, mem = self.layout, self.init.kernel_pt, self.mem
        two_pgd = self.variant.maps(Part.FIXMAP_PGD)
        # Direct map of all RAM, largest pages first (arch/x86/mm/init_64.c), PAGE_KERNEL.
        kpt.map(lay.page_offset_base, 0, self.config.ram, int(PAGE_KERNEL & ~PTE.G) | self._global(False))
        # Kernel image sections with their final permissions (mark_rodata_ro()).
        text_shared = self.kernel_text_shared()
        for sec in lay.sections:
            shared = two_pgd or (sec.name in ("text", "rodata") and text_shared)
            flags = (sec.prot & ~int(PTE.G)) | self._global(shared)
            size = -(-sec.size // PAGE_SIZE) * PAGE_SIZE
            pa = lay.kernel_phys + (sec.start - lay.kernel_base)
            if sec.name == "rodata" and text_shared and not two_pgd:
                # pti_clone_kernel_text(): pti_clone_pgtable() sets G on the large PMDs it clones, and
                # set_memory_global() covers _text.._etext only, so rodata's 4K tail stays non-global
                # (pti.c; the real 6.1 pti=auto dump shows 8M GLB pmd + 940K pte without GLB)
                big = size // (2 * MiB) * (2 * MiB)
                if big:
                    kpt.map(sec.start, pa, big, flags)
                if size > big:
                    kpt.map(sec.start + big, pa + big, size - big, flags & ~int(PTE.G))
                continue
            kpt.map(sec.start, pa, size, flags)
        # idt_table (__page_aligned_bss) is made read-only once the CEA alias exists
        # (idt_setup_apic_and_irq_gates(): set_memory_ro(idt_table, 1), arch/x86/kernel/idt.c).
        kpt.protect(self.idt_va, PAGE_SIZE, int(PAGE_KERNEL_RO & ~PTE.G) | self._global(two_pgd))
        # G on entry text is set by the clone itself (pti_clone_pgtable sets it on the kernel PMD; the
        # RFC's private copies carry it in the user copy only), never on text the user tables lack.
        # vmemmap: struct page array for RAM (64 bytes a page), 2 MiB pages.
        vmemmap_size = -(-(self.config.ram // PAGE_SIZE * 64) // (2 * MiB)) * 2 * MiB
        backing = mem.alloc(FrameKind.DATA, "vmemmap", count=vmemmap_size // PAGE_SIZE, align=512)
        kpt.map(lay.vmemmap_base, backing, vmemmap_size, int(PAGE_KERNEL & ~PTE.G) | self._global(False))
        # vmalloc: the top-level entries are populated now so every mm shares them
        # (preallocate_vmalloc_pages(), arch/x86/mm/init_64.c).
        kpt.entry_slot(lay.vmalloc_base, 1, create=True)
        # Per-CPU areas (direct-mapped) and the cpu_entry_area that aliases parts of them.
        self._map_cpu_entry_area()
        self._map_espfix(two_pgd)
        # Fixmap: two I/O pages (indexes 515 and 514: 0xffffffffff5fc000 on Debian 6.1), and, in
        # emulate mode only, the vsyscall page (fixmap slot 511) as USR ro NX (map_vsyscall()).
        fix_pa = mem.alloc(FrameKind.DATA, "fixmap", count=2)
        kpt.map(
            FIXADDR_TOP - FIX_IO_PAGES * PAGE_SIZE,
            fix_pa,
            2 * PAGE_SIZE,
            int(PTE.RW | PTE.PWT | PTE.PCD | PTE.NX | PTE.A | PTE.D) | self._global(two_pgd),
        )
        if self.config.vsyscall == "emulate":
            vsys_pa = lay.kernel_phys + (lay.section("rodata").start - lay.kernel_base)  # __vsyscall_page
            kpt.map(VSYSCALL_ADDR, vsys_pa, PAGE_SIZE, PAGE_KERNEL_VVAR & ~int(PTE.G) | self._global(two_pgd))
            pti.set_vsyscall_pgtable_user_bits(kpt)
        # Modules: one loaded module, text RX and data RW NX.
        mod_pa = mem.alloc(FrameKind.DATA, "modules", count=8)
        kpt.map(lay.modules_vaddr, mod_pa, 4 * PAGE_SIZE, int(PAGE_KERNEL_RX & ~PTE.G) | self._global(two_pgd))
        kpt.map(
            lay.modules_vaddr + 4 * PAGE_SIZE,
            mod_pa + 4 * PAGE_SIZE,
            4 * PAGE_SIZE,
            int(PAGE_KERNEL & ~PTE.G) | self._global(two_pgd),
        )

    def _map_espfix(self, two_pgd: bool) -> None:
        """`init_espfix_bsp()` + `init_espfix_ap(0)` (arch/x86/kernel/espfix_64.c): one read-only
        4K page of ministacks (one per 64 CPUs; we boot at most 64), mapped 65,536 times so that
        any 16-bit SP lands in it: the page at every 16th slot of one PTE page (ESPFIX_PTE_CLONES,
        a 64K stride), that PTE page under all 512 entries of one PMD page (ESPFIX_PMD_CLONES), that
        PMD page under 4 consecutive PUD entries (ESPFIX_PUD_CLONES). The upper entries carry
        PGTABLE_PROT = (_KERNPG_TABLE & ~RW) | NX. page_random and slot_random are drawn at boot,
        even with nokaslr (the real dumps show four different places in four boots)."""
        lay, kpt, mem = self.layout, self.init.kernel_pt, self.mem
        rng = random.Random(self.config.seed ^ 0xE5F1)
        slot_random = rng.randrange(ESPFIX_STACKS_PER_PAGE)
        page_random = rng.randrange(ESPFIX_PAGE_SPACE)
        if self.config.espfix_page is not None:
            page_random = self.config.espfix_page
        addr = (page_random << 12) + slot_random * ESPFIX_STACK_SIZE  # espfix_base_addr(cpu 0)
        addr = (addr & 0xFFFF) | ((addr & ~0xFFFF) << 16)
        self.espfix_va = lay.espfix_base + addr
        shared = self.variant.maps(Part.ESPFIX) or (two_pgd and self.config.la57)  # 5-level slot 511
        leaf = int(PAGE_KERNEL_RO & ~PTE.G) | self._global(shared)
        upper = int((KERNPG_TABLE & ~PTE.RW) | PTE.NX)
        depth = len(kpt.levels) - 3  # the PUD level
        pud_slot = kpt.entry_slot(self.espfix_va, depth, create=True)  # espfix_pud_page
        assert pud_slot is not None
        pmd_page = mem.alloc(FrameKind.PAGE_TABLE, "espfix pmd")
        pte_page = mem.alloc(FrameKind.PAGE_TABLE, "espfix pte")
        stack_page = mem.alloc(FrameKind.DATA, "espfix")
        for n in range(ESPFIX_PUD_CLONES):
            kpt.set_entry(pud_slot + 8 * n, pmd_page | upper, depth)
        for n in range(ESPFIX_PMD_CLONES):
            kpt.set_entry(pmd_page + 8 * n, pte_page | upper, depth + 1)
        first = kpt.levels[-1].index(self.espfix_va)
        for n in range(ESPFIX_PTE_CLONES):
            kpt.set_entry(pte_page + 8 * (first + n * 16), stack_page | leaf, depth + 2)

    def _cea_slot_order(self) -> list[int]:
        """Per-CPU entry-area slots: CPU n at slot n before 6.2 and without KASLR; a random unique
        slot per CPU with KASLR since 6.2 (97e3d26b5e5f, §1.5). Ours and the 4.15 era keep fixed slots."""
        n = self.config.ncpus
        if self.config.cea_slots is not None:
            cea_size = self.cea_layout.pages * PAGE_SIZE
            if max(self.config.cea_slots) >= ((1 << 39) - PAGE_SIZE) // cea_size:
                raise ValueError(f"cea_slots {self.config.cea_slots}: past the end of the entry area")
            return list(self.config.cea_slots)
        modern = self.variant.era == "modern" and self.config.cea_random
        if not (self.config.kaslr and modern and self.variant.entry is not Entry.FIXED_CEA):
            return list(range(n))
        cea_size = self.cea_layout.pages * PAGE_SIZE
        max_cea = ((1 << 39) - PAGE_SIZE) // cea_size
        return random.Random(self.config.seed ^ 0xCEA).sample(range(max_cea), n)

    @property
    def idt_va(self) -> int:
        """`idt_table`: the first page of .bss (`__page_aligned_bss`), or of .data in an image
        without .bss."""
        bss = self.layout.section("bss")
        return bss.start if bss.size >= PAGE_SIZE else self.layout.section("data").start

    @property
    def cea_layout(self) -> CeaLayout:
        """This kernel's `struct cpu_entry_area` (kaiser.linux.cea): by era, with a stub page
        when the variant's entry runs from the area."""
        return cea_layout(
            self.variant.era, stub=self.variant.entry is not Entry.ENTRY_TEXT, debug_store=self.config.vendor == "intel"
        )

    def _map_cpu_entry_area(self) -> None:
        """`setup_cpu_entry_areas()`: the shared RO IDT page, then each CPU's area piece by piece
        (aliases of its per-CPU pages; the stub page aliases the first page of entry text)."""
        lay, kpt, mem = self.layout, self.init.kernel_pt, self.mem
        g = self._global(True)
        flags = {
            Kind.RO: int(PAGE_KERNEL_RO & ~PTE.G) | g,
            Kind.RW: int(PAGE_KERNEL & ~PTE.G) | g,
            Kind.STUB: int(PAGE_KERNEL_RX & ~PTE.G) | g,
        }
        cea = self.cea_layout
        base = lay.cpu_entry_area_base
        idt_pa = lay.kernel_phys + (self.idt_va - lay.kernel_base)
        kpt.map(base, idt_pa, PAGE_SIZE, flags[Kind.RO])  # CPU_ENTRY_AREA_RO_IDT
        trampoline_pa = lay.kernel_phys + (lay.entry_text[0] - lay.kernel_base)
        leaf_depth = len(kpt.levels) - 1
        for index, slot in enumerate(self._cea_slot_order()):
            if self.config.tss_phys is not None:  # reserved at boot
                percpu_pa = self.config.tss_phys[index] - PERCPU_TSS * PAGE_SIZE
            else:
                percpu_pa = mem.alloc(FrameKind.DATA, f"percpu{index}", count=PERCPU_PAGES)
            cpu = Cpu(index, base + PAGE_SIZE + slot * cea.pages * PAGE_SIZE, percpu_pa,
                      lay.page_offset_base + percpu_pa, cea)  # fmt: skip
            self.cpus.append(cpu)
            for piece in cea.pieces:
                va = cpu.cea + piece.page * PAGE_SIZE
                if piece.kind is Kind.STUB:
                    kpt.map(va, trampoline_pa, PAGE_SIZE, flags[Kind.STUB])
                elif piece.kind is Kind.NONE:  # PTEs that exist but are not present
                    for page in range(piece.pages):
                        slot_pa = kpt.entry_slot(va + page * PAGE_SIZE, leaf_depth, create=True)
                        assert slot_pa is not None
                        kpt.set_entry(slot_pa, PAGE_NONE, leaf_depth)
                elif piece.kind is not Kind.GUARD:
                    assert piece.backing is not None
                    kpt.map(va, percpu_pa + piece.backing * PAGE_SIZE, piece.pages * PAGE_SIZE, flags[piece.kind])

    # ---- PTI: the user tables' kernel half ---------------------------------------------------
    def pti_scope(self) -> pti.PtiScope:
        """This kernel as PTI's parts see it (kaiser.linux.pti.PtiScope): init_mm's pair, the
        layout, each CPU's entry and per-CPU areas, the task stacks, the boot choices."""
        assert self.init.user_pt is not None, "no user tables: the variant does not isolate"
        pages = self.cea_layout.pages
        return pti.PtiScope(
            kernel_pt=self.init.kernel_pt,
            user_pt=self.init.user_pt,
            layout=self.layout,
            cpus=tuple(pti.PtiCpu(c.cea, pages, c.percpu_pa, c.percpu_va, c.tss_va) for c in self.cpus),
            task_stacks=tuple((t.stack, t.stack + THREAD_SIZE) for t in self.tasks.values()),
            vsyscall_emulate=self.config.vsyscall == "emulate",
            kernel_text_shared=self.kernel_text_shared(),
            global_bit=self._global(True),
        )

    def _pti_init(self) -> None:
        """`pti_init()` + `pti_finalize()`: the variant's clones, each by its part's step in
        kaiser.linux.pti.PARTS (§3.3; §7.1 for the private RFC copies)."""
        pti.pti_init(self.pti_scope(), self.variant.clones)

    def _preallocate_stack_tables(self) -> None:
        """Tables for the first 2 MiB of task stacks exist from boot (in both trees when stacks are
        mapped to user), so process churn does not change the kernel's table count."""
        leaf = len(self.init.kernel_pt.levels) - 1
        self.init.kernel_pt.entry_slot(self._vmalloc_next, leaf, create=True)
        if self.variant.maps(Part.TASK_STACKS):
            assert self.init.user_pt is not None
            self.init.user_pt.entry_slot(self._vmalloc_next, leaf, create=True)

    def user_allowed_ranges(self) -> list[tuple[int, int, str]]:
        """Kernel-half ranges the variant may map in user tables: (start, end, part name), from
        each clone's part in kaiser.linux.pti.PARTS; none without isolation."""
        if self.init.user_pt is None:
            return []
        out = pti.user_allowed_ranges(self.pti_scope(), self.variant.clones)
        if self.asi is not None:
            out += self.asi.allowed_ranges()
        return out

    # ---- processes -------------------------------------------------------------------------
    @property
    def user_top(self) -> int:
        return self.layout.user_end - PAGE_SIZE  # TASK_SIZE_MAX leaves a guard page (§1.2)

    def new_pgd(self, mm: Mm) -> PgdPair:
        """`pgd_alloc()`: a PGD (pair) whose kernel halves are copied from init_mm (clone_pgd_range)."""
        pair = self._alloc_pgd_pair(self.mem, self.init.kernel_pt.mode, self.variant, f"pid{mm.pid}")
        for index in range(256, 512):
            pair.kernel_pt.set_entry(
                pair.kernel_pgd + 8 * index, self.mem.read_u64(self.init.kernel_pgd + 8 * index), 0
            )
            if pair.user_pt is not None:
                assert self.init.user_pgd is not None
                pair.user_pt.set_entry(
                    pair.user_pt.root + 8 * index, self.mem.read_u64(self.init.user_pgd + 8 * index), 0
                )
        if pair.user_pt is not None and self.variant.asi:
            apt = pair.user_pt
            pair.kernel_pt.root_hook = lambda index, value: asi_set_user_pgtbl(apt, index, value)
        elif pair.user_pt is not None:
            kpt, upt = pair.kernel_pt, pair.user_pt
            nx = self.variant.kernel_copy_marks_user_nx
            kpt.root_hook = lambda index, value: pti.pti_set_user_pgtbl(kpt, upt, index, value, nx=nx)
        return pair

    def free_pgd(self, mm: Mm) -> None:
        """`pgd_free()` after the user half was emptied: free the PGD (pair) and an LDT alias."""
        if mm.ldt_pages:
            self._unmap_ldt(mm)
        for index in range(256):
            if self.mem.read_u64(mm.pgd.kernel_pgd + 8 * index):
                raise AssertionError(f"pid {mm.pid}: user PGD slot {index} still populated at exit")
        self.mem.free(mm.pgd.kernel_pgd)
        if mm.pgd.user_pt is not None:
            self.mem.free(mm.pgd.user_pt.root)

    def alloc_kernel_pages(self, count: int, tag: str, *, sensitive: bool = False) -> int:
        """A kernel allocation of `count` contiguous frames (GFP_KERNEL; `sensitive`:
        __GFP_SENSITIVE): under asi, nonsensitive ones come from pageblocks the ASI direct map
        holds (kaiser.linux.asi); otherwise plain frames. Returns the first frame."""
        if self.asi is not None:
            return self.asi.alloc(count, tag, sensitive=sensitive)
        return self.mem.alloc(FrameKind.DATA, tag, count=count)

    def free_kernel_pages(self, pa: int, count: int) -> None:
        """Give back what `alloc_kernel_pages` returned."""
        if self.asi is not None:
            self.asi.free(pa, count)
            return
        for i in range(count):
            self.mem.free(pa + i * PAGE_SIZE)

    def alloc_user_frames(self, pid: int, count: int) -> int:
        """`count` contiguous fresh user frames, each with one reference; returns the first."""
        pa = self.mem.alloc(FrameKind.DATA, f"user pid{pid}", count=count)
        for i in range(count):
            self._frame_refs[pa + i * PAGE_SIZE] = 1
        return pa

    def get_user_frame(self, pa: int) -> None:
        self._frame_refs[pa] += 1

    def put_user_frame(self, pa: int) -> None:
        self._frame_refs[pa] -= 1
        if not self._frame_refs[pa]:
            del self._frame_refs[pa]
            self.mem.free(pa)

    def frame_shared(self, pa: int) -> bool:
        return self._frame_refs.get(pa, 0) > 1

    def _alloc_stack(self, pid: int) -> int:
        """A vmalloc'd THREAD_SIZE stack with a guard page below (CONFIG_VMAP_STACK)."""
        if self._free_stacks:
            va = self._free_stacks.pop()
        else:
            va = self._vmalloc_next + PAGE_SIZE
            self._vmalloc_next = va + THREAD_SIZE
        pa = self.mem.alloc(FrameKind.DATA, f"stack pid{pid}", count=THREAD_SIZE // PAGE_SIZE)
        self.init.kernel_pt.map(
            va, pa, THREAD_SIZE, int(PAGE_KERNEL & ~PTE.G) | self._global(False), page_size=PAGE_SIZE
        )
        if self.variant.maps(Part.TASK_STACKS):
            assert self.init.user_pt is not None
            pti.kaiser_add_mapping(self.init.kernel_pt, self.init.user_pt, va, THREAD_SIZE)
        return va

    def _free_stack(self, va: int) -> None:
        kpt = self.init.kernel_pt
        for leaf in list(kpt.leaves(va, va + THREAD_SIZE)):
            self.mem.free(leaf.pa)
        leaf_depth = len(kpt.levels) - 1
        for page in range(va, va + THREAD_SIZE, PAGE_SIZE):  # vunmap keeps the tables
            slot = kpt.entry_slot(page, leaf_depth)
            assert slot is not None
            kpt.set_entry(slot, 0, leaf_depth)
        if self.variant.maps(Part.TASK_STACKS):
            assert self.init.user_pt is not None
            pti.kaiser_remove_mapping(self.init.user_pt, va, THREAD_SIZE)
        self._free_stacks.append(va)

    def spawn(self, image: ProgramImage | None = None) -> Task:
        """A new process running `image` (like fork + exec from init)."""
        pid = self._next_pid
        self._next_pid += 1
        mm = Mm(self, pid)
        mm.exec(image or ProgramImage())
        task = Task(pid, mm, self._alloc_stack(pid))
        self.tasks[pid] = task
        return task

    def fork(self, parent: Task) -> Task:
        pid = self._next_pid
        self._next_pid += 1
        task = Task(pid, parent.mm.fork(pid), self._alloc_stack(pid))
        self.tasks[pid] = task
        return task

    def exit(self, task: Task) -> None:
        task.mm.exit()
        self._free_stack(task.stack)
        del self.tasks[task.pid]

    # ---- LDT -----------------------------------------------------------------------------------
    def map_ldt(self, mm: Mm, entries: int) -> None:
        """`alloc_ldt_struct()` + `map_ldt_struct()`: an LDT of `entries` descriptors, its pages
        aliased -- only under isolation (map_ldt_struct() returns early without X86_FEATURE_PTI) --
        at the LDT slot, ro and not global, in this mm's own tables, and the whole top-level entry
        shared with its user PGD (ldt.c, §3.3, §7.5). A bigger LDT replaces a smaller one."""
        if not 1 <= entries <= LDT_ENTRIES:
            raise ValueError(f"an LDT holds 1..{LDT_ENTRIES} entries, not {entries}")
        if entries <= mm.ldt_entries:
            return
        if mm.ldt_entries:
            self._unmap_ldt(mm)
        mm.ldt_entries = entries
        pages = mm.ldt_pages
        pa = mm.ldt_pa = self.mem.alloc(FrameKind.DATA, f"ldt pid{mm.pid}", count=pages)
        if not self.variant.isolating:
            return
        kpt = mm.pgd.kernel_pt
        kpt.map(self.layout.ldt_base, pa, pages * PAGE_SIZE, int(PAGE_KERNEL_RO & ~PTE.G), page_size=PAGE_SIZE)
        if mm.pgd.user_pt is not None and self.variant.maps(Part.LDT):
            pti.pti_clone_pgd(kpt, mm.pgd.user_pt, self.layout.ldt_base)

    def _unmap_ldt(self, mm: Mm) -> None:
        for i in range(mm.ldt_pages):
            self.mem.free(mm.ldt_pa + i * PAGE_SIZE)
        if self.variant.isolating:
            kpt = mm.pgd.kernel_pt
            kpt.unmap(self.layout.ldt_base, mm.ldt_pages * PAGE_SIZE)  # free_ldt_pgtables()
            if mm.pgd.user_pt is not None:
                index = kpt.levels[0].index(self.layout.ldt_base)
                mm.pgd.user_pt.set_entry(mm.pgd.user_pt.root + 8 * index, 0, 0)
        mm.ldt_pa = mm.ldt_entries = 0

    # ---- CR3 -----------------------------------------------------------------------------------
    def cr3_pair(self, task: Task, asid: int = 0) -> tuple[int, int | None]:
        """(kernel CR3, user CR3) of a task: with PCID kPCID = ASID+1 and the user PCID has bit 11;
        the user CR3 is the kernel one with bit 12 set (calling.h, §4.1, §5.1)."""
        pcide = self.config.pcid
        kpcid = asid + 1 if pcide else 0
        kcr3 = make_cr3(task.mm.pgd.kernel_pgd, pcid=kpcid, pcide=pcide)
        if task.mm.pgd.user_pt is None:
            return kcr3, None
        if self.variant.asi:  # the ASI CR3: bit 12 and the ASI PCID (kaiser.linux.asi)
            return kcr3, asi_cr3(kcr3, pcid=pcide)
        return kcr3, kcr3 | 1 << 12 | ((1 << 11) if pcide else 0)

    def cr4(self) -> int:
        return int(
            CR4.PAE
            | (CR4.PGE if self.config.pge else 0)
            | (CR4.PCIDE if self.config.pcid else 0)
            | CR4.SMEP
            | CR4.SMAP
            | (CR4.LA57 if self.config.la57 else 0)
            | (CR4.LASS if self.config.lass_active else 0)
        )
