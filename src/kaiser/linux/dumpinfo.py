"""What a page-table dump says about the machine that printed it.

`read_dump()` reads every switch a real `/sys/kernel/debug/page_tables/*` file reveals, each as a
`Fact` with the line that shows it, so `kaiser compare` can boot the model aligned to the machine
(same bases, espfix index, entry-area slots, CPU count, per-CPU TSS pages) and what differs is what
really differs. What a dump cannot tell (PCID, often RAM size) is left to the caller's options.

The rules (facts/linux-kpti.md §1-§3, §6; docs/real-kernel.md):

* **table**: a wholesale direct map and user mappings -> ``current_kernel`` (also nopti's
  ``current_user``: the walker falls back to the kernel PGD); a direct map without user mappings
  -> ``kernel`` (init_mm has no user half); no direct map -> ``current_user`` of a PTI kernel.
* **PTI**: off when the direct map is global (`probe_page_size_mask()` drops _PAGE_GLOBAL from
  kernel mappings only under X86_FEATURE_PTI) or when the user view maps the direct map.
* **global kernel image** (pti=auto, no PCID, not K8: `pti_kernel_image_global_ok()`, §3.3): kernel
  text beyond the entry-text PMDs mapped (user view) or global (kernel view) under PTI.
* **bases**: each randomized base is printed as a marker at the first break at or above it (§6.3);
  under KASLR it is 1 GiB aligned (kernel_randomize_memory()), so base = the marker's or the
  region's first mapping's address, whichever is lower, rounded down to 1 GiB. `_text` is the first
  kernel-image mapping (kernel tables) or the entry-text PMD less its offset in the image.
* **KASLR** is off when every base visible is its fixed value (mm.rst; _text at 0xffffffff81000000).
* **entry area**: CPU n's area is slot s at 0xfffffe0000001000 + s * 59 pages (5.2+, §3.4); the
  slots that hold mappings give the CPU count and, when not 0..n-1, a randomized area (6.2+,
  97e3d26b5e5f). The debug-store page is mapped only on Intel (percpu_setup_debug_store()).
* **espfix**: the first espfix page gives page_random (espfix_base_addr(), espfix_64.c).
* **vsyscall**: a PTE at 0xffffffffff600000 only in emulate mode; xonly and none map nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from kaiser.linux.audit import DumpLayout, Mapping, audit_dump, infer_layout
from kaiser.linux.audit_policy import policy_for
from kaiser.linux.cea import cea_layout
from kaiser.linux.kernel import ESPFIX_PAGE_SPACE
from kaiser.linux.layout import (
    CPU_ENTRY_AREA_PGD,
    ESPFIX_PGD_ENTRY,
    LOAD_PHYSICAL_ADDR,
    P4D_SHIFT,
    PAGE_OFFSET_BASE,
    PAGE_SIZE,
    PMD_SIZE,
    PUD_SIZE,
    START_KERNEL_MAP,
    TOP,
    VMALLOC_BASE,
    VMEMMAP_BASE,
    VSYSCALL_ADDR,
    ImageSizes,
    MiB,
)
from kaiser.linux.ptdump_parse import MarkerLine, RangeLine, Record, range_lines

CEA_BASE: Final = (CPU_ENTRY_AREA_PGD << P4D_SHIFT) % TOP
ESPFIX_BASE: Final = (ESPFIX_PGD_ENTRY << P4D_SHIFT) % TOP
FIXED_TEXT: Final = START_KERNEL_MAP + LOAD_PHYSICAL_ADDR  # _text without KASLR
ENTRY_TEXT_OFFSET: Final = ImageSizes().entry_text_offset  # assumed when only the entry PMD shows
# CHOSEN: the most RAM the aligned model boots with (a 64 GiB boot takes 0.4 s; a machine with more
# differs in its direct map and vmemmap only, which are the running kernel's contents anyway)
MODEL_RAM_MAX: Final = 64 << 30


@dataclass(frozen=True)
class Fact:
    """One thing known about the machine: its value, in words, and where it came from (`source`:
    ``dump`` with the `line` that shows it, or ``given``, ``cmdline``, ``cpuinfo``, ``meta.json``,
    ``assumed``)."""

    name: str
    value: object
    text: str
    source: str = "dump"
    line: int = 0
    shown: str = ""  # that line, whitespace collapsed

    def describe(self) -> str:
        where = f" (line {self.line}: {self.shown})" if self.line else ""
        return f"{self.text} [{self.source}]{where}"


@dataclass(frozen=True)
class DumpFacts:
    """Everything `read_dump` found, by name (see the module docstring)."""

    facts: dict[str, Fact]
    layout: DumpLayout
    mappings: tuple[Mapping, ...]

    def get(self, name: str) -> object:
        fact = self.facts.get(name)
        return None if fact is None else fact.value

    def __contains__(self, name: object) -> bool:
        return name in self.facts


def _shown(line: RangeLine | MarkerLine) -> str:
    return " ".join(line.render().split())


def _fact(name: str, value: object, text: str, line: RangeLine | MarkerLine | None = None) -> Fact:
    return Fact(name, value, text, "dump", line.lineno if line else 0, _shown(line) if line else "")


def _markers(records: Sequence[Record]) -> dict[str, tuple[MarkerLine, RangeLine]]:
    """Each marker with the range line printed right after it (the first break at or above it)."""
    out: dict[str, tuple[MarkerLine, RangeLine]] = {}
    pending: list[MarkerLine] = []
    for rec in records:
        if isinstance(rec, MarkerLine):
            pending.append(rec)
        elif isinstance(rec, RangeLine):
            for m in pending:
                out.setdefault(m.name, (m, rec))
            pending = []
    return out


def _first(lines: Sequence[RangeLine], lo: int, hi: int) -> RangeLine | None:
    return next((r for r in lines if r.present and lo <= r.start < hi), None)


def _in_class(mappings: Sequence[Mapping], klass: str) -> list[Mapping]:
    return [m for m in mappings if m.klass == klass]


def _by_line(lines: Sequence[RangeLine], lineno: int) -> RangeLine | None:
    return next((r for r in lines if r.lineno == lineno), None)


def _kaslr(facts: dict[str, Fact], layout: DumpLayout) -> dict[str, Fact]:
    """`kaslr`: on exactly when a base the dump shows is not its fixed value (nothing when it
    shows none)."""
    fixed = {
        "page_offset_base": PAGE_OFFSET_BASE[(layout.era, layout.la57)],
        "vmalloc_base": VMALLOC_BASE[layout.la57],
        "vmemmap_base": VMEMMAP_BASE[layout.la57],
        "kernel_base": FIXED_TEXT,
    }
    seen = [n for n in fixed if n in facts]
    if not seen:
        return {}
    moved = [n for n in seen if facts[n].value != fixed[n]]
    f0 = facts[moved[0] if moved else seen[0]]
    text_ = (
        f"KASLR on: {moved[0]} is not its fixed value"
        if moved
        else f"KASLR off: {'all bases' if len(seen) == len(fixed) else ', '.join(seen)} at their fixed values"
    )
    return {"kaslr": Fact("kaslr", bool(moved), text_, "dump", f0.line, f0.shown)}


def _vendor(
    era: str, cea_lines: Sequence[RangeLine], order: Sequence[int], stride: int, first: RangeLine
) -> dict[str, Fact]:
    """`vendor`, on a modern layout: Intel when every entry area maps its debug-store page, AMD
    when none does (nothing when some do, or on 4.15's layout)."""
    if era != "modern":
        return {}
    ds = cea_layout("modern", stub=False).offset("debug store")
    ds_lines = [_covering(cea_lines, CEA_BASE + PAGE_SIZE + s * stride + ds) for s in order]
    have = [x for x in ds_lines if x is not None]
    if len(have) == len(order):
        return {"vendor": _fact("vendor", "intel", "Intel CPU: the entry area maps the debug store", have[0])}
    if not have:
        return {"vendor": _fact("vendor", "amd", "not Intel (AMD): no debug-store page in the entry area", first)}
    return {}


def read_dump(records: Sequence[Record]) -> DumpFacts:
    """The machine's switches as far as this dump shows them (see the module docstring)."""
    lines = range_lines(records)
    layout = infer_layout(records)
    audit = audit_dump(records, policy_for("linux"))
    maps = audit.mappings
    facts: dict[str, Fact] = {}

    def put(f: Fact) -> None:
        facts[f.name] = f

    kernel_half = [r for r in lines if r.present and r.start >= layout.user_end]
    put(_fact("la57", layout.la57, f"{5 if layout.la57 else 4}-level paging", kernel_half[0] if kernel_half else None))

    # ---- table kind and PTI --------------------------------------------------------------------
    direct = _in_class(maps, "direct_map")
    dline = _by_line(lines, direct[0].lineno) if direct else None
    kind = audit.table_kind or "current_user"
    table = "current_kernel" if kind == "kernel-half" else kind
    if table != "current_user":
        how = "the direct map and " + ("user mappings" if table == "current_kernel" else "no user mapping (init_mm)")
        put(_fact("table", table, f"table {table}: {how}", dline))
        glb = bool(direct) and "GLB" in direct[0].flags
        how = "off: the direct map is global" if glb else "on: the direct map is not global"
        put(_fact("pti", not glb, f"PTI {how}", dline))
    else:
        first = kernel_half[0] if kernel_half else None
        put(_fact("table", "current_user", "table current_user: no direct map, only what PTI maps", first))
        put(_fact("pti", True, "PTI on: the user view maps no direct map", first))
    pti_on = bool(facts["pti"].value)
    ldt = _in_class(maps, "ldt")
    put(_fact("ldt", bool(ldt), "process with an LDT" if ldt else "no LDT alias",
              _by_line(lines, ldt[0].lineno) if ldt else None))  # fmt: skip

    # ---- the kernel image: global or not, its base and sizes --------------------------------
    modules = next((lo for n, lo, _ in layout.regions if n == "modules"), START_KERNEL_MAP + (1 << 30))
    image = [r for r in kernel_half if START_KERNEL_MAP <= r.start < modules]
    entry = _in_class(maps, "entry_text")
    text = [m for m in _in_class(maps, "kernel_text") if "NX" not in m.flags]
    global_text = [m for m in text if "GLB" in m.flags]
    if pti_on:
        if facts["table"].value == "current_user":
            glob = bool(text)
            shown = _by_line(lines, text[0].lineno) if text else (_by_line(lines, entry[0].lineno) if entry else None)
        else:
            glob = sum(m.end - m.start for m in global_text) > 2 * PMD_SIZE
            shown = _by_line(lines, global_text[0].lineno) if global_text else None
        put(_fact("global_image", glob,
                  "kernel image global (pti=auto, no PCID, not K8)" if glob
                  else "kernel image not global (pti=on, or PCID, or AMD)", shown))  # fmt: skip
    sizes = _image_sizes(
        image, facts["table"].value == "current_user", bool(facts.get("global_image", _NO).value), pti_on
    )
    if sizes is not None:
        base, image_sizes, line = sizes
        put(_fact("kernel_base", base, f"_text at {base:#x}: the first kernel-image mapping", line))
        im = image_sizes
        words = (f"image: {im.text >> 10}K text (entry PMD at +{im.entry_text_offset:#x}), {im.rodata >> 10}K "
                 f"rodata, {im.data >> 10}K data, {im.bss >> 10}K bss")  # fmt: skip
        put(_fact("image", im, words, line))
    elif entry:
        pmd = entry[0].start & ~(PMD_SIZE - 1)
        base = pmd - ENTRY_TEXT_OFFSET if pmd - ENTRY_TEXT_OFFSET >= FIXED_TEXT else FIXED_TEXT
        put(_fact("kernel_base", base, f"_text {base:#x}: the entry-text PMD - {pmd - base:#x} (offset assumed)",
                  _by_line(lines, entry[0].lineno)))  # fmt: skip
        facts["entry_offset"] = Fact("entry_offset", pmd - base, f"entry text at _text + {pmd - base:#x}", "assumed")

    # ---- randomized memory bases (markers and mappings) --------------------------------------
    marks = _markers(records)
    low_lo = next((lo for n, lo, _ in layout.regions if n == "direct_map"), PAGE_OFFSET_BASE[("modern", layout.la57)])
    vm_marker = marks.get("vmalloc() Area")
    vmm_marker = marks.get("Vmemmap")
    pob = _base(marks.get("Low Kernel Mapping"), _first(lines, low_lo, vm_marker[1].start if vm_marker else CEA_BASE))
    if pob is not None:
        put(_fact("page_offset_base", pob[0], f"page_offset_base {pob[0]:#x}", pob[1]))
    vmb = _base(vm_marker, _first(lines, vm_marker[1].start, vmm_marker[1].start) if vm_marker and vmm_marker else None)
    if vmb is not None:
        put(_fact("vmalloc_base", vmb[0], f"vmalloc_base {vmb[0]:#x}", vmb[1]))
    vmm = _base(vmm_marker, _first(lines, vmm_marker[1].start, CEA_BASE) if vmm_marker else None)
    if vmm is not None:
        put(_fact("vmemmap_base", vmm[0], f"vmemmap_base {vmm[0]:#x}", vmm[1]))
    facts.update(_kaslr(facts, layout))

    # ---- the entry area: CPUs, slots, vendor -------------------------------------------------
    cea_lines = [r for r in kernel_half if CEA_BASE + PAGE_SIZE <= r.start < CEA_BASE + (1 << 39)]
    stub = next((r for r in cea_lines if "NX" not in r.flags), None)  # 4.15-4.19's SYSCALL trampoline
    pages = cea_layout(layout.era, stub=stub is not None).pages
    era_line = next((r for r in records if isinstance(r, MarkerLine) and r.name == "LDT remap"), None)
    put(_fact("era", layout.era, f"{layout.era} layout ({'v4.20+' if layout.era == 'modern' else 'v4.15-4.19'}: "
              f"the LDT remap marker's place), {pages}-page entry areas", era_line))  # fmt: skip
    put(_dialect(lines, layout.user_end))
    stride = pages * PAGE_SIZE
    slots: dict[int, RangeLine] = {}
    for r in cea_lines:
        for slot in range((r.start - CEA_BASE - PAGE_SIZE) // stride, (r.end - 1 - CEA_BASE - PAGE_SIZE) // stride + 1):
            slots.setdefault(slot, r)
    if slots:
        order = sorted(slots)
        first = slots[order[0]]
        put(_fact("cea_slots", tuple(order), f"entry-area slot(s) {', '.join(map(str, order[:8]))}"
                  f"{' ...' if len(order) > 8 else ''}", first))  # fmt: skip
        put(_fact("ncpus", len(order), f"{len(order)} CPU(s): one entry area each", slots[order[-1]]))
        randomized = order != list(range(len(order)))
        put(_fact("cea_random", randomized, "entry areas at random slots (6.2+)" if randomized
                  else "entry areas at fixed slots (before 6.2, or nokaslr)", first))  # fmt: skip
        facts.update(_vendor(layout.era, cea_lines, order, stride, first))

    # ---- espfix, per-CPU TSS, vsyscall, RAM --------------------------------------------------
    esp = _first(lines, ESPFIX_BASE, ESPFIX_BASE + (1 << 39))
    if esp is not None:
        m = esp.start - ESPFIX_BASE
        addr = (m & 0xFFFF) | ((m >> 16) & ~0xFFFF)
        page = addr >> 12
        if ((addr & 0xFFFF) | ((addr & ~0xFFFF) << 16)) == m and page < ESPFIX_PAGE_SPACE:
            put(_fact("espfix_page", page, f"espfix page_random {page}", esp))
    tss = _in_class(maps, "tss_percpu")
    if tss and pob is not None:
        phys = tuple(t.start - pob[0] for t in tss)
        put(_fact("tss_phys", phys, f"cpu_tss_rw at physical {', '.join(f'{p:#x}' for p in phys[:4])}",
                  _by_line(lines, tss[0].lineno)))  # fmt: skip
    vsys = _covering(kernel_half, VSYSCALL_ADDR)
    tail = next((r for r in reversed(lines) if r.start <= VSYSCALL_ADDR < r.end), None)
    if vsys is not None:
        put(_fact("vsyscall", "emulate", f"vsyscall=emulate: a PTE at {VSYSCALL_ADDR:#x}", vsys))
    elif tail is not None:
        put(_fact("vsyscall", "none", f"vsyscall=xonly or none: no PTE at {VSYSCALL_ADDR:#x}", tail))
    if direct and pob is not None:
        last = max(direct, key=lambda d: d.end)
        top = -(-(last.end - pob[0]) // (2 * MiB)) * 2 * MiB
        ram = max(256 * MiB, min(top, MODEL_RAM_MAX))
        more = f" (the model boots at most {MODEL_RAM_MAX >> 30} GiB)" if top > MODEL_RAM_MAX else ""
        put(_fact("ram", ram, f"RAM {top >> 20} MiB: the direct map's last page{more}", _by_line(lines, last.lineno)))
    return DumpFacts(facts, layout, maps)


_NO: Final = Fact("", None, "")


def _dialect(lines: Sequence[RangeLine], user_end: int) -> Fact:
    """5.6+'s generic walker does not visit the hypervisor guard hole, so the last user-half line
    runs on to where the walk resumes; 4.x-5.5 printed the hole as its own empty pgd line(s)."""
    kernel_start = TOP - user_end
    legacy = next((r for r in lines if r.start == kernel_start), None)
    if legacy is not None:
        return _fact("dialect", "legacy", "legacy ptdump (4.x-5.5): the guard hole has its own line", legacy)
    spans = next((r for r in lines if r.start < user_end and r.end > kernel_start), None)
    return _fact("dialect", "generic", "generic ptdump (5.6+): the guard hole is not walked", spans)


def _covering(lines: Sequence[RangeLine], va: int) -> RangeLine | None:
    return next((r for r in lines if r.present and r.start <= va < r.end), None)


def _base(
    marker: tuple[MarkerLine, RangeLine] | None, first: RangeLine | None
) -> tuple[int, RangeLine | MarkerLine] | None:
    """A randomized base: the lower of where its marker is printed and its region's first mapping,
    rounded down to 1 GiB (KASLR's alignment; the fixed bases are 1 GiB-aligned too)."""
    cands: list[tuple[int, RangeLine | MarkerLine]] = []
    if marker is not None:
        cands.append((marker[1].start, marker[0]))
    if first is not None:
        cands.append((first.start, first))
    if not cands:
        return None
    va, line = min(cands, key=lambda c: c[0])
    return va & ~(PUD_SIZE - 1), line


def _image_sizes(
    image: Sequence[RangeLine], user_view: bool, global_image: bool, pti_on: bool
) -> tuple[int, ImageSizes, RangeLine] | None:
    """_text and the section sizes from the kernel-image mappings, when the dump shows the image
    (kernel tables, or a user view with the global image): text is the executable run from _text,
    the entry-text PMD the global one inside it; rodata the ro NX run from the next 2 MiB; .data
    runs to idt_table's read-only page (the first page of .bss, made ro by set_memory_ro()), .bss
    to the end of the image."""
    if not image or (user_view and not global_image):
        return None
    first = image[0]
    base = first.start
    if base % PMD_SIZE or "NX" in first.flags:
        return None
    text_end = base
    entry = None
    for r in image:
        if "NX" in r.flags or r.start != text_end:
            break
        if entry is None and "GLB" in r.flags and r.level == "pmd" and pti_on and not global_image:
            entry = r.start - base
        text_end = r.end
    ro_start = -(-text_end // PMD_SIZE) * PMD_SIZE
    ro_end = ro_start
    for r in image:
        if r.start < ro_start:
            continue
        if r.start != ro_end or "NX" not in r.flags or "RW" in r.flags:
            break
        ro_end = r.end
    text = text_end - base
    offset = entry if entry is not None else min(ENTRY_TEXT_OFFSET, (text - 16 * 1024) & ~(PMD_SIZE - 1))
    if user_view or ro_end == ro_start:
        return base, ImageSizes(text=text, entry_text_offset=offset, rodata=max(ro_end - ro_start, PAGE_SIZE)), first
    data_start = -(-ro_end // PMD_SIZE) * PMD_SIZE
    rest = [r for r in image if r.start >= data_start]
    idt = next((r for r in rest if r.level == "pte" and r.flags - {"GLB"} == {"NX"} and r.size == PAGE_SIZE), None)
    end = max((r.end for r in rest), default=data_start)
    if idt is None or not data_start < idt.start < end:
        data, bss = max(end - data_start, PAGE_SIZE), 0
    else:
        data, bss = idt.start - data_start, end - idt.start
    sizes = ImageSizes(text=text, entry_text_offset=offset, rodata=ro_end - ro_start, data=data, bss=bss)
    return base, sizes, first


__all__ = ["DumpFacts", "Fact", "read_dump"]
