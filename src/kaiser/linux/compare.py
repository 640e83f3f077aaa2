"""Our model against a real kernel: the same debugfs table, region by region.

`compare_dump()` takes a real `/sys/kernel/debug/page_tables/*` dump, boots the model with the
switches the real machine had (`ModelSwitches`, read from a ``meta.json`` beside the dump when
there is one -- tools/realdumps writes it -- or inferred from the dump), dumps the same table of
the model (`kernel`: init_mm; `current_kernel` / `current_user`: a process's kernel / user PGD; a
``-ldt`` file: a process that called modify_ldt()), and classifies the kernel half of both with
the audit's classes (`kaiser.linux.audit_policy`: cpu_entry_area, entry_text, espfix, vsyscall,
tss_percpu, ldt, direct_map, ...). Per class it reports where they differ:

* ``only-real`` / ``only-model`` -- the class is mapped in one dump and not the other;
* ``size`` -- different number of bytes mapped; ``count`` -- different number of ranges;
* ``flags`` -- different sets of printed flags; ``levels`` -- different page-table levels;
* ``placement`` -- same sizes and counts, different addresses.

User-space ranges are not compared (the processes differ). Every difference is looked up in
`EXPLANATIONS` (what the real kernel does, why, and the model change that would match it, if
any); docs/real-kernel.md lists the same set. An unexplained difference makes the report fail.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from kaiser.inputs import InputError, read_text
from kaiser.linux.audit import DumpLayout, audit_dump, infer_layout, skipped_by_region
from kaiser.linux.audit_policy import policy_for
from kaiser.linux.debugfs import TABLES, spawn_reader, table_tree
from kaiser.linux.dumpinfo import MODEL_RAM_MAX, Fact, read_dump
from kaiser.linux.kernel import Kernel, KernelConfig, Task
from kaiser.linux.layout import (
    CPU_ENTRY_AREA_PGD,
    FIXADDR_TOP,
    KERNEL_IMAGE_SIZE_KASLR,
    P4D_SHIFT,
    PAGE_SIZE,
    START_KERNEL_MAP,
    TOP,
    Bases,
    GiB,
    ImageSizes,
    MiB,
)
from kaiser.linux.ptdump import Dialect, flag_text, ptdump, size_parts
from kaiser.linux.ptdump_parse import MarkerLine, Record, parse_ptdump
from kaiser.linux.variants import get_variant
from kaiser.x86.hexrepr import hex_fields
from kaiser.x86.physmem import PhysMemError

KINDS: Final = ("only-real", "only-model", "size", "count", "flags", "levels", "placement")
CPU_ENTRY_AREA_BASE: Final = (CPU_ENTRY_AREA_PGD << P4D_SHIFT) % TOP


# ---- switches --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSwitches(KernelConfig):
    """The `KernelConfig` that makes the model match the real machine, plus where each choice
    came from."""

    sources: tuple[str, ...] = ()  # each switch in words, with where it came from
    facts: tuple[Fact, ...] = ()

    @property
    def pti_on(self) -> bool:
        """pti=on (forced) rather than auto: no kernel-image clone (pti_kernel_image_global_ok())."""
        return self.pti == "on"


def _meta(dump: Path) -> dict[str, object] | None:
    """meta.json beside the dump, if there is one (tools/realdumps writes it); one that is there but
    unreadable, not JSON or not an object is an `InputError` rather than silently other switches."""
    path = dump.parent / "meta.json"
    if not os.path.lexists(path):
        return None
    text = read_text(path, "meta.json beside the dump")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"meta.json: not JSON ({exc.msg}, column {exc.colno})", line=exc.lineno) from None
    except RecursionError:
        raise InputError(path, "meta.json: JSON nested too deeply") from None
    except ValueError as exc:  # an integer past Python's digit limit
        raise InputError(path, f"meta.json: not usable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, f"meta.json: a JSON {type(data).__name__}, not an object")
    return data


def _qemu_ram(cmd: str) -> int | None:
    m = re.search(r"(?:^|\s)-m\s+(\d{1,7})([MG]?)\b", cmd)
    if not m:
        return None
    return int(m.group(1)) * (GiB if m.group(2) == "G" else MiB)


def table_of(path: Path) -> tuple[str, bool]:
    """(debugfs table, process has an LDT) from a file name like ``current_user-ldt.txt``."""
    stem = path.name.split(".")[0]
    ldt = stem.endswith("-ldt")
    table = stem.removesuffix("-ldt")
    return (table if table in TABLES else "current_user"), ldt


def _pti_mode(pti: str | None, cmd: dict[str, Fact], *, isolating: bool, global_image: bool) -> tuple[str, Fact]:
    """The pti= mode to boot the model with, and where it came from: the caller, the command line
    (on/auto), nopti when the dump shows no isolation, else what the kernel image's G bit implies."""
    if pti is not None:
        return pti, Fact("pti_mode", pti, f"pti={pti}", "given")
    if "pti" in cmd and cmd["pti"].value in ("on", "auto"):
        return str(cmd["pti"].value), cmd["pti"]
    if not isolating:  # "on" is unused: the model is nopti
        return "on", Fact("pti_mode", "off", "modelled as nopti: the dump shows no isolation", "dump")
    # no global image: pti=on gives the same tables as pti=auto with PCID; on AMD only pti=on isolates
    pti_v = "auto" if global_image else "on"
    why = f"modelled as pti={pti_v}: the kernel image is {'global' if global_image else 'not global'}"
    return pti_v, Fact("pti_mode", pti_v, why, "dump")


def switches_for(
    dump: Path,
    records: Sequence[Record],
    variant: str,
    *,
    pcid: bool | None = None,
    la57: bool | None = None,
    seed: int = 0,
    pti: str | None = None,
    vendor: str | None = None,
    vsyscall: str | None = None,
    cpus: int | None = None,
    cmdline: str | None = None,
    cpuinfo: str | None = None,
) -> ModelSwitches:
    """Switches matching the real machine. Each comes from, in order: the caller (``given``: the
    command's options), the dump itself (`kaiser.linux.dumpinfo.read_dump`, with the line that shows
    it), the kernel command line (`cmdline`), /proc/cpuinfo's text (`cpuinfo`), meta.json beside the
    dump (tools/realdumps writes one), and otherwise a stated assumption."""
    get_variant(variant)
    meta = _meta(dump)
    info = read_dump(records)
    facts: dict[str, Fact] = {}
    meta_cmd = str(meta.get("kernel_cmdline", "")) if meta else ""
    cmd = cmdline_facts(cmdline, "cmdline") if cmdline is not None else cmdline_facts(meta_cmd, "meta.json")
    cpu = cpuinfo_facts(cpuinfo, "cpuinfo") if cpuinfo is not None else _meta_cpu(meta)

    def pick(name: str, given: object, *others: dict[str, Fact], default: object, why: str) -> object:
        if given is not None:
            facts[name] = Fact(name, given, _words(name, given), "given")
        elif name in info:
            facts[name] = info.facts[name]
        else:
            found = next((o[name] for o in others if name in o), None)
            facts[name] = found or Fact(name, default, f"{_words(name, default)}: {why}", "assumed")
        return facts[name].value

    pti_seen = bool(info.get("pti"))
    if "pti" in cmd and cmd["pti"].value == "off" and "pti" in info and pti_seen:
        facts["contradiction"] = Fact("contradiction", True, "the command line says nopti, the dump shows PTI", "dump")
    facts["pti"] = info.facts["pti"] if "pti" in info else cmd.get("pti", Fact("pti", True, "PTI on", "assumed"))
    isolating = facts["pti"].value not in (False, "off")
    global_image = bool(info.get("global_image"))
    if pcid is None and global_image:
        pcid_v = False
        facts["pcid"] = Fact("pcid", False, "PCID off: Linux makes the kernel image global only without PCID",
                             "dump", info.facts["global_image"].line, info.facts["global_image"].shown)  # fmt: skip
    else:
        pcid_v = bool(pick("pcid", pcid, cpu, default=True, why="a dump cannot tell (--pcid/--no-pcid)"))
    vendor_v = str(pick("vendor", vendor, cpu, default="intel", why="no entry area in the dump"))
    pti_v, facts["pti_mode"] = _pti_mode(pti, cmd, isolating=isolating, global_image=global_image)
    name = variant
    if not isolating and get_variant(variant).isolating:
        name = "nopti"
    elif info.get("era") == "4.15" and variant == "linux":
        name = "linux-4.15"  # the dump's layout is 4.15-4.19's: compare with that era's design
    kaslr = bool(pick("kaslr", None, cmd, default=True, why="no base in the dump"))
    la57_v = bool(pick("la57", la57, cpu, default=False, why="4-level"))
    ncpus = int(pick("ncpus", cpus, cpu, default=2, why="no entry area in the dump"))  # type: ignore[call-overload]
    if ncpus > 64:  # KernelConfig's limit: the others' entry areas and TSS clones will differ
        facts["cpus_cap"] = Fact("cpus_cap", 64, f"the model boots 64 of the {ncpus} CPUs", "assumed")
    vsys = str(pick("vsyscall", vsyscall, cmd, default="none", why="no fixmap in the dump"))
    ram_default = _qemu_ram(str(meta.get("qemu_command", ""))) if meta else None
    if ram_default is not None and not 256 * MiB <= ram_default <= MODEL_RAM_MAX:
        ram_default = None  # no model machine of that size (KernelConfig; MODEL_RAM_MAX)
    meta_ram = (
        {"ram": Fact("ram", ram_default, f"RAM {ram_default >> 20} MiB: qemu -m", "meta.json")} if ram_default else {}
    )
    ram = int(pick("ram", None, meta_ram, default=KernelConfig().ram, why="a user view does not show RAM"))  # type: ignore[call-overload]
    tss = info.get("tss_phys") if ncpus == len(info.get("tss_phys") or ()) else None  # type: ignore[arg-type]
    if isinstance(tss, tuple) and tss and max(tss) + (1 << 20) > ram:
        ram = -(-(max(tss) + (1 << 20)) // (2 * MiB)) * 2 * MiB  # room for the real per-CPU pages
    slots = info.get("cea_slots")
    slots = slots if isinstance(slots, tuple) and len(slots) == ncpus else None
    try:
        found = [info.get(n) for n in ("page_offset_base", "vmalloc_base", "vmemmap_base", "kernel_base")]
        bases: Bases | None = Bases(*(v if isinstance(v, int) else None for v in found))
    except ValueError:  # bases no kernel would have (a damaged dump): the model draws its own
        bases = None
    build = _build_choices(records, info.layout, meta, facts)
    image = info.get("image")
    if isinstance(image, ImageSizes):
        build["image"] = image
    elif "entry_offset" in info.facts:
        build["image"] = replace(build.get("image") or ImageSizes(), entry_text_offset=int(info.get("entry_offset")))  # type: ignore[call-overload]
    esp = info.get("espfix_page")
    for key, fact in info.facts.items():  # the rest of what the dump shows, as evidence
        facts.setdefault(key, fact)
    sources = tuple(f.describe() for f in facts.values())
    kw: dict[str, Any] = dict(
        variant=name, pcid=pcid_v, la57=la57_v, kaslr=kaslr, seed=seed, ncpus=min(ncpus, 64), ram=ram,
        vsyscall=vsys, pti=pti_v, vendor=vendor_v, bases=bases, espfix_page=esp if isinstance(esp, int) else None,
        cea_slots=slots if slots and ncpus <= 64 else None, tss_phys=tss if isinstance(tss, tuple) else None,
        cea_random=bool(info.get("cea_random")), sources=sources, facts=tuple(facts.values()), **build,
    )  # fmt: skip
    # placements no machine could have (a damaged dump) are given up one by one, saying so
    for drop in ("", "tss_phys", "cea_slots", "espfix_page", "bases", "image", "fixmap_pages", "kaslr_image_size"):
        if drop:
            kw.pop(drop, None)
            kw["sources"] = (*kw["sources"], f"{drop}: what the dump shows is not a placement the model can take")
        try:
            return ModelSwitches(**kw)
        except ValueError as exc:
            last = exc
    raise InputError(dump, f"no model machine matches this dump: {last}")


def _words(name: str, value: object) -> str:
    if name == "pcid":
        return f"PCID {'on' if value else 'off'}"
    if name == "ncpus":
        return f"{value} CPU(s)"
    if name == "ram" and isinstance(value, int):
        return f"RAM {value >> 20} MiB"
    if name == "la57":
        return f"{'5' if value else '4'}-level paging"
    if name == "kaslr":
        return f"KASLR {'on' if value else 'off'}"
    return f"{name} {value}"


def cmdline_facts(text: str, source: str) -> dict[str, Fact]:
    """What a kernel command line says (pti=, nopti, mitigations=off, nokaslr, vsyscall=)."""
    out: dict[str, Fact] = {}
    for arg in text.split():
        key, _, value = arg.partition("=")
        if arg in ("nopti", "pti=off") or (key == "mitigations" and value == "off"):
            out["pti"] = Fact("pti", "off", f"PTI off: {arg}", source)
        elif key == "pti" and value in ("on", "auto"):
            out["pti"] = Fact("pti", value, f"pti={value}", source)
        elif arg == "nokaslr":
            out["kaslr"] = Fact("kaslr", False, "KASLR off: nokaslr", source)
        elif key == "vsyscall" and value in ("emulate", "xonly", "none"):
            out["vsyscall"] = Fact("vsyscall", value, f"vsyscall={value}", source)
    return out


def cpuinfo_facts(text: str, source: str) -> dict[str, Fact]:
    """What /proc/cpuinfo says: vendor_id, the number of processors, pcid and la57 in the flags."""
    out: dict[str, Fact] = {}
    procs = re.findall(r"^processor\s*:", text, flags=re.M)
    if procs:
        out["ncpus"] = Fact("ncpus", len(procs), f"{len(procs)} CPU(s)", source)
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", text, flags=re.M)
    if vendor:
        v = "intel" if vendor.group(1) == "GenuineIntel" else "amd" if vendor.group(1) == "AuthenticAMD" else None
        if v:
            out["vendor"] = Fact("vendor", v, f"vendor {vendor.group(1)}", source)
    flags = re.search(r"^flags\s*:(.*)$", text, flags=re.M)
    if flags:
        names = set(flags.group(1).split())
        out["pcid"] = Fact("pcid", "pcid" in names, f"PCID {'on' if 'pcid' in names else 'off'}: cpu flags", source)
        out["la57"] = Fact("la57", "la57" in names, f"{'5' if 'la57' in names else '4'}-level: cpu flags", source)
    return out


def _meta_cpu(meta: dict[str, object] | None) -> dict[str, Fact]:
    cpu = meta.get("guest_cpu") if meta else None
    cpu = cpu if isinstance(cpu, dict) else {}
    flags = cpu.get("flags_of_interest")
    flags = flags if isinstance(flags, dict) else {}
    out: dict[str, Fact] = {}
    if "pcid" in flags:
        out["pcid"] = Fact("pcid", bool(flags["pcid"]), f"PCID {'on' if flags['pcid'] else 'off'}: guest CPU flags",
                           "meta.json")  # fmt: skip
    if isinstance(cpu.get("nproc"), int) and cpu["nproc"] >= 1:
        out["ncpus"] = Fact("ncpus", cpu["nproc"], f"{cpu['nproc']} CPU(s): guest nproc", "meta.json")
    if cpu.get("vendor") in ("GenuineIntel", "AuthenticAMD"):
        v = "intel" if cpu["vendor"] == "GenuineIntel" else "amd"
        out["vendor"] = Fact("vendor", v, f"vendor {cpu['vendor']}", "meta.json")
    return out


def _release(meta: dict[str, object] | None) -> tuple[int, int] | None:
    m = re.match(r"(\d{1,4})\.(\d{1,4})", str(meta.get("kernel_version", ""))) if meta else None  # bounded: int()
    return (int(m.group(1)), int(m.group(2))) if m else None


_MEMORY_LINE: Final = re.compile(
    r"Memory: .*\((\d{1,9})K kernel code, (\d{1,9})K rwdata, (\d{1,9})K rodata, (\d{1,9})K init, (\d{1,9})K bss"
)


def _image_sizes(meta: dict[str, object] | None) -> ImageSizes | None:
    """Section sizes from mem_init_print_info()'s boot line, rounded up to pages: text and
    rodata are exact; .data and .bss are only their own sizes (the real image also keeps
    per-CPU, init and brk pages among them)."""
    lines = meta.get("dmesg_excerpt", []) if meta else []
    for line in lines if isinstance(lines, list) else []:
        m = _MEMORY_LINE.search(str(line))
        if m:
            code, rwdata, rodata, _init, bss = (-(-int(v) * 1024 // PAGE_SIZE) * PAGE_SIZE for v in m.groups())
            return ImageSizes(text=code, rodata=rodata, data=rwdata, bss=bss)
    return None


def _build_choices(
    records: Sequence[Record],
    layout: DumpLayout,
    meta: dict[str, object] | None,
    facts: dict[str, Fact],
) -> dict[str, Any]:
    """The kernel's build choices that show in its own dump: a RANDOMIZE_BASE build (where module
    space starts), the number of permanent fixmap slots (where "Fixmap Area" is printed); and the
    section sizes from the boot's 'Memory:' line in meta.json (used when the dump does not show
    the image)."""
    out: dict[str, Any] = {}
    marks = {r.name: r for r in records if isinstance(r, MarkerLine)}
    modules = next((lo for name, lo, _ in layout.regions if name == "modules"), None)
    if modules is not None and "Modules" in marks:
        out["kaslr_image_size"] = modules == START_KERNEL_MAP + KERNEL_IMAGE_SIZE_KASLR
        m = marks["Modules"]
        facts["modules"] = Fact("modules", modules, f"module space at {modules:#x}: built "
                                f"{'with' if out['kaslr_image_size'] else 'without'} RANDOMIZE_BASE", "dump",
                                m.lineno, m.render())  # fmt: skip
    fixmap = marker_positions(records).get("Fixmap Area")
    # the marker shows FIXADDR_START only where the walk is at 4K there: a 2 MiB-aligned position is
    # the first break of a coarser level (a user view mapping only the vsyscall page)
    pages = (FIXADDR_TOP - fixmap) // PAGE_SIZE if fixmap is not None else 0
    if fixmap is not None and fixmap % PAGE_SIZE == 0 and fixmap % (2 << 20) and 512 < pages < 2048:
        out["fixmap_pages"] = (FIXADDR_TOP - fixmap) // PAGE_SIZE
        m = marks["Fixmap Area"]
        facts["fixmap"] = Fact("fixmap", out["fixmap_pages"], f"{out['fixmap_pages']} permanent fixmap slots",
                               "dump", m.lineno, m.render())  # fmt: skip
    image = _image_sizes(meta)
    if image is not None:
        out["image"] = image
        facts.setdefault("image", Fact("image", image, f"image: {image.text >> 10}K text, {image.rodata >> 10}K "
                         f"rodata, {image.data >> 10}K data, {image.bss >> 10}K bss: the boot's 'Memory:' line",
                         "meta.json"))  # fmt: skip
    return out


def _marker_starts(records: Sequence[Record]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    pending: list[str] = []
    for rec in records:
        if isinstance(rec, MarkerLine):
            pending.append(rec.name)
        elif pending and hasattr(rec, "start"):
            out += [(n, rec.start) for n in pending]
            pending = []
    return out


def boot_model(sw: ModelSwitches, *, ldt: bool) -> tuple[Kernel, Task]:
    """The model booted with `sw`, the debugfs reader running (with an LDT when `ldt`)."""
    kernel = Kernel.boot(sw)
    return kernel, spawn_reader(kernel, ldt=ldt)


def boot_aligned(sw: ModelSwitches, *, ldt: bool) -> tuple[ModelSwitches, Kernel, Task]:
    """`boot_model`, giving up the real machine's placements one by one (per-CPU pages, then the
    bases) when the model cannot hold them (e.g. a per-CPU page inside the model's kernel image);
    what was given up is said in the switches' sources."""
    tries = (
        (sw, ""),
        (replace(sw, tss_phys=None), "per-CPU TSS pages not placed as in the dump"),
        (replace(sw, tss_phys=None, bases=None), "per-CPU TSS pages and bases not placed as in the dump"),
        (
            replace(
                sw,
                tss_phys=None,
                bases=None,
                image=None,
                cea_slots=None,
                espfix_page=None,
                fixmap_pages=KernelConfig().fixmap_pages,
                kaslr_image_size=None,
            ),
            "nothing placed as in the dump",
        ),  # fmt: skip
    )
    for attempt, (cfg, what) in enumerate(tries):
        try:
            kernel, task = boot_model(cfg, ldt=ldt)
        except (ValueError, PhysMemError) as exc:
            if attempt == len(tries) - 1:
                raise
            last = str(exc)
            continue
        if what:
            cfg = replace(cfg, sources=(*cfg.sources, f"{what}: {last}"))
        return cfg, kernel, task
    raise AssertionError("unreachable")


def model_text(kernel: Kernel, task: Task, table: str, dialect: Dialect = "generic") -> str:
    """The model's text of debugfs `table` in `dialect` (`kaiser.linux.debugfs.table_tree`:
    `current_user` without PTI is the kernel PGD, as in Linux)."""
    return ptdump(table_tree(kernel, task, table), kernel.layout.markers, dialect=dialect)


# ---- per-class summaries ---------------------------------------------------------------------
@hex_fields("ranges")
@dataclass(frozen=True)
class ClassSummary:
    """The present kernel-half ranges of one class in one dump."""

    klass: str
    ranges: tuple[tuple[int, int, str, str], ...]  # (start, end, flag text, level)
    skipped: int = 0  # lines Linux did not print (ESPfix cap) in this class's region

    @property
    def size(self) -> int:
        return sum(e - s for s, e, _, _ in self.ranges)

    @property
    def count(self) -> int:
        return len(self.ranges)

    @property
    def flag_sets(self) -> tuple[str, ...]:
        return tuple(sorted({f for _, _, f, _ in self.ranges}))

    @property
    def levels(self) -> tuple[str, ...]:
        return tuple(sorted({lv for _, _, _, lv in self.ranges}))

    def describe(self) -> str:
        more = f" (+{self.skipped} lines not printed)" if self.skipped else ""
        return f"{self.count} range(s){more}, {_size(self.size)}, {'/'.join(self.levels)}"


def summarize(records: Sequence[Record]) -> dict[str, ClassSummary]:
    """Kernel-half present ranges by audit class."""
    report = audit_dump(records, policy_for("linux"))
    layout = infer_layout(records)
    skipped = skipped_by_region(records, layout)
    by: dict[str, list[tuple[int, int, str, str]]] = {}
    for m in report.mappings:
        by.setdefault(m.klass, []).append((m.start, m.end, flag_text(m.flags), m.level))
    return {k: ClassSummary(k, tuple(v), skipped.get(k, 0)) for k, v in sorted(by.items())}


def _size(n: int) -> str:
    if n == 0:
        return "0"
    num, unit = size_parts(n)
    return f"{num}{unit}"


# ---- explanations --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Explanation:
    """Why a difference is expected. `fix` is the model change that would remove it ("" = none:
    the difference is inherent, e.g. boot-time randomness or a different process)."""

    reason: str
    fix: str = ""
    # "placement": boot-time randomness the alignment could not remove; "contents": the running
    # kernel's own data, allocations and modules, which a model of the page-table design does not
    # reproduce -- reported as a class of their own, never as the design's differences.
    category: str = "placement"


CATEGORIES: Final = ("placement", "contents")


# Keys are (class, kind); `*` as the kind matches every kind of that class. Each entry is backed by
# the real 6.1 dumps in tests/linux/data/real (see docs/real-kernel.md for the same list).
EXPLANATIONS: Final[dict[tuple[str, str], Explanation]] = {
    # ---- what PTI maps into the user tables (current_user) -----------------------------------
    ("espfix", "size"): Explanation(
        "follows from espfix/placement: both map the espfix page 65,536 times and ptdump prints the "
        "first 16 lines (pages and the 60K gaps between them); when the random page is the first of "
        "its 64K (0xffffff0000000000 in our nokaslr boot) those 16 lines hold 8 pages, else 7."
    ),
    ("espfix", "count"): Explanation("see espfix/size: 7 or 8 printed pages, 131,057 or 131,059 lines skipped."),
    ("espfix", "placement"): Explanation(
        "the PUD index and the page inside each 64K are random per boot (espfix_index_random), even "
        "with nokaslr (init_espfix_random()): 0xffffff0000000000, 0xffffff1400009000, "
        "0xffffff3a0000a000, 0xffffff100000e000 in our four boots. The model's seed draws its own."
    ),
    ("tss_percpu", "placement"): Explanation(
        "cpu_tss_rw sits in each CPU's per-CPU chunk at a direct-map address set by the boot "
        "allocator (0xffff88801f406000, CPU 1 +1M with nokaslr); the model's per-CPU frames come from "
        "its own allocator."
    ),
    ("entry_text", "placement"): Explanation(
        "KASLR: the entry-text PMD moves with the random kernel base (0xffffffff8ac00000 in our "
        "pti=on boot); the model's seed draws another base. Without KASLR both are 0xffffffff81c00000."
    ),
    # ---- the kernel's own tables (kernel, current_kernel; nopti's current_user) ------------------
    ("kernel_text", "*"): Explanation(
        "text and rodata match (the model takes their sizes from the boot's 'Memory:' line: 12M ro x "
        "pmd, the entry-text PMD GLB, an 8K ro x pte tail; 8M + 940K ro NX rodata), and both make "
        "idt_table's page read-only (set_memory_ro()); it sits at 0xffffffff83313000 in the real "
        "image and at the start of the model's .bss, whose other contents differ (see kernel_data). "
        "With KASLR the image sits at another random base, and the real one shows two more ro NX "
        "ranges above .bss (32K and 800K) whose origin these dumps do not tell.",
        category="contents",
    ),
    ("kernel_data", "*"): Explanation(
        "the real data region holds more than .data and .bss (2338K + 17344K on the boot line): "
        "per-CPU and page-aligned data, the freed init sections (a 2824K hole), brk pages, and 4K "
        "splits from set_memory_*(); the model maps .data and .bss back to back with the largest "
        "pages.",
        category="contents",
    ),
    ("direct_map", "*"): Explanation(
        "the real direct map covers the e820 RAM of the 512 MiB guest (to 0x1ffe0000: the firmware "
        "keeps the top 128K), makes the kernel image's alias ro NX, the real-mode trampoline at "
        "0x98000 ro/x, and has many 4K splits (set_memory_*); page 0 is a 4K RW NX pte. The model "
        "maps all RAM RW NX with the largest pages. With KASLR page_offset_base is random per boot.",
        category="contents",
    ),
    ("vmalloc", "*"): Explanation(
        "vmalloc space holds the running kernel's allocations besides stacks: ioremaps (RW PCD), a "
        "4M buffer, 64K-128K buffers, 12K at the top (0xffffe8ffffc00000); the model maps only task "
        "stacks there.",
        category="contents",
    ),
    ("task_stack", "*"): Explanation(
        "16K RW NX runs between guard pages in vmalloc space: the real kernel has one per thread "
        "(about 50 at boot, kernel threads included), the model one per process.",
        category="contents",
    ),
    ("vmemmap", "*"): Explanation(
        "struct pages of the real memory sections (8M pmd for 512 MiB); only differs when the "
        "model's RAM differs, or, with KASLR, by the random vmemmap_base.",
        category="contents",
    ),
    ("modules", "*"): Explanation(
        "module space holds a 2M ro x region of 4K PTEs at MODULES_VADDR (most likely the BPF program "
        "pack) and ptdump_mod itself (4K ro x, 4K ro NX, 8K RW NX); the model maps one 8-page module.",
        category="contents",
    ),
    # ---- region bounds (where ptdump prints the markers) ------------------------------------------
    ("marker:Low Kernel Mapping", "placement"): Explanation(
        "the marker is printed at the first break at or above page_offset_base (§6.3; the model takes "
        "the base from the dump): in the kernel tables the real direct map's page 0 is a 4K page, so "
        "the break comes at +4K (0xffff888000001000), the model's first page is 2M (+2M). With the "
        "base not aligned (a damaged dump) it is KASLR's random page_offset_base.",
        category="contents",
    ),
    ("marker:vmalloc() Area", "placement"): Explanation("KASLR: vmalloc_base is random per boot."),
    ("marker:Vmemmap", "placement"): Explanation("KASLR: vmemmap_base is random per boot."),
}


def explanation_for(klass: str, kind: str) -> Explanation | None:
    """The documented reason for a difference of `kind` in `klass` (a class-wide ``*`` entry if none for the kind)."""
    return EXPLANATIONS.get((klass, kind)) or EXPLANATIONS.get((klass, "*"))


REACH: Final = (
    "changes what user mode can reach: under PTI every kernel mapping of the user tables is "
    "deliberate, so only a difference of placement may be explained"
)


def reach_rule(kind: str, *, user_view: bool, isolating: bool) -> str:
    """Why a difference may not be explained ("" when it may): in the user view of an isolating
    kernel anything but placement changes which kernel bytes user mode (or Meltdown) can reach --
    e.g. a pti=auto kernel without PCID cloning all of its text global (§3.3)."""
    return REACH if user_view and isolating and kind != "placement" else ""


# ---- the comparison --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    """One class/kind where the real dump and the model differ, with the explanation if any."""

    klass: str
    kind: str
    real: str
    model: str
    explanation: Explanation | None
    blocked: str = ""  # why no explanation may apply (`reach_rule`)

    @property
    def key(self) -> tuple[str, str]:
        return self.klass, self.kind

    @property
    def explained(self) -> bool:
        return self.explanation is not None

    @property
    def category(self) -> str:
        """``placement``, ``contents`` (the running kernel's own), or ``unexplained``."""
        return self.explanation.category if self.explanation else "unexplained"

    def describe(self) -> str:
        why = f"explained: {self.explanation.reason}" if self.explanation else "NOT explained"
        return f"{self.klass}/{self.kind}: real {self.real}; model {self.model} ({why})"


@dataclass(frozen=True)
class CompareReport:
    """One real dump against the model: the switches the model ran with, both sides' class
    summaries, the differences and the model's text."""

    source: str
    table: str
    ldt: bool
    switches: ModelSwitches
    real: dict[str, ClassSummary]
    model: dict[str, ClassSummary]
    differences: tuple[Difference, ...]
    model_dump: str = field(repr=False)
    model_table: str = ""  # the model's table compared (what the dump shows)
    user_view: bool = False  # the table user mode runs on (current_user, or any table without PTI)

    @property
    def unexplained(self) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if not d.explained)

    def of(self, category: str) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if d.category == category)

    @property
    def keys(self) -> set[tuple[str, str]]:
        return {d.key for d in self.differences}

    @property
    def exit_status(self) -> int:
        return 1 if self.unexplained else 0

    def describe(self) -> str:
        n = len(self.unexplained)
        verdict = f"{n} not explained" if n else "all explained"
        head = f"{self.source} ({self.table}) vs model {self.switches.variant}"
        return f"{head}: {len(self.differences)} difference(s), {verdict}"


def _ranges_text(s: ClassSummary, limit: int = 4) -> str:
    parts = [f"0x{a:016x}+{_size(b - a)}" for a, b, _, _ in s.ranges[:limit]]
    if s.count > limit:
        parts.append(f"... ({s.count - limit} more)")
    return ", ".join(parts)


def diff_summaries(
    real: dict[str, ClassSummary],
    model: dict[str, ClassSummary],
    *,
    user_view: bool = False,
    isolating: bool = True,
) -> list[Difference]:
    """Per-class differences, each with its explanation -- none where `reach_rule` forbids one."""
    out: list[Difference] = []

    def add(klass: str, kind: str, r: str, m: str) -> None:
        blocked = reach_rule(kind, user_view=user_view, isolating=isolating)
        out.append(Difference(klass, kind, r, m, None if blocked else explanation_for(klass, kind), blocked))

    for klass in sorted(set(real) | set(model)):
        r, m = real.get(klass), model.get(klass)
        if r is None or m is None:
            s = r or m
            assert s is not None
            text = f"{s.describe()}: {_ranges_text(s)} [{', '.join(s.flag_sets)}]"
            add(klass, "only-real" if m is None else "only-model", text if r else "-", text if m else "-")
            continue
        # lines Linux did not print (ESPfix's cap) hide bytes: unequal skips mean unequal mappings
        real_count, model_count = r.count + r.skipped, m.count + m.skipped
        if r.size != m.size or r.skipped != m.skipped:
            add(klass, "size", f"{_size(r.size)}{' + skipped lines' if r.skipped else ''}",
                f"{_size(m.size)}{' + skipped lines' if m.skipped else ''}")  # fmt: skip
        if real_count != model_count or r.skipped != m.skipped:
            add(klass, "count", r.describe(), m.describe())
        if r.flag_sets != m.flag_sets:
            add(klass, "flags", ", ".join(r.flag_sets), ", ".join(m.flag_sets))
        if r.levels != m.levels:
            add(klass, "levels", "/".join(r.levels), "/".join(m.levels))
        same_shape = r.size == m.size and real_count == model_count
        if _first(r) != _first(m) or (same_shape and [x[:2] for x in r.ranges] != [x[:2] for x in m.ranges]):
            add(klass, "placement", _ranges_text(r), _ranges_text(m))
    return out


def _first(s: ClassSummary) -> int:
    """Where a class starts. For the entry area: the first per-CPU page (the RO IDT page at the
    base is always there and would hide where CPU 0's area is placed)."""
    if s.klass == "cpu_entry_area":
        base = CPU_ENTRY_AREA_BASE + PAGE_SIZE
        return min((max(a, base) for a, b, _, _ in s.ranges if b > base), default=0)
    return s.ranges[0][0] if s.ranges else 0


def marker_positions(records: Sequence[Record]) -> dict[str, int]:
    """Where each marker is printed: the start of the first range line after it (§6.3: a marker
    is printed at the first break at or above its address)."""
    return dict(_marker_starts(records))


def diff_markers(real: Sequence[Record], model: Sequence[Record]) -> list[Difference]:
    """Markers printed in both dumps at different addresses: the region bounds differ."""
    rp, mp = marker_positions(real), marker_positions(model)
    out = []
    for name in rp:
        if name in mp and rp[name] != mp[name]:
            klass = f"marker:{name}"
            out.append(
                Difference(
                    klass, "placement", f"0x{rp[name]:016x}", f"0x{mp[name]:016x}", explanation_for(klass, "placement")
                )
            )
    return out


def compare_dump(
    records: Sequence[Record],
    path: Path,
    variant: str = "linux",
    *,
    pcid: bool | None = None,
    la57: bool | None = None,
    seed: int = 0,
    **machine: Any,
) -> CompareReport:
    """Compare a real dump (already parsed; `path` names the file and locates meta.json). The
    table compared is what the dump shows (`read_dump`), the file name only where it agrees;
    `machine` holds `switches_for`'s other options (pti, vendor, vsyscall, cpus, cmdline, cpuinfo)."""
    named, named_ldt = table_of(path)
    sw = switches_for(path, records, variant, pcid=pcid, la57=la57, seed=seed, **machine)
    facts = {f.name: f for f in sw.facts}
    table = str(facts["table"].value) if "table" in facts else named
    ldt = named_ldt or bool(facts["ldt"].value if "ldt" in facts else False)
    try:
        sw, kernel, task = boot_aligned(sw, ldt=ldt)
    except (ValueError, PhysMemError) as exc:  # the dump describes a machine the model cannot boot
        raise InputError(path, f"no model machine matches this dump: {exc}") from None
    dialect: Dialect = "legacy" if facts.get("dialect") and facts["dialect"].value == "legacy" else "generic"
    text = model_text(kernel, task, table, dialect)
    model_records = parse_ptdump(text, f"model:{sw.variant}/{table}")
    real, model = summarize(records), summarize(model_records)
    user_view = table == "current_user" or not kernel.variant.isolating
    diffs = diff_summaries(real, model, user_view=user_view, isolating=kernel.variant.isolating)
    diffs += diff_markers(records, model_records)
    shown = named if _named(path) else table
    return CompareReport(str(path), shown, ldt, sw, real, model, tuple(diffs), text, table, user_view)


def _named(path: Path) -> bool:
    return path.name.split(".")[0].removesuffix("-ldt") in TABLES


def compare_file(path: str | Path, variant: str = "linux", **kw: object) -> CompareReport:
    """`compare_dump` of a file (`PtdumpParseError` on malformed text)."""
    from kaiser.linux.ptdump_parse import parse_ptdump_file

    path = Path(path)
    return compare_dump(parse_ptdump_file(path), path, variant, **kw)  # type: ignore[arg-type]


__all__ = [
    "EXPLANATIONS",
    "KINDS",
    "ClassSummary",
    "CompareReport",
    "Difference",
    "Explanation",
    "ModelSwitches",
    "boot_model",
    "compare_dump",
    "compare_file",
    "diff_summaries",
    "explanation_for",
    "model_text",
    "summarize",
    "switches_for",
    "table_of",
]
