"""Which region of a real kernel's address space an address is in, from what the guest reported
(kallsyms and the layout variables read through /proc/kcore), and the kallsyms names of a page.

The regions are format.REGIONS; docs/recording.md says where each boundary comes from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from kaiser.record.format import REGIONS

# The canonical kernel half (SDM Vol. 3A 4.5: bits 63:47 all ones).
KERNEL_HALF: Final = 0xFFFF_8000_0000_0000
# The CPU entry area: P4D slot 508 of 4-level paging, 512 GiB (CPU_ENTRY_AREA_PGD = -4,
# arch/x86/include/asm/pgtable_64_types.h; Documentation/arch/x86/x86_64/mm.rst).
CPU_ENTRY_AREA: Final = (0xFFFF_FE00_0000_0000, 0xFFFF_FE80_0000_0000)
# The vmalloc area's size with 4-level paging: VMALLOC_SIZE_TB = 32 (pgtable_64_types.h).
VMALLOC_SIZE: Final = 32 << 40
PAGE_4K: Final = 12
PAGE_2M: Final = 21


@dataclass(frozen=True)
class Symbol:
    """One /proc/kallsyms line: address, type letter and name."""

    address: int
    type: str
    name: str


@dataclass(frozen=True)
class Layout:
    """The boundaries one booted kernel's regions have: `ranges[region]` is a list of [start, end)."""

    ranges: Mapping[str, list[tuple[int, int]]]

    @classmethod
    def from_guest(cls, symbols: Mapping[str, int], values: Mapping[str, int]) -> Layout:
        """From kallsyms (`symbols`: name -> address) and the variables the guest read (`values`:
        __per_cpu_offset (CPU 0's), pcpu_unit_size, page_offset_base, vmalloc_base)."""
        text = (symbols["_text"], symbols["_etext"])
        entry = (symbols["__entry_text_start"], symbols["__entry_text_end"])
        percpu = (values["__per_cpu_offset"], values["__per_cpu_offset"] + values["pcpu_unit_size"])
        direct = (values["page_offset_base"], values["vmalloc_base"])
        ranges = {
            "entry_text": [entry],
            "kernel_text": [(text[0], entry[0]), (entry[1], text[1])],
            "kernel_data": [(text[1], symbols["_end"])],
            "direct_map": [direct],
            "task_stack": [(values["vmalloc_base"], values["vmalloc_base"] + VMALLOC_SIZE)],
            "cpu_entry_area": [CPU_ENTRY_AREA],
            "percpu": [percpu],  # last: it lies inside the direct map (or vmalloc) and wins
        }
        return cls(ranges)

    @classmethod
    def from_header(cls, regions: Mapping[str, Iterable[Iterable[int]]]) -> Layout:
        out: dict[str, list[tuple[int, int]]] = {}
        for name, spans in regions.items():
            out[name] = [(int(a), int(b)) for a, b in spans]
        return cls(out)

    def to_header(self) -> dict[str, list[list[int]]]:
        return {name: [[a, b] for a, b in spans] for name, spans in self.ranges.items()}

    def classify(self, vaddr: np.ndarray) -> np.ndarray:
        """The region tag (index into REGIONS) of each address; a later range wins over an
        earlier one that contains it."""
        va = np.asarray(vaddr, dtype=np.uint64)
        out = np.full(va.shape, REGIONS.index("other"), dtype=np.uint8)
        out[va < np.uint64(KERNEL_HALF)] = REGIONS.index("user")
        for name, spans in self.ranges.items():
            tag = REGIONS.index(name)
            for a, b in spans:
                if a < b:
                    out[(va >= np.uint64(a)) & (va < np.uint64(b))] = tag
        return out


def page_symbols(symbols: list[Symbol], pages: Iterable[int], shift: int = PAGE_4K) -> list[Symbol]:
    """The symbols on each page (page numbers at `shift`), and the last one before each page (it
    covers the page's start), sorted by address. `symbols` must be sorted by address."""
    addrs = np.array([s.address for s in symbols], dtype=np.uint64)
    keep: set[int] = set()
    for page in pages:
        start, end = page << shift, (page + 1) << shift
        lo = int(np.searchsorted(addrs, np.uint64(start), side="right")) - 1
        hi = int(np.searchsorted(addrs, np.uint64(end), side="left"))
        keep.update(range(max(lo, 0), hi))
    return [symbols[i] for i in sorted(keep)]


def parse_kallsyms(lines: Iterable[str], percpu_base: int = 0) -> list[Symbol]:
    """Kernel symbols (not modules') from /proc/kallsyms lines, sorted by address; per-CPU
    symbols (type A between __per_cpu_start and __per_cpu_end) moved to CPU 0's copy at
    `percpu_base`."""
    raw = []
    for line in lines:
        parts = line.split()
        if len(parts) != 3:  # module symbols have a fourth field, "[module]"
            continue
        try:
            raw.append(Symbol(int(parts[0], 16), parts[1], parts[2]))
        except ValueError:
            continue
    by_name = {s.name: s.address for s in raw}
    lo, hi = by_name.get("__per_cpu_start"), by_name.get("__per_cpu_end")
    out = []
    for s in raw:
        if s.address >= KERNEL_HALF:
            out.append(s)
        elif percpu_base and lo is not None and hi is not None and lo <= s.address < hi and s.type in "Aa":
            out.append(Symbol(percpu_base + s.address, s.type, s.name))
    out.sort(key=lambda s: (s.address, s.name))
    return out
