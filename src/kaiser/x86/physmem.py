"""Sparse, numpy-backed physical memory and a frame allocator with accounting.

A frame costs host memory only once it is allocated as a page table or written to: a machine with
64 GiB of "RAM" holding a few hundred page tables costs a few hundred 4 KiB rows. Frames are 512
little-endian u64 words (SDM §4.5: paging structures are 4 KiB tables of 8-byte entries).
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from kaiser.x86.geometry import PAGE_SIZE

ENTRIES = 512
MIN_MAXPHYADDR = 36  # the range CpuFeatures accepts (SDM §4.1.4: at most 52)
MAX_MAXPHYADDR = 52


class FrameKind(enum.Enum):
    """Why a frame is allocated; page-table frames are one of the costs kaiser reports."""

    PAGE_TABLE = "page-table"
    DATA = "data"


class PhysMemError(ValueError):
    """A physical address outside RAM, a double free, or RAM exhausted."""


@dataclass(frozen=True)
class FrameStats:
    """Frames in use, by kind and by owner tag (`by_tag` counts both kinds; `page_table_by_tag`
    only page-table frames, the cost KPTI adds)."""

    page_table: int
    data: int
    by_tag: dict[str, int]
    page_table_by_tag: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.page_table + self.data


class PhysicalMemory:
    """`size` bytes of RAM with `maxphyaddr` address bits; storage grows with the frames touched."""

    def __init__(self, size: int = 64 << 30, *, maxphyaddr: int = 46, first_free: int = 1 << 20) -> None:
        if not MIN_MAXPHYADDR <= maxphyaddr <= MAX_MAXPHYADDR:
            raise PhysMemError(f"maxphyaddr={maxphyaddr} is outside {MIN_MAXPHYADDR}..{MAX_MAXPHYADDR} (SDM §4.1.4)")
        if size <= 0 or size % PAGE_SIZE:
            raise PhysMemError(f"RAM size {size:#x} must be a positive multiple of 4 KiB")
        if size > 1 << maxphyaddr:
            raise PhysMemError(f"RAM size {size:#x} exceeds the {maxphyaddr}-bit physical address space")
        if first_free < 0 or first_free % PAGE_SIZE or first_free > size:
            raise PhysMemError(f"first free address {first_free:#x} is not a 4 KiB-aligned address inside RAM")
        self.size = size
        self.maxphyaddr = maxphyaddr
        self.frames = np.zeros((16, ENTRIES), dtype=np.uint64)  # storage rows
        self._row_of: dict[int, int] = {}  # pfn -> row in self.frames
        self._next_pfn = first_free // PAGE_SIZE
        self._free_pfns: list[int] = []
        self._reserved: list[tuple[int, int]] = []  # frame ranges taken by reserve()
        self._kind: dict[int, FrameKind] = {}
        self._tag: dict[int, str] = {}
        self._free_rows: list[int] = []

    # ---- storage -------------------------------------------------------------------------
    def _check(self, phys: int) -> int:
        if not 0 <= phys < self.size:
            raise PhysMemError(f"physical address {phys:#x} is outside RAM (size {self.size:#x})")
        return phys // PAGE_SIZE

    def _row(self, pfn: int, create: bool) -> int | None:
        row = self._row_of.get(pfn)
        if row is None and create:
            if self._free_rows:
                row = self._free_rows.pop()
                self.frames[row] = 0
            else:
                row = len(self._row_of)
                if row >= len(self.frames):
                    grown = np.zeros((2 * len(self.frames), ENTRIES), dtype=np.uint64)
                    grown[: len(self.frames)] = self.frames
                    self.frames = grown
            self._row_of[pfn] = row
        return row

    def row_of(self, pfn: int) -> int | None:
        """Storage row of a frame, or None if it was never touched (reads as zeros)."""
        return self._row_of.get(pfn)

    def read_u64(self, phys: int) -> int:
        """Read the aligned 8-byte word at `phys` (untouched memory reads as 0)."""
        if phys % 8:
            raise PhysMemError(f"physical address {phys:#x} is not 8-byte aligned")
        row = self._row(self._check(phys), create=False)
        return 0 if row is None else int(self.frames[row, (phys % PAGE_SIZE) // 8])

    def write_u64(self, phys: int, value: int) -> None:
        """Write the aligned 8-byte word at `phys`."""
        if phys % 8:
            raise PhysMemError(f"physical address {phys:#x} is not 8-byte aligned")
        if not 0 <= value < 1 << 64:
            raise PhysMemError(f"value {value:#x} does not fit in 64 bits")
        row = self._row(self._check(phys), create=True)
        assert row is not None
        self.frames[row, (phys % PAGE_SIZE) // 8] = value

    def read_frame(self, phys: int) -> np.ndarray:
        """A copy of the 512 words of the frame holding `phys`."""
        row = self._row(self._check(phys), create=False)
        return np.zeros(ENTRIES, dtype=np.uint64) if row is None else self.frames[row].copy()

    def table(self, phys: int) -> np.ndarray:
        """The live 512-entry view of the frame at `phys` (created if untouched)."""
        row = self._row(self._check(phys), create=True)
        assert row is not None
        return self.frames[row]

    def _check_span(self, phys: int, length: int) -> None:
        if length < 0:
            raise PhysMemError(f"negative length {length} at physical address {phys:#x}")
        if phys < 0 or phys + length > self.size:
            raise PhysMemError(f"physical range [{phys:#x}, {phys + length:#x}) is outside RAM (size {self.size:#x})")

    def read_bytes(self, phys: int, length: int) -> bytes:
        """Bytes at `phys` (may cross frames)."""
        self._check_span(phys, length)
        out = bytearray()
        while length > 0:
            pfn = self._check(phys)
            off = phys % PAGE_SIZE
            take = min(length, PAGE_SIZE - off)
            row = self._row_of.get(pfn)
            out += bytes(take) if row is None else self.frames[row].view(np.uint8)[off : off + take].tobytes()
            phys += take
            length -= take
        return bytes(out)

    def write_bytes(self, phys: int, data: bytes) -> None:
        """Write bytes at `phys` (may cross frames); nothing is written if the range leaves RAM."""
        self._check_span(phys, len(data))
        pos = 0
        while pos < len(data):
            pfn = self._check(phys)
            off = phys % PAGE_SIZE
            take = min(len(data) - pos, PAGE_SIZE - off)
            row = self._row(pfn, create=True)
            assert row is not None
            self.frames[row].view(np.uint8)[off : off + take] = np.frombuffer(data[pos : pos + take], dtype=np.uint8)
            phys += take
            pos += take

    def touched_frames(self) -> list[int]:
        """Physical addresses of every frame that has storage, ascending."""
        return sorted(pfn * PAGE_SIZE for pfn in self._row_of)

    # ---- allocation ----------------------------------------------------------------------
    def alloc(self, kind: FrameKind, tag: str = "", *, count: int = 1, align: int = 1) -> int:
        """Allocate `count` contiguous zeroed frames aligned to `align` frames; return the address.

        Raises PhysMemError (allocator unchanged) when RAM is exhausted.
        """
        if count <= 0 or align <= 0:
            raise PhysMemError(f"alloc of {count} frame(s) aligned to {align} frame(s): both must be positive")
        if count == 1 and align == 1 and self._free_pfns:
            pfn = self._free_pfns.pop()
        else:
            pfn = -(-self._next_pfn // align) * align
            for lo, hi in self._reserved:  # skip ranges `reserve()` took (sorted, disjoint)
                if pfn < hi and lo < pfn + count:
                    pfn = -(-hi // align) * align
            if (pfn + count) * PAGE_SIZE > self.size:
                raise PhysMemError(
                    f"out of physical memory allocating {count} frame(s) of {kind.value} at {pfn * PAGE_SIZE:#x}"
                    f" (RAM size {self.size:#x})"
                )
            gap = range(self._next_pfn, pfn)  # alignment gap: reusable single frames
            self._free_pfns.extend(p for p in gap if not any(lo <= p < hi for lo, hi in self._reserved))
            self._next_pfn = pfn + count
        for p in range(pfn, pfn + count):
            self._kind[p] = kind
            self._tag[p] = tag
            row = self._row_of.get(p)
            if row is not None:
                self.frames[row] = 0
            elif kind is FrameKind.PAGE_TABLE:
                self._row(p, create=True)
        return pfn * PAGE_SIZE

    def reserve(self, phys: int, size: int, kind: FrameKind, tag: str = "") -> None:
        """Take the frames of [phys, phys+size) for a fixed use (a kernel image loaded at a given
        address); `alloc` never hands them out. They count as allocated frames of `kind`."""
        if phys % PAGE_SIZE or size <= 0 or size % PAGE_SIZE:
            raise PhysMemError(f"reserve of [{phys:#x}, +{size:#x}): must be 4 KiB aligned and positive")
        lo, hi = phys // PAGE_SIZE, (phys + size) // PAGE_SIZE
        self._check(phys)
        self._check(phys + size - 1)
        if any(p in self._kind for p in range(lo, hi)):  # allocated, or reserved before
            raise PhysMemError(f"reserve of [{phys:#x}, +{size:#x}): some frames are already allocated")
        self._reserved = sorted([*self._reserved, (lo, hi)])
        self._free_pfns = [p for p in self._free_pfns if not lo <= p < hi]
        for p in range(lo, hi):
            self._kind[p] = kind
            self._tag[p] = tag

    def free(self, phys: int) -> None:
        """Return one frame to the allocator; its storage is released."""
        pfn = self._check(phys)
        if phys % PAGE_SIZE or pfn not in self._kind:
            raise PhysMemError(f"free of {phys:#x}, which is not an allocated frame")
        del self._kind[pfn]
        del self._tag[pfn]
        row = self._row_of.pop(pfn, None)
        if row is not None:
            self._free_rows.append(row)
        self._free_pfns.append(pfn)

    def kind_of(self, phys: int) -> FrameKind | None:
        return self._kind.get(phys // PAGE_SIZE)

    def tag_of(self, phys: int) -> str | None:
        return self._tag.get(phys // PAGE_SIZE)

    def free_frames(self) -> int:
        """Frames still available to `alloc` (single frames; contiguous runs may be fewer)."""
        return self.size // PAGE_SIZE - self._next_pfn + len(self._free_pfns)

    def frames_of(self, kind: FrameKind) -> int:
        """How many frames of `kind` are allocated (`stats()`'s count, without counting tags)."""
        return list(self._kind.values()).count(kind)

    def stats(self) -> FrameStats:
        """How many frames are allocated, by kind and by tag."""
        kinds = Counter(self._kind.values())
        tags = Counter(self._tag.values())
        pt_tags = Counter(tag for pfn, tag in self._tag.items() if self._kind[pfn] is FrameKind.PAGE_TABLE)
        return FrameStats(kinds[FrameKind.PAGE_TABLE], kinds[FrameKind.DATA], dict(tags), dict(pt_tags))
