"""Paging geometry: canonical addresses, indexes, page sizes, the two modes as data."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser.x86.geometry import (
    FIVE_LEVEL,
    FOUR_LEVEL,
    AddressError,
    PagingMode,
    kernel_half_start,
    mode_for,
    user_half_end,
)

MODES = [FOUR_LEVEL, FIVE_LEVEL]
FAST = settings(max_examples=200, derandomize=True)


def test_modes_as_data() -> None:
    assert [lv.entry for lv in FOUR_LEVEL.levels] == ["PML4E", "PDPTE", "PDE", "PTE"]
    assert [lv.entry for lv in FIVE_LEVEL.levels] == ["PML5E", "PML4E", "PDPTE", "PDE", "PTE"]
    assert (FOUR_LEVEL.va_bits, FIVE_LEVEL.va_bits) == (48, 57)
    assert FOUR_LEVEL.page_sizes() == FIVE_LEVEL.page_sizes() == (1 << 30, 1 << 21, 1 << 12)
    assert [FOUR_LEVEL.level_for_size(s) for s in (1 << 30, 1 << 21, 1 << 12)] == [1, 2, 3]
    assert [FIVE_LEVEL.level_for_size(s) for s in (1 << 30, 1 << 21, 1 << 12)] == [2, 3, 4]
    assert mode_for(False) is FOUR_LEVEL and mode_for(True) is FIVE_LEVEL
    with pytest.raises(AddressError, match="0x2000"):
        FOUR_LEVEL.level_for_size(0x2000)


@pytest.mark.parametrize(
    "mode, va, canonical",
    [
        (FOUR_LEVEL, 0, True),
        (FOUR_LEVEL, 0x0000_7FFF_FFFF_FFFF, True),
        (FOUR_LEVEL, 0x0000_8000_0000_0000, False),
        (FOUR_LEVEL, 0xFFFF_7FFF_FFFF_FFFF, False),
        (FOUR_LEVEL, 0xFFFF_8000_0000_0000, True),
        (FOUR_LEVEL, 0xFFFF_FFFF_FFFF_FFFF, True),
        (FOUR_LEVEL, 0x00FF_8000_0000_0000, False),
        (FIVE_LEVEL, 0x0000_8000_0000_0000, True),
        (FIVE_LEVEL, 0x00FF_FFFF_FFFF_FFFF, True),
        (FIVE_LEVEL, 0x0100_0000_0000_0000, False),
        (FIVE_LEVEL, 0xFF00_0000_0000_0000, True),
        (FIVE_LEVEL, 0xFEFF_FFFF_FFFF_FFFF, False),
        (FOUR_LEVEL, -1, False),
        (FOUR_LEVEL, 1 << 64, False),
    ],
)
def test_canonical_boundaries(mode: PagingMode, va: int, canonical: bool) -> None:
    assert mode.is_canonical(va) is canonical
    if not canonical:
        with pytest.raises(AddressError, match="0x"):
            mode.check_canonical(va)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_halves(mode: PagingMode) -> None:
    end, start = user_half_end(mode), kernel_half_start(mode)
    assert mode.is_canonical(end - 1) and not mode.is_canonical(end)
    assert mode.is_canonical(start) and not mode.is_canonical(start - 1)
    assert start == (1 << 64) - end


@FAST
@given(st.sampled_from(MODES), st.integers(0, (1 << 64) - 1))
def test_canonicalize_sign_extends(mode: PagingMode, va: int) -> None:
    c = mode.canonicalize(va)
    assert mode.is_canonical(c)
    assert c & ((1 << mode.va_bits) - 1) == va & ((1 << mode.va_bits) - 1)
    assert mode.canonicalize(c) == c
    if mode.is_canonical(va):
        assert c == va


@FAST
@given(st.sampled_from(MODES), st.integers(0, (1 << 64) - 1))
def test_indexes_rebuild_the_address(mode: PagingMode, va: int) -> None:
    va = mode.canonicalize(va)
    rebuilt = sum(lv.index(va) << lv.shift for lv in mode.levels) | (va & 0xFFF)
    assert mode.canonicalize(rebuilt) == va
    assert all(0 <= lv.index(va) < 512 for lv in mode.levels)
