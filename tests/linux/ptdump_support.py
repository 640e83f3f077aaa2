"""Test helpers: unwrap the real ptdump samples, and build page tables that should print them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kaiser.linux.pgtable_types import LEVEL_NAMES, level_names
from kaiser.linux.ptdump_parse import RangeLine, Record, range_lines
from kaiser.x86.bits import PTE
from kaiser.x86.geometry import FOUR_LEVEL, PagingMode
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import PhysicalMemory

SAMPLES = Path(__file__).parent / "data" / "ptdump-samples"
_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\] ")
_RANGE_START = re.compile(r"0x[0-9a-f]{16}-0x")
_GREP_PREFIX = re.compile(r"^[a-z_]+:\t+")  # "current_kernel:\t" (sample 03 quotes grep over files)


@dataclass(frozen=True)
class Block:
    """One verbatim block of a sample: its title and its ptdump lines (wrappers removed)."""

    title: str
    lines: list[str]


def sample_blocks(path: Path) -> list[Block]:
    """The ptdump lines of each verbatim block of a sample file: quoted-printable decoded (sample 03),
    mail quoting ("> ") and grep file-name prefixes removed, non-ptdump prose dropped. dmesg
    timestamps are kept: the parser handles them itself."""
    text = path.read_text()
    if "quoted-printable" in text.split("----- VERBATIM")[0]:
        head, _, body = text.partition("----- VERBATIM -----\n")
        body = body.replace("=\n", "").replace("=20", " ")
        text = head + "----- VERBATIM -----\n" + body
    blocks: list[Block] = []
    current: Block | None = None
    for line in text.split("\n"):
        if line.startswith("----- VERBATIM"):
            current = Block(line.strip("- "), [])
            blocks.append(current)
            continue
        if line.startswith("----- END") or current is None:
            current = None if line.startswith("----- END") else current
            continue
        line = line.removeprefix(">").removeprefix(" ") if line.startswith(">") else line
        line = _GREP_PREFIX.sub("", line)
        bare = _TIMESTAMP.sub("", line)
        if _RANGE_START.match(bare) or bare.startswith(("---[", "... ")):
            current.lines.append(line)
    return blocks


_FLAG_BITS = {"USR": PTE.US, "RW": PTE.RW, "PWT": PTE.PWT, "PCD": PTE.PCD, "GLB": PTE.G, "NX": PTE.NX}
_NONE_ENTRY = int(PTE.G | PTE.A)  # a present-less, non-zero entry (like PAGE_NONE): prints blank, breaks runs


def build_from_records(records: list[Record], mode: PagingMode = FOUR_LEVEL) -> PageTable:
    """A page-table tree whose dump reproduces the given range lines: a present line becomes
    leaves of its level with its flags; a blank line at level L makes sure the tables above L exist
    (so the walk reaches L and finds empty entries). Where two adjacent lines print the same text,
    the second gets different invisible raw bits (A, or a non-zero present-less entry), which is
    what splits such lines on a real machine too."""
    mem = PhysicalMemory(1 << 46, maxphyaddr=46)
    table = PageTable(mem, mode)
    names = list(level_names(mode))
    prev: RangeLine | None = None
    for rec in range_lines(records):
        depth = names.index(rec.level)
        span = mode.levels[depth].span
        twin = (prev is not None and prev.end == rec.start and prev.level == rec.level
                and prev.present == rec.present and prev.flags == rec.flags)  # fmt: skip
        if rec.present:
            flags = 0
            for name in rec.flags:
                flags |= int(_FLAG_BITS.get(name, 0))
            if twin:
                flags |= int(PTE.A)
            table.map(rec.start, 0, rec.size, flags, page_size=span)
            if "PAT" in rec.flags:
                bit = 1 << 7 if rec.level == "pte" else 1 << 12
                for va in range(rec.start, rec.end, span):
                    slot = table.entry_slot(va, depth)
                    assert slot is not None
                    mem.write_u64(slot, mem.read_u64(slot) | bit)
        elif depth > 0:
            for va in range(rec.start, rec.end, span):
                slot = table.entry_slot(va, depth, create=True)
                assert slot is not None
                if twin:
                    mem.write_u64(slot, _NONE_ENTRY)
        prev = rec
    return table


assert LEVEL_NAMES == ("pgd", "p4d", "pud", "pmd", "pte")
