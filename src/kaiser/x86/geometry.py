"""Paging geometry as data: 4-level and 5-level paging are two tuples of levels.

Page size falls out of the level at which a walk stops (the habit of Volatility 3's Intel layer).
Levels are named as the SDM names their entries (an OS's names for them are the OS layer's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Binary size units and the 4 KiB page, defined here once for every layer (IEC 80000-13 prefixes;
# SDM Vol. 3A §4.5: a 4-KByte page is the smallest translation, its offset bits 11:0).
KiB: Final = 1 << 10
MiB: Final = 1 << 20
GiB: Final = 1 << 30
TiB: Final = 1 << 40
PAGE_SIZE: Final = 4 * KiB


class AddressError(ValueError):
    """A linear address that is non-canonical, misaligned or otherwise unusable."""


@dataclass(frozen=True)
class Level:
    """One level of the walk. `shift` is the lowest VA bit it indexes; `leaf_ok` says whether
    PS=1 makes it a leaf (PDPTE: 1 GiB, PDE: 2 MiB; SDM §4.5, Tables 4-15..4-19)."""

    entry: str  # SDM name of an entry at this level
    shift: int
    leaf_ok: bool

    @property
    def span(self) -> int:
        """Bytes mapped by one entry of this level."""
        return 1 << self.shift

    def index(self, va: int) -> int:
        return (va >> self.shift) & 0x1FF


PML5 = Level("PML5E", 48, False)
PML4 = Level("PML4E", 39, False)
PDPT = Level("PDPTE", 30, True)
PD = Level("PDE", 21, True)
PT = Level("PTE", 12, True)


@dataclass(frozen=True)
class PagingMode:
    """4-level (48-bit linear addresses) or 5-level (57-bit, CR4.LA57) IA-32e paging."""

    name: str
    levels: tuple[Level, ...]

    @property
    def va_bits(self) -> int:
        return self.levels[0].shift + 9

    @property
    def leaf(self) -> Level:
        return self.levels[-1]

    def is_canonical(self, va: int) -> bool:
        """Bits 63:va_bits-1 all equal (SDM Vol. 1 §3.3.7.1)."""
        top = va >> (self.va_bits - 1)
        return top == 0 or top == (1 << (65 - self.va_bits)) - 1

    def check_canonical(self, va: int, what: str = "address") -> None:
        if not 0 <= va < 1 << 64:
            raise AddressError(f"{what} {va:#x} is not a 64-bit value")
        if not self.is_canonical(va):
            raise AddressError(f"{what} {va:#018x} is not canonical for {self.va_bits}-bit linear addresses")

    def canonicalize(self, va: int) -> int:
        """Sign-extend the low `va_bits` bits of `va` to 64 bits."""
        va &= (1 << self.va_bits) - 1
        if va >> (self.va_bits - 1):
            va |= ((1 << 64) - 1) ^ ((1 << self.va_bits) - 1)
        return va

    def page_sizes(self) -> tuple[int, ...]:
        """Page sizes this mode can map, largest first (1 GiB, 2 MiB, 4 KiB)."""
        return tuple(lv.span for lv in self.levels if lv.leaf_ok)

    def level_for_size(self, size: int) -> int:
        """Depth (0 = top) of the level whose leaves map `size` bytes."""
        for depth, lv in enumerate(self.levels):
            if lv.leaf_ok and lv.span == size:
                return depth
        raise AddressError(f"page size {size:#x} is not 4 KiB, 2 MiB or 1 GiB")


FOUR_LEVEL = PagingMode("4-level", (PML4, PDPT, PD, PT))
FIVE_LEVEL = PagingMode("5-level", (PML5, PML4, PDPT, PD, PT))


def mode_for(la57: bool) -> PagingMode:
    """The paging mode: 5-level with LA57, else 4-level."""
    return FIVE_LEVEL if la57 else FOUR_LEVEL


def user_half_end(mode: PagingMode) -> int:
    """First address above the canonical lower half (0x0000_8000_0000_0000 for 4-level)."""
    return 1 << (mode.va_bits - 1)


def kernel_half_start(mode: PagingMode) -> int:
    """First address of the canonical upper half (0xffff_8000_0000_0000 for 4-level)."""
    return (1 << 64) - user_half_end(mode)


def format_size(size: int) -> str:
    """A byte count in the largest binary unit that divides it: `4 KiB`, `2 MiB`, `1 GiB`."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} B"


def human_size(size: int) -> str:
    """A byte count for people: `4 KiB`, `2 MiB`, `4.1 GiB` (exact when a unit divides it)."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.0f} {unit}" if size % (1 << shift) == 0 else f"{value:.1f} {unit}"
    return f"{size} B"
