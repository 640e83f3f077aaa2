"""What user mode can reach: an audit of the kernel half of a user page-table dump.

Input is ptdump text (ours, or a real machine's `/sys/kernel/debug/page_tables/current_user`,
facts/linux-kpti.md §6) or a booted model. Every *present* kernel-half range is classified by the
region it lies in (`kaiser.linux.audit_policy.CLASSES`), and checked against a `Policy` of that
module -- which classes the variant may map into user tables (§3.3, §3.6, §7), where
`_PAGE_GLOBAL` is acceptable -- plus three rules that hold for every variant: no W+X mapping (the
boot-time W+X check, §6.1), no USR bit on a kernel-half leaf except the vsyscall page (§3.3), no
global page in a class the policy keeps non-global.

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
  `TableDiff` of the user against the kernel tables is added (`kaiser.linux.table_diff`).

`nopti` has no user tables and no policy of its own: its "user view" is the kernel PGD that stays
loaded in user mode, judged by `linux`'s policy, so it fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from kaiser.linux.audit_policy import Policy, lass_policy, model_class, policy_for, range_class, range_name
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
from kaiser.linux.ptdump import flag_text, ptdump
from kaiser.linux.ptdump_parse import MarkerLine, RangeLine, Record, SkipLine, dump_gaps, parse_ptdump, range_lines
from kaiser.linux.table_diff import TableDiff, diff_tables, global_unshared_runs
from kaiser.x86.geometry import FOUR_LEVEL, kernel_half_start, user_half_end
from kaiser.x86.hexrepr import hex_fields
from kaiser.x86.pagetable import PageTable

ENTRY_TEXT_MAX_PMDS: Final = 2  # entry text is tens of KiB: it can straddle one PMD boundary at most
PERCPU_MAX: Final = 64 << 10  # KAISER's user-mapped per-CPU section is a few pages per CPU (§7.1)


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


@hex_fields("regions", "gaps")
@dataclass(frozen=True)
class AuditReport:
    """One audit: what was audited under which policy, every classified kernel-half range, the
    findings (those that break the policy decide `exit_status`), and for a model the table diff."""

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
    # An address in 4-level paging's non-canonical hole can only be a 5-level dump's.
    la57 = any(user_half_end(FOUR_LEVEL) < r.start < kernel_half_start(FOUR_LEVEL) for r in lines)
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
        klass = range_class(part) or model_class(layout, p.start)
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
    regions = tuple((range_name(part), lo, hi) for lo, hi, part in ranges)
    notes: tuple[str, ...] = (f"variant {kernel.variant.name}, {'5' if layout.la57 else '4'}-level, "
             f"PCID {'on' if kernel.config.pcid else 'off'}, KASLR {'on' if layout.kaslr else 'off'}",)  # fmt: skip
    if policy.note:
        notes += (policy.note,)
    return AuditReport(
        f"model:{kernel.variant.name}/pid{task.pid}", policy, view, layout.la57, regions,
        tuple(mappings), tuple(findings), diff, notes,
    )  # fmt: skip


def _global_unshared(kernel_pt: PageTable, user_pt: PageTable, layout: Layout) -> list[Finding]:
    """Global kernel pages the user tables do not map: their TLB entries survive the switch to the
    user CR3, so isolation would not hide them (§2 notes, §7.3)."""
    return [
        Finding(
            "global-unshared",
            lo,
            hi,
            model_class(layout, lo),
            f"0x{lo:016x}-0x{hi:016x} {k.text()}: global in the kernel tables but not mapped for user",
            breaks_policy=False,  # a property of the kernel tables, reported beside the audit
        )
        for lo, hi, k in global_unshared_runs(kernel_pt, user_pt, layout)
    ]


__all__ = [
    "TABLE_KINDS",
    "AuditReport",
    "DumpLayout",
    "Finding",
    "Mapping",
    "audit_dump",
    "audit_model",
    "audit_text",
    "infer_layout",
    "skipped_by_region",
    "table_kind",
    "unseen_regions",
]
