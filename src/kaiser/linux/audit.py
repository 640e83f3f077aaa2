"""What user mode can reach: an audit of the kernel half of a user page-table dump.

Input is ptdump text (ours, or a real machine's `/sys/kernel/debug/page_tables/current_user`,
facts/linux-kpti.md §6) or a booted model. Every *present* kernel-half range is classified by the
region it lies in (`CLASSES`), and checked against a `Policy` -- which classes the variant may map
into user tables (§3.3, §3.6, §7), where `_PAGE_GLOBAL` is acceptable -- plus three rules that hold
for every variant: no W+X mapping (the boot-time W+X check, §6.1), no USR bit on a kernel-half
leaf except the vsyscall page (§3.3), no global page in a class the policy keeps non-global.

Two ways to classify:

* `audit_dump()` -- a dump alone. The layout is inferred from the dump itself (`infer_layout()`):
  paging mode from the addresses, era from the marker order (§6.4), the randomized bases (direct
  map, vmalloc, vmemmap) from where their markers are printed, and the fixed regions (LDT slot,
  cpu_entry_area, ESPfix, EFI, kernel image, modules, fixmap, vsyscall) from the architecture's
  constants (§1.2-§1.4), which KASLR does not move. Nothing comes from our KASLR seed. Heuristics,
  because a dump does not say what a page *is*:
    - entry text = the present High-Kernel-Mapping ranges when they are all executable and fit in
      `ENTRY_TEXT_MAX_PMDS` consecutive 2 MiB PMDs (PTI clones the PMDs that cover
      `__entry_text_start..__irqentry_text_end`, §3.3); more than that is `kernel_text`
      (`pti_clone_kernel_text()`, text and rodata) or `kernel_data` when writable;
    - a lone 4 KiB RW NX non-user `pte` in the direct map is a per-CPU TSS page (`cpu_tss_rw`,
      §3.3); a short RW NX run (at most `PERCPU_MAX`) is KAISER's per-CPU user-mapped section;
      anything larger is a leaked `direct_map` range. "Lone" means unmapped space on both sides:
      a page with present neighbours is part of a wholesale direct map (a kernel PGD, e.g. nopti's
      user view -- real 6.1 dumps have RW NX 4 KiB runs there, between ro and RW pages);
    - a THREAD_SIZE RW NX run in vmalloc space is a task stack (KAISER RFC, §7.1).
  Markers lag when one run crosses several of them (only one marker advances per break, §6.3);
  using fixed constants for everything that has one keeps the lag from mislabelling a range.
* `audit_model()` -- a booted kernel and one of its tasks: the user tables are dumped and then
  classified *exactly* with `Kernel.user_allowed_ranges()` and the model's layout, and a
  `TableDiff` of the user against the kernel tables is added.

`nopti` has no user tables and no policy of its own: its "user view" is the kernel PGD that stays
loaded in user mode, judged by `linux`'s policy, so it fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from kaiser.linux import pti
from kaiser.linux.kernel import Kernel, Task
from kaiser.linux.layout import (
    CPU_ENTRY_AREA_PGD,
    EFI_VA_END,
    EFI_VA_START,
    ESPFIX_PGD_ENTRY,
    FIXADDR_TOP,
    GUARD_HOLE_PGD_ENTRY,
    GUARD_HOLE_SLOTS,
    KERNEL_IMAGE_SIZE_FIXED,
    KERNEL_IMAGE_SIZE_KASLR,
    LDT_PGD_ENTRY_415_L4,
    LDT_PGD_ENTRY_415_L5,
    LDT_PGD_ENTRY_MODERN,
    MODULES_END,
    P4D_SIZE,
    PAGE_SIZE,
    PMD_SIZE,
    START_KERNEL_MAP,
    THREAD_SIZE,
    TOP,
    VMALLOC_SIZE_TB,
    VSYSCALL_ADDR,
    Layout,
    TiB,
)
from kaiser.linux.ptdump import ptdump
from kaiser.linux.ptdump_parse import MarkerLine, RangeLine, Record, SkipLine, dump_gaps, parse_ptdump, range_lines
from kaiser.linux.variants import get_variant
from kaiser.x86.bits import PTE, entry_phys
from kaiser.x86.hexrepr import hex_fields
from kaiser.x86.pagetable import PageTable

ENTRY_TEXT_MAX_PMDS: Final = 2  # entry text is tens of KiB: it can straddle one PMD boundary at most
PERCPU_MAX: Final = 64 << 10  # KAISER's user-mapped per-CPU section is a few pages per CPU (§7.1)

# ---- classes ---------------------------------------------------------------------------------
CLASS_DOC: Final[dict[str, str]] = {
    "entry_text": "entry/exit text PMD(s) inside kernel text (§3.3)",
    "cpu_entry_area": "per-CPU entry area: GDT, RO IDT, TSS, entry and IST stacks (§3.4)",
    "espfix": "%esp fixup stacks (§3.3)",
    "ldt": "per-mm LDT alias in the LDT remap slot (§3.3)",
    "vsyscall": "legacy vsyscall page, USR ro NX in emulate mode (§3.3)",
    "tss_percpu": "per-CPU cpu_tss_rw page in the direct map, 4K RW NX (4.20+, §3.3)",
    "kernel_text": "kernel text/rodata beyond the entry PMD (pti_clone_kernel_text, §3.3)",
    "task_stack": "a task's kernel stack in vmalloc space (KAISER RFC, §7.1)",
    "percpu": "KAISER's user-mapped per-CPU section (RFC, §7.1)",
    "kernel_data": "kernel .data/.bss",
    "direct_map": "direct map of physical memory (§3.5: never in user tables)",
    "asi_nonsensitive": "direct map of a nonsensitive pageblock (ASI's restricted tables, successors.md)",
    "vmalloc": "vmalloc/ioremap space (§3.5)",
    "vmemmap": "struct page array (§3.5)",
    "efi": "EFI runtime services (only in efi_pgd)",
    "modules": "module mapping space (§3.5)",
    "fixmap": "fixmap slots other than the vsyscall page (§3.5)",
    "kernel_image": "kernel image window outside _text.._end",
    "hole": "unused kernel address space",
}
CLASSES: Final = tuple(CLASS_DOC)

# A variant's allowed and global classes come from the policy registry: the union over its parts
# (kaiser.linux.pti.PARTS; Variant.audit_classes), and a model range takes its part's audit class.
# Not an independent table on purpose: the independent checks are the rules every variant must
# pass (W+X, USR, global-but-unshared) and `strict`, which holds every design to linux's parts.
# Designs whose user-mode boundary is not made of PTI's parts give theirs here -- (allowed classes,
# global classes) -- and the classes of the ranges they name beyond PTI's parts.
_OWN_POLICY: Final[dict[str, tuple[frozenset[str], frozenset[str]]]] = {
    # asi (kaiser.linux.asi): what asi_global_init maps plus the nonsensitive pageblocks. The model's
    # audit allows a direct-map piece only inside a nonsensitive pageblock or a CPU's per-CPU area
    # (its allowed ranges); a dump cannot tell those from sensitive memory, so a file's direct_map
    # class is allowed here and only the model proves sensitivity. G where PTI keeps it, and on
    # kernel text, which a dump cannot tell from the entry-text PMD (every image mapping is identical
    # in both tables, so a global one survives nothing it should not).
    "asi": (
        frozenset({"cpu_entry_area", "espfix", "vsyscall", "ldt", "entry_text", "kernel_text", "kernel_data"})
        | {"fixmap", "percpu", "vmalloc", "vmemmap", "task_stack", "asi_nonsensitive", "direct_map"},
        frozenset({"cpu_entry_area", "espfix", "entry_text", "kernel_text", "vsyscall"}),
    ),
}
_RANGE_CLASS: Final[dict[str, str]] = {"asi_percpu": "percpu", "asi_nonsensitive": "asi_nonsensitive"}

# Variants whose user-mode tables draw a different boundary than PTI's: their strict policy is their
# own, since Linux's PTI list does not describe them (asi: sensitive vs nonsensitive memory).
_OWN_STRICT: Final = frozenset({"asi"})


@dataclass(frozen=True)
class Policy:
    """What a variant lets the user tables map: allowed classes and where GLB is acceptable.
    W+X and USR on a non-vsyscall kernel page are never allowed. `mode`: `POLICY_MODES`."""

    variant: str
    allowed: frozenset[str]
    global_ok: frozenset[str]
    note: str = ""
    mode: str = "variant"

    @property
    def label(self) -> str:
        """How findings and verdicts name the policy: `two-pgd`, or `two-pgd (strict)`."""
        return self.variant if self.mode == "variant" else f"{self.variant} (strict)"


# variant: the variant's own policy (its design's intent: two-pgd may share whole top-level
# entries). strict: that policy cut down to what today's Linux allows in user tables -- the `linux`
# variant's classes (§3.3) -- so no variant's design excuses a mapping Linux would not make,
# and the audit agrees with `kaiser attack meltdown` about what leaks.
POLICY_MODES: Final = ("strict", "variant")


def _classes(name: str, pcid: bool) -> tuple[frozenset[str], frozenset[str]]:
    """(allowed classes, global classes) of the variant `name` (`linux` adds kernel text without PCID)."""
    return _OWN_POLICY.get(name) or get_variant(name).audit_classes(pcid=pcid)


def _range_class(part: str) -> str | None:
    """The audit class of a model range named `part` where the layout's region cannot name it
    (None: the region's class)."""
    spec = pti.part_named(part)
    return spec.audit_class if spec is not None else _RANGE_CLASS.get(part)


def _range_name(part: str) -> str:
    """How a report names the allowed range of `part`."""
    spec = pti.part_named(part)
    return spec.report_name if spec is not None else _RANGE_CLASS.get(part, part)


def lass_policy(variant: str, mode: str = "variant") -> Policy:
    """The policy of a kernel PGD on a CPU with LASS active: every class, since no user-mode
    access to the upper half reaches the walk -- LASS faults it first, #GP(0) or #SS (SDM Vol. 3A
    "Linear-Address Pre-Processing"; successors.md) -- so nothing mapped there is reachable from
    user mode. The three rules every variant must pass (W+X, USR, global) still apply."""
    every = frozenset(CLASSES)
    note = "LASS: user-mode accesses to the upper half fault before paging; no kernel mapping is reachable"
    return Policy(variant, every, every, note, mode)


def policy_for(variant: str, *, pcid: bool = True, mode: str = "variant") -> Policy:
    """The policy of `variant` in `mode` (`POLICY_MODES`). `linux` allows `kernel_text` only
    without PCID (under pti=auto, `pti_kernel_image_global_ok()`, §3.3); `nopti` gets `linux`'s
    policy (it has none)."""
    get_variant(variant)  # UnknownVariant lists the names
    if mode not in POLICY_MODES:
        raise ValueError(f"unknown policy mode {mode!r}; known: {', '.join(POLICY_MODES)}")
    if get_variant(variant).lass_cpu:
        return lass_policy(variant, mode)
    name, note = variant, ""
    if not get_variant(variant).isolating:  # nopti, fred
        name, note = "linux", f"{variant} has no user tables: its kernel PGD is judged by linux's policy"
    allowed, glb = _classes(name, pcid)
    if name == "linux" and not pcid:
        note = note or "no PCID: kernel text may be cloned (pti=auto)"
    if mode == "strict" and name in _OWN_STRICT:
        note = f"strict: {variant}'s boundary is not PTI's; its own policy applies (no sensitive memory mapped)"
    elif mode == "strict" and name != "linux":
        linux_allowed, linux_glb = _classes("linux", pcid)
        allowed, glb = allowed & linux_allowed, glb & linux_glb
        note = f"strict: {variant}'s own policy, cut down to what today's Linux (the linux variant) allows"
    return Policy(variant, allowed, glb, note, mode)


# ---- results ---------------------------------------------------------------------------------
@hex_fields("start", "end")
@dataclass(frozen=True)
class Mapping:
    """One present kernel-half range of the user view, classified."""

    start: int
    end: int
    level: str
    flags: frozenset[str]
    klass: str
    allowed: bool
    lineno: int = 0
    allowed_by: str = ""  # model audits: the variant part whose range holds it

    @property
    def flag_text(self) -> str:
        return flag_text(self.flags)

    def describe(self) -> str:
        status = "allowed" if self.allowed else "NOT ALLOWED"
        return f"0x{self.start:016x}-0x{self.end:016x} {self.flag_text} {self.level}: {self.klass}, {status}"


@hex_fields("start", "end")
@dataclass(frozen=True)
class Finding:
    """Something the audit calls out. `breaks_policy` decides the exit status."""

    kind: str  # "not-allowed" | "w+x" | "user-accessible" | "global" | "global-unshared"
    start: int
    end: int
    klass: str
    message: str
    breaks_policy: bool = True

    def describe(self) -> str:
        verdict = "breaks the policy" if self.breaks_policy else "noted"
        return f"{self.kind} at 0x{self.start:016x}-0x{self.end:016x} ({self.klass}, {verdict}): {self.message}"


@hex_fields("start", "end")
@dataclass(frozen=True)
class DiffEntry:
    """A range where the user and kernel tables differ (flags as ptdump prints them + level)."""

    kind: str  # "flags-differ" | "user-only" | "kernel-only-user-half" | "user-half-differs"
    start: int
    end: int
    region: str
    kernel: str
    user: str

    def describe(self) -> str:
        return (
            f"{self.kind} at 0x{self.start:016x}-0x{self.end:016x} ({self.region}): "
            f"kernel tables {self.kernel or '-'}, user tables {self.user or '-'}"
        )


@hex_fields("left_out", "nx_only")
@dataclass(frozen=True)
class TableDiff:
    """User vs kernel tables of one process."""

    left_out: tuple[tuple[str, int, int], ...]  # kernel-half (region, ranges, bytes) only the kernel maps
    entries: tuple[DiffEntry, ...]
    nx_only: tuple[int, int]  # user-half (ranges, bytes) differing only by the kernel copy's NX (§3.2)


@hex_fields("regions", "gaps")
@dataclass(frozen=True)
class AuditReport:
    source: str
    policy: Policy
    view: str  # what was audited ("current_user", "current_kernel (nopti)", a file name)
    la57: bool
    regions: tuple[tuple[str, int, int], ...]  # the layout used: (class/region, start, end)
    mappings: tuple[Mapping, ...]
    findings: tuple[Finding, ...]
    diff: TableDiff | None = None
    notes: tuple[str, ...] = ()
    table_kind: str = ""  # dumps: what the dump looks like (`TABLE_KINDS`); "" for the model
    gaps: tuple[tuple[int, int, int], ...] = ()  # dumps: `dump_gaps` -- empty for a whole dump
    unseen: tuple[str, ...] = ()  # dumps: regions no line of the dump reaches

    @property
    def violations(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.breaks_policy)

    @property
    def exit_status(self) -> int:
        return 1 if self.violations else 0

    def describe(self) -> str:
        n = len(self.violations)
        verdict = f"FAIL, {n} finding(s) break the policy" if n else "PASS"
        return (
            f"{self.view} ({self.source}), policy {self.policy.variant}: {len(self.mappings)} kernel-half "
            f"range(s), {len(self.findings)} finding(s): {verdict}"
        )


def flag_text(flags: Iterable[str]) -> str:
    """`USR RW PSE GLB NX` in Linux's order; `ro`/`x` where RW/NX are absent."""
    names = set(flags)
    out = ["USR"] if "USR" in names else []
    out.append("RW" if "RW" in names else "ro")
    out += [n for n in ("PWT", "PCD", "PSE", "PAT", "GLB") if n in names]
    out.append("NX" if "NX" in names else "x")
    return " ".join(out)


# ---- the layout of a dump ----------------------------------------------------------------------
@dataclass(frozen=True)
class DumpLayout:
    """Regions of a dump as (class, start, end), sorted, covering the kernel half; how they were found."""

    la57: bool
    era: str
    regions: tuple[tuple[str, int, int], ...]
    notes: tuple[str, ...] = ()

    @property
    def user_end(self) -> int:
        return 1 << (56 if self.la57 else 47)

    def region_of(self, va: int) -> str:
        for name, lo, hi in self.regions:
            if lo <= va < hi:
                return name
        return "user" if va < self.user_end else "hole"


def _slot(entry: int, shift: int) -> int:
    return (entry << shift) % TOP


def _marker_positions(records: Sequence[Record]) -> dict[str, int]:
    """Where each marker is printed: the start of the first range line after it."""
    out: dict[str, int] = {}
    pending: list[str] = []
    for rec in records:
        if isinstance(rec, MarkerLine):
            pending.append(rec.name)
        elif isinstance(rec, RangeLine):
            for name in pending:
                out.setdefault(name, rec.start)
            pending = []
    return out


def infer_layout(records: Sequence[Record]) -> DumpLayout:
    """The layout of a dump, from its own addresses and markers (see the module docstring)."""
    lines = range_lines(records)
    la57 = any(0x0000800000000000 < r.start < 0xFFFF800000000000 for r in lines)
    shift = 48 if la57 else 39
    names = [r.name for r in records if isinstance(r, MarkerLine)]
    pos = _marker_positions(records)
    notes: list[str] = [f"{5 if la57 else 4}-level paging (from the addresses)"]
    era = "modern"
    if "LDT remap" in names:
        after = "Low Kernel Mapping" if la57 else "CPU entry Area"
        if after in names and names.index("LDT remap") > names.index(after):
            era = "4.15"
        notes.append(f"{era} layout (LDT remap marker order, §6.4)")
    else:
        notes.append("modern layout (no LDT remap marker)")
    guard = _slot(GUARD_HOLE_PGD_ENTRY, shift)
    guard_end = guard + (GUARD_HOLE_SLOTS << shift)
    cea = _slot(CPU_ENTRY_AREA_PGD, 39)
    espfix = _slot(ESPFIX_PGD_ENTRY, 39)
    if era == "modern":
        ldt = _slot(LDT_PGD_ENTRY_MODERN, shift)
    else:
        ldt = _slot(LDT_PGD_ENTRY_415_L5, 48) if la57 else _slot(LDT_PGD_ENTRY_415_L4, 39)
    ldt_end = ldt + (1 << shift)
    low_start = ldt_end if ldt == guard_end else guard_end
    # Modules: the largest MODULES_VADDR candidate not above where its marker is printed.
    modules = START_KERNEL_MAP + KERNEL_IMAGE_SIZE_KASLR
    if "Modules" in pos:
        modules = max(
            (c for c in (START_KERNEL_MAP + s for s in (KERNEL_IMAGE_SIZE_FIXED, KERNEL_IMAGE_SIZE_KASLR))
             if c <= pos["Modules"]),
            default=modules,
        )  # fmt: skip
    fixmap = pos.get("Fixmap Area", MODULES_END)
    if not MODULES_END <= fixmap <= VSYSCALL_ADDR:
        fixmap = MODULES_END
    regions: list[tuple[str, int, int]] = [("hole", guard, guard_end)]
    if era == "modern" or la57:
        regions.append(("ldt", ldt, ldt_end))
    low_end = cea
    vmalloc, vmemmap = pos.get("vmalloc() Area"), pos.get("Vmemmap")
    if vmalloc is not None and vmemmap is not None and vmemmap - vmalloc < VMALLOC_SIZE_TB[la57] * TiB:
        # Closer together than vmalloc's size: markers printed before pt_dump_init() set the runtime
        # bases (e.g. an early EFI dump, sample 02). Do not trust them.
        notes.append("vmalloc()/Vmemmap markers closer than VMALLOC_SIZE: ignored (printed before boot set them)")
        vmalloc = vmemmap = None
    if vmalloc is not None and low_start < vmalloc <= cea:
        regions.append(("direct_map", low_start, vmalloc))
        if vmemmap is not None and vmalloc <= vmemmap <= cea:
            regions += [("vmalloc", vmalloc, vmemmap), ("vmemmap", vmemmap, cea)]
        else:
            regions.append(("vmalloc", vmalloc, cea))
        notes.append(
            "vmalloc / vmemmap bases from their markers (printed at the first entry walked at or above "
            "the base, so possibly rounded up across empty space)"
        )
    else:
        regions.append(("direct_map", low_start, low_end))
        notes.append("no vmalloc() marker: everything below the CPU entry area is treated as direct map")
    regions.append(("cpu_entry_area", cea, cea + P4D_SIZE))
    if era == "4.15" and not la57:
        regions.append(("ldt", ldt, ldt_end))
    else:
        regions.append(("hole", cea + P4D_SIZE, espfix))
    regions += [
        ("espfix", espfix, espfix + P4D_SIZE),
        ("hole", espfix + P4D_SIZE, EFI_VA_END),
        ("efi", EFI_VA_END, EFI_VA_START),
        ("hole", EFI_VA_START, START_KERNEL_MAP),
        ("kernel_image", START_KERNEL_MAP, modules),
        ("modules", modules, MODULES_END),
        ("hole", MODULES_END, fixmap),
        ("fixmap", fixmap, VSYSCALL_ADDR),
        ("vsyscall", VSYSCALL_ADDR, VSYSCALL_ADDR + PAGE_SIZE),
        ("fixmap", VSYSCALL_ADDR + PAGE_SIZE, FIXADDR_TOP + PAGE_SIZE),
        ("hole", FIXADDR_TOP + PAGE_SIZE, TOP),
    ]
    regions = sorted((r for r in regions if r[1] < r[2]), key=lambda r: r[1])
    return DumpLayout(la57, era, tuple(regions), tuple(notes))


# ---- what a dump is, and how much of one ---------------------------------------------------------
TABLE_KINDS: Final[dict[str, str]] = {
    "current_user": "a process's user tables (current_user with PTI): the kernel half holds only what "
    "entry and exit need",
    "current_kernel": "a process's kernel tables (current_kernel; also current_user without PTI): user "
    "mappings and the whole direct map and kernel image",
    "kernel": "init_mm's kernel tables (page_tables/kernel): no user mappings, the whole direct map and kernel image",
    "kernel-half": "kernel tables (the user half is not in the dump): the whole direct map and kernel image",
}
# CHOSEN: more direct map than any user-table part needs. PTI user tables map only the per-CPU TSS
# page (4 KiB per CPU, §3.3) there, KAISER its per-CPU sections (PERCPU_MAX per CPU, §7.1): 16 MiB
# is 256 CPUs' worth, while kernel tables map all of RAM (a 512 MiB guest's direct map: ~500 MiB).
WHOLE_DIRECT_MAP_MIN: Final = 16 << 20


def _present_bytes(lines: Sequence[RangeLine], lo: int, hi: int, *, writable: bool = False) -> int:
    return sum(
        min(r.end, hi) - max(r.start, lo)
        for r in lines
        if r.present and r.start < hi and r.end > lo and (not writable or "RW" in r.flags)
    )


def table_kind(records: Sequence[Record], layout: DumpLayout) -> str:
    """Which of Linux's tables a dump looks like (`TABLE_KINDS`): kernel tables map the whole
    direct map and the kernel image with its writable data; user tables under PTI map neither
    (§3.3, §3.5: only entry text, the entry area, ESPfix, the TSS pages and the like)."""
    lines = range_lines(records)
    regions = layout.regions
    direct = sum(_present_bytes(lines, lo, hi) for name, lo, hi in regions if name == "direct_map")
    data = sum(_present_bytes(lines, lo, hi, writable=True) for name, lo, hi in regions if name == "kernel_image")
    if direct < WHOLE_DIRECT_MAP_MIN or not data:
        return "current_user"
    gaps = dump_gaps(records)
    if any(lo < layout.user_end for lo, _, _ in gaps):
        return "kernel-half"
    return "current_kernel" if _present_bytes(lines, 0, layout.user_end) else "kernel"


def unseen_regions(records: Sequence[Record], layout: DumpLayout) -> tuple[str, ...]:
    """Regions of the layout (and user space) that no line of the dump reaches -- what an excerpt,
    or a dump cut short, leaves out -- in address order."""
    gaps = dump_gaps(records)
    regions = (("user space", 0, layout.user_end), *layout.regions)

    def unseen(lo: int, hi: int) -> bool:
        return any(g_lo <= lo and hi <= g_hi for g_lo, g_hi, _ in gaps)

    out: list[str] = []
    for name, _, _ in regions:  # a region in several pieces (fixmap) is unseen if all of them are
        if name != "hole" and name not in out and all(unseen(a, b) for n, a, b in regions if n == name):
            out.append(name)
    return tuple(out)


# ---- classification of a dump ------------------------------------------------------------------
@dataclass
class _Piece:
    start: int
    end: int
    line: RangeLine
    region: str


def _split(lines: Iterable[RangeLine], bounds: Sequence[tuple[str, int, int]], user_end: int) -> Iterator[_Piece]:
    """Present kernel-half ranges cut at region boundaries."""
    for line in lines:
        if not line.present or line.end <= user_end:
            continue
        lo = max(line.start, user_end)
        for name, rs, re_ in bounds:
            a, b = max(lo, rs), min(line.end, re_)
            if a < b:
                yield _Piece(a, b, line, name)


def _is_percpu_like(p: _Piece) -> bool:
    f = p.line.flags
    return p.line.level == "pte" and "RW" in f and "NX" in f and "USR" not in f


def _lone(pieces: list[_Piece], i: int) -> bool:
    """No present range touches piece `i` on either side (pieces are in address order)."""
    before = i > 0 and pieces[i - 1].end == pieces[i].start
    after = i + 1 < len(pieces) and pieces[i + 1].start == pieces[i].end
    return not (before or after)


def _classify_dump(pieces: list[_Piece]) -> list[str]:
    image = [p for p in pieces if p.region == "kernel_image"]
    entry_only = False
    if image:
        pmds = {va // PMD_SIZE for p in image for va in range(p.start, p.end, PAGE_SIZE)}
        entry_only = (
            all("NX" not in p.line.flags for p in image)
            and len(pmds) <= ENTRY_TEXT_MAX_PMDS
            and max(pmds) - min(pmds) < ENTRY_TEXT_MAX_PMDS
        )
    out = []
    for i, p in enumerate(pieces):
        size, flags = p.end - p.start, p.line.flags
        klass = p.region
        if p.region == "direct_map" and _is_percpu_like(p) and _lone(pieces, i):
            if size == PAGE_SIZE:
                klass = "tss_percpu"
            elif size <= PERCPU_MAX:
                klass = "percpu"
        elif p.region == "vmalloc" and _is_percpu_like(p) and size == THREAD_SIZE:
            klass = "task_stack"
        elif p.region == "kernel_image":
            # executable or read-only: text/rodata (RW x is text before mark_rodata_ro()); RW NX: data
            klass = "entry_text" if entry_only else "kernel_data" if "RW" in flags and "NX" in flags else "kernel_text"
        out.append(klass)
    return out


def _check(m: Mapping, policy: Policy) -> list[Finding]:
    rng = f"0x{m.start:016x}-0x{m.end:016x}"
    what = f"{rng} {m.flag_text} {m.level} ({m.klass})"
    out = []
    if not m.allowed:
        out.append(Finding("not-allowed", m.start, m.end, m.klass, f"{what}: not allowed by {policy.label}"))
    if "RW" in m.flags and "NX" not in m.flags:
        out.append(Finding("w+x", m.start, m.end, m.klass, f"{what}: writable and executable (W+X)"))
    if "USR" in m.flags and m.klass != "vsyscall":
        out.append(Finding("user-accessible", m.start, m.end, m.klass, f"{what}: USR on a kernel-half mapping"))
    if "GLB" in m.flags and m.allowed and m.klass not in policy.global_ok:
        out.append(Finding("global", m.start, m.end, m.klass, f"{what}: global kernel page ({policy.label} keeps "
                           f"{m.klass} non-global)"))  # fmt: skip
    return out


def audit_dump(records: Sequence[Record], policy: Policy, source: str = "<input>") -> AuditReport:
    """Audit a user-table dump by itself, the layout inferred from its markers and addresses."""
    layout = infer_layout(records)
    pieces = list(_split(range_lines(records), layout.regions, layout.user_end))
    mappings = tuple(
        Mapping(p.start, p.end, p.line.level, p.line.flags, k, k in policy.allowed, p.line.lineno)
        for p, k in zip(pieces, _classify_dump(pieces), strict=True)
    )
    findings = tuple(f for m in mappings for f in _check(m, policy))
    kind = table_kind(records, layout)
    gaps = tuple(dump_gaps(records))
    unseen = unseen_regions(records, layout) if gaps else ()
    notes = layout.notes + _skip_notes(records, layout) + ((policy.note,) if policy.note else ())
    if kind != "current_user":
        notes = (f"this dump looks like {kind}: {TABLE_KINDS[kind]}",) + notes
    if gaps:
        notes += (f"not a whole dump: {len(gaps)} address range(s) not printed; never seen: "
                  f"{', '.join(unseen) or 'none'}",)  # fmt: skip
    return AuditReport(
        source, policy, source, layout.la57, layout.regions, mappings, findings, None, notes, kind, gaps, unseen
    )


def skipped_by_region(records: Sequence[Record], layout: DumpLayout) -> dict[str, int]:
    """Lines Linux left out under a capped marker (``... N entries skipped ...``, ESPfix: §6.3),
    by the region of the last range printed before them. They carry no addresses, so the audit
    cannot classify them one by one; the region they fall in is all a dump says about them."""
    out: dict[str, int] = {}
    last: RangeLine | None = None
    for rec in records:
        if isinstance(rec, RangeLine):
            last = rec
        elif isinstance(rec, SkipLine) and last is not None:
            region = layout.region_of(last.start)
            out[region] = out.get(region, 0) + rec.count
    return out


def _skip_notes(records: Sequence[Record], layout: DumpLayout) -> tuple[str, ...]:
    return tuple(
        f"{count} more {region} line(s) not printed by Linux (marker line cap, §6.3): not listed, "
        f"but inside the {region} region"
        for region, count in skipped_by_region(records, layout).items()
    )


def audit_text(text: str | bytes, policy: Policy, source: str = "<input>", *, ordered: bool = True) -> AuditReport:
    """`audit_dump` of ptdump text (raises `PtdumpParseError` on malformed input; `ordered` as in
    `parse_ptdump`)."""
    return audit_dump(parse_ptdump(text, source, ordered=ordered), policy, source)


# ---- the model -------------------------------------------------------------------------------------
def _model_class(layout: Layout, va: int) -> str:
    name = layout.region_of(va)
    return {
        "entry_text": "kernel_text",
        "kernel_rodata": "kernel_text",
        "kernel_bss": "kernel_data",
        "ldt_remap": "ldt",
        "guard_hole": "hole",
        "noncanonical": "hole",
    }.get(name, name)


def _merge(ranges: Iterable[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Allowed ranges, sorted, with overlaps resolved in favour of the first listed (entry text is
    listed before kernel text by the variants that have both)."""
    out: list[tuple[int, int, str]] = []
    for start, end, part in ranges:
        cuts = [(start, end)]
        for s, e, _ in out:
            cuts = [piece for a, b in cuts for piece in ((a, min(b, s)), (max(a, e), b)) if piece[0] < piece[1]]
        out += [(a, b, part) for a, b in cuts]
    return sorted(out)


def audit_model(kernel: Kernel, task: Task, *, pcid: bool | None = None, mode: str = "variant") -> AuditReport:
    """Audit a model process's user tables exactly (`Kernel.user_allowed_ranges()`), with a diff
    against its kernel tables. Under `nopti` the kernel PGD is the user view. `mode="strict"`
    also requires every mapping's class to be one the strict policy allows (`policy_for`)."""
    layout = kernel.layout
    policy = policy_for(kernel.variant.name, pcid=kernel.config.pcid if pcid is None else pcid, mode=mode)
    if not kernel.variant.isolating and kernel.config.lass_active:  # nopti --lass, lass
        policy = lass_policy(kernel.variant.name, mode)
    elif kernel.variant.lass_cpu:  # vsyscall=emulate turned LASS off: the kernel PGD is all there is
        base = policy_for("nopti", pcid=kernel.config.pcid if pcid is None else pcid, mode=mode)
        note = f"vsyscall=emulate turned LASS off; {base.note}"
        policy = Policy(kernel.variant.name, base.allowed, base.global_ok, note, mode)
    kpt = task.mm.pgd.kernel_pt
    upt = task.mm.pgd.user_pt
    name = kernel.variant.name
    view_pt, view = (upt, "current_user") if upt is not None else (kpt, f"current_kernel ({name}: no user tables)")
    text = ptdump(view_pt, layout.markers)
    records = parse_ptdump(text, view)
    user_end = layout.user_end
    isolating = kernel.variant.isolating
    if isolating:
        ranges = _merge(kernel.user_allowed_ranges())
    else:  # nopti: only name the entry-text PMDs; allowed-ness comes from linux's class policy
        lo, hi = layout.entry_text
        ranges = [(lo // PMD_SIZE * PMD_SIZE, -(-hi // PMD_SIZE) * PMD_SIZE, "entry_text")]
    bounds: list[tuple[str, int, int]] = []
    cursor = user_end
    for start, end, part in ranges:
        if start > cursor:
            bounds.append(("", cursor, start))
        bounds.append((part, start, end))
        cursor = max(cursor, end)
    bounds.append(("", cursor, TOP))
    mappings = []
    for p in _split(range_lines(records), bounds, user_end):
        part = p.region
        # pieces the layout's regions cannot name take their part's name
        klass = _range_class(part) or _model_class(layout, p.start)
        allowed = bool(part) if isolating else klass in policy.allowed
        if mode == "strict":
            allowed = allowed and klass in policy.allowed
        mappings.append(Mapping(p.start, p.end, p.line.level, p.line.flags, klass, allowed, p.line.lineno, part))
    findings = [f for m in mappings for f in _check(m, policy)]
    diff = diff_tables(kpt, upt if upt is not None else kpt, layout)
    for d in diff.entries:
        if d.kind == "user-half-differs":
            findings.append(
                Finding("user-half", d.start, d.end, "user", f"user half differs: kernel {d.kernel} / user {d.user}")
            )
    findings += _global_unshared(kpt, upt, layout) if upt is not None else []
    regions = tuple((_range_name(part), lo, hi) for lo, hi, part in ranges)
    notes: tuple[str, ...] = (f"variant {kernel.variant.name}, {'5' if layout.la57 else '4'}-level, "
             f"PCID {'on' if kernel.config.pcid else 'off'}, KASLR {'on' if layout.kaslr else 'off'}",)  # fmt: skip
    if policy.note:
        notes += (policy.note,)
    return AuditReport(
        f"model:{kernel.variant.name}/pid{task.pid}", policy, view, layout.la57, regions,
        tuple(mappings), tuple(findings), diff, notes,
    )  # fmt: skip


_P: Final = int(PTE.P)


# ---- user vs kernel tables ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Run:
    start: int
    end: int
    level: str
    flags: frozenset[str]
    eff_nx: bool

    def text(self) -> str:
        return f"{flag_text(self.flags)} {self.level}{' (eff NX)' if self.eff_nx and 'NX' not in self.flags else ''}"


def _leaf_flags(value: int, level: str) -> frozenset[str]:
    pat = value & (1 << 7) if level == "pte" else value & (1 << 12)
    names = {
        "USR": value & PTE.US, "RW": value & PTE.RW, "PWT": value & PTE.PWT, "PCD": value & PTE.PCD,
        "PSE": level != "pte" and value & PTE.PS, "PAT": pat, "GLB": value & PTE.G, "NX": value & PTE.NX,
    }  # fmt: skip
    return frozenset(n for n, on in names.items() if on)


def kernel_half_tables(pt: PageTable) -> set[int]:
    """Physical addresses of the tables below the kernel half's top-level entries, each once."""
    top = pt.mem.read_frame(pt.root)
    user_half = {entry_phys(int(e)) for e in top[: len(top) // 2].tolist() if e & _P}
    return {table for table, depth in pt.tables(prune=user_half) if depth > 0}


def shared_kernel_tables(a: PageTable, b: PageTable) -> frozenset[int]:
    """Kernel-half tables both trees reach: what is below them is the same in both (shared lower
    levels, §3.3), so a comparison of the two trees need not walk them (ESPfix's 65,536 aliases)."""
    if a.root == b.root:
        return frozenset(kernel_half_tables(a))
    return frozenset(kernel_half_tables(a) & kernel_half_tables(b))


def table_runs(pt: PageTable, prune: frozenset[int] = frozenset()) -> list[_Run]:
    """Present leaves of a tree as runs of equal printed flags, level and effective NX (the NX a
    walk ORs in from above, e.g. the kernel PGD's copy of a user entry, §3.2). Tables in `prune`
    are not descended into (see `shared_kernel_tables`)."""
    mem, levels = pt.mem, pt.levels
    last = len(levels) - 1
    runs: list[_Run] = []

    def visit(phys: int, depth: int, base: int, nx: bool) -> None:
        level = levels[depth]
        for index, value in enumerate(mem.read_frame(phys).tolist()):
            if not value & PTE.P:
                continue
            va = base | (index << level.shift)
            if depth == 0:
                va = pt.mode.canonicalize(va)
            eff_nx = nx or bool(value & PTE.NX)
            if depth == last or (level.leaf_ok and value & PTE.PS):
                run = _Run(va, va + level.span, level.linux, _leaf_flags(value, level.linux), eff_nx)
                prev = runs[-1] if runs else None
                if prev and prev.end == va and (prev.level, prev.flags, prev.eff_nx) == (run.level, run.flags, eff_nx):
                    runs[-1] = _Run(prev.start, run.end, prev.level, prev.flags, eff_nx)
                else:
                    runs.append(run)
            elif (child := value & 0x000F_FFFF_FFFF_F000) not in prune:
                visit(child, depth + 1, va, eff_nx)

    visit(pt.root, 0, 0, False)
    return runs


def _overlay(a: list[_Run], b: list[_Run]) -> Iterator[tuple[int, int, _Run | None, _Run | None]]:
    points = sorted({x for r in a + b for x in (r.start, r.end)})
    ia = ib = 0
    for lo, hi in zip(points, points[1:], strict=False):
        while ia < len(a) and a[ia].end <= lo:
            ia += 1
        while ib < len(b) and b[ib].end <= lo:
            ib += 1
        ra = a[ia] if ia < len(a) and a[ia].start <= lo else None
        rb = b[ib] if ib < len(b) and b[ib].start <= lo else None
        if ra or rb:
            yield lo, hi, ra, rb


def diff_tables(kernel_pt: PageTable, user_pt: PageTable, layout: Layout) -> TableDiff:
    """Kernel-half regions the user tables leave out, kernel-half ranges whose flags differ,
    user-half ranges that differ (other than the kernel copy's NX, which is summarized). Shared
    kernel-half tables are identical in both trees and left out."""
    left: dict[str, list[int]] = {}
    entries: list[DiffEntry] = []
    nx_ranges = nx_bytes = 0
    user_end = layout.user_end
    shared = shared_kernel_tables(kernel_pt, user_pt)
    for lo, hi, k, u in _overlay(table_runs(kernel_pt, shared), table_runs(user_pt, shared)):
        region = "user" if lo < user_end else _model_class(layout, lo)
        kt, ut = k.text() if k else "", u.text() if u else ""
        if lo >= user_end:
            if k and not u:
                acc = left.setdefault(region, [0, 0])
                acc[0] += 1
                acc[1] += hi - lo
            elif u and not k:
                entries.append(DiffEntry("user-only", lo, hi, region, kt, ut))
            elif k and u and (k.flags, k.level) != (u.flags, u.level):
                entries.append(DiffEntry("flags-differ", lo, hi, region, kt, ut))
        elif k and u and (k.flags, k.level) == (u.flags, u.level) and k.eff_nx and not u.eff_nx:
            nx_ranges += 1
            nx_bytes += hi - lo
        elif not (k and u and (k.flags, k.level, k.eff_nx) == (u.flags, u.level, u.eff_nx)):
            entries.append(DiffEntry("user-half-differs", lo, hi, region, kt, ut))
    return TableDiff(
        tuple((r, n, b) for r, (n, b) in sorted(left.items(), key=lambda kv: -kv[1][1])),
        tuple(_coalesce(entries)),
        (nx_ranges, nx_bytes),
    )


def _coalesce(entries: list[DiffEntry]) -> Iterator[DiffEntry]:
    prev: DiffEntry | None = None
    for e in entries:
        if prev and prev.end == e.start and (prev.kind, prev.region, prev.kernel, prev.user) == (
            e.kind, e.region, e.kernel, e.user,
        ):  # fmt: skip
            prev = DiffEntry(prev.kind, prev.start, e.end, prev.region, prev.kernel, prev.user)
            continue
        if prev:
            yield prev
        prev = e
    if prev:
        yield prev


def _global_unshared(kernel_pt: PageTable, user_pt: PageTable, layout: Layout) -> list[Finding]:
    """Global kernel pages the user tables do not map: their TLB entries survive the switch to the
    user CR3, so isolation would not hide them (§2 notes, §7.3)."""
    out = []
    shared = shared_kernel_tables(kernel_pt, user_pt)  # mapped alike in both: never "unshared"
    for lo, hi, k, u in _overlay(table_runs(kernel_pt, shared), table_runs(user_pt, shared)):
        if lo >= layout.user_end and k and "GLB" in k.flags and not u:
            out.append(
                Finding(
                    "global-unshared",
                    lo,
                    hi,
                    _model_class(layout, lo),
                    f"0x{lo:016x}-0x{hi:016x} {k.text()}: global in the kernel tables but not mapped for user",
                    breaks_policy=False,  # a property of the kernel tables, reported beside the audit
                )
            )
    return out


__all__ = [
    "CLASSES",
    "CLASS_DOC",
    "TABLE_KINDS",
    "AuditReport",
    "DiffEntry",
    "DumpLayout",
    "Finding",
    "Mapping",
    "POLICY_MODES",
    "Policy",
    "TableDiff",
    "audit_dump",
    "audit_model",
    "audit_text",
    "diff_tables",
    "infer_layout",
    "policy_for",
    "skipped_by_region",
    "table_kind",
    "table_runs",
    "unseen_regions",
]
