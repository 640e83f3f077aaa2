"""The data caches for the compiled engine: `kaiser.x86.cache.Caches` in numba.

Operation for operation the reference (`kaiser.x86.cache`), in the same order, so the one LRU
clock of the hierarchy ticks at the same moments and every counter moves the same way
(`tests/x86/test_engine_cache.py` replays random streams through both and compares counters and
final state). The rules themselves (replacement, inclusion, prefetchers) are documented once, in
`kaiser.x86.cache_geometry`.

State (built by `kaiser.x86.engine.Engine`, copied in and out by `load_caches`/`store_caches`,
which convert it exactly to and from the reference's (sets, ways) arrays):

* `CT`: level by level (L1I, L1D, L2, LLC), one row per set: the set's tags, then its LRU
  stamps, so a set's whole state is one contiguous run of host cache lines (an LLC set of 16
  ways: 256 B) instead of three arrays far apart. A valid way's tag is 2 x line + prefetched
  flag; an invalid way's tag is -2 + flag (the flag kept for `store_caches`). A way's stamp is
  (stamp << shift) | way number, an invalid way's (-1 << shift) | way number: every stamp of a
  set differs and the smallest is the reference's victim (its first invalid way, else its first
  least recently used), found by one min. Scans compare every way without an early exit, on a
  view of the row (no index wraparound), so numba emits vector compares and a max/min.
* `CS[j]`: the reference's stamp of an invalid way (way j of the levels' ways in order), which
  the engine never reads: only `store_caches` gives it back. `CP`: unused (empty), kept so that
  `engine_core`'s signatures need not change.
* `CD[level]`: row base in `CT`, sets, ways, set mask (sets - 1 for a power of two, else -1),
  index of the level's way 0 in `CS`, shift (bits of a way number).
* `CH`: on/off, inclusive LLC, next-line on, streamer distance, degree, stream count, the clock.
* `STR[e]`: the streamer table (page, last line, highest line looked at).

Numba's cache of the compiled replay is stamped with every engine source, this module among
them (`kaiser.x86.engine_jit.ENGINE_SOURCES`): an edit here compiles afresh.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from kaiser.x86.engine_jit import inline, jit

LV_L1I, LV_L1D, LV_L2, LV_LLC = range(4)
CD_BASE, CD_SETS, CD_WAYS, CD_MASK, CD_WAYS0, CD_SHIFT = range(6)
CD_FIELDS: Final = 6
CH_ON, CH_INCLUSIVE, CH_NEXT_LINE, CH_DISTANCE, CH_DEGREE, CH_STREAMS, CH_CLOCK = range(7)
CH_FIELDS: Final = 7
KIND_FETCH, KIND_DATA, KIND_WALK = 0, 1, 2  # = kaiser.x86.cache.KIND_*
PAGE_LINES: Final = 64

# The cache fields of `kaiser.x86.counters.TlbCounters`, in order; they follow the TLB counters in the
# engine's counter array (`kaiser.x86.engine_core.COUNTER_NAMES`).
CACHE_COUNTER_NAMES: Final = (
    "l1i_hits",
    "l1i_misses",
    "l1d_hits",
    "l1d_misses",
    "l2_hits",
    "l2_misses",
    "llc_hits",
    "llc_misses",
    "dram_reads",
    "pf_nl_issued",
    "pf_nl_useful",
    "pf_l2_issued",
    "pf_l2_useful",
    "llc_back_invalidations",
    "walk_loads_l1",
    "walk_loads_l2",
    "walk_loads_llc",
    "walk_loads_dram",
)
FIRST: Final = 32  # index of the first cache counter (after the 32 TLB counters)
(
    C_L1I_HITS,
    C_L1I_MISSES,
    C_L1D_HITS,
    C_L1D_MISSES,
    C_L2_HITS,
    C_L2_MISSES,
    C_LLC_HITS,
    C_LLC_MISSES,
    C_DRAM_READS,
    C_PF_NL_ISSUED,
    C_PF_NL_USEFUL,
    C_PF_L2_ISSUED,
    C_PF_L2_USEFUL,
    C_LLC_BACK_INVALIDATIONS,
    C_WALK_L1,
    C_WALK_L2,
    C_WALK_LLC,
    C_WALK_DRAM,
) = range(FIRST, FIRST + 18)

# The engine's two decorators (kaiser.x86.engine_jit): `jit` compiles once for every caller.
_jit = jit
_inline = inline


@_inline
def set_row(CD: np.ndarray, lv: int, line: int) -> int:
    """Index in `CT` of `line`'s set row in level `lv` (set = line mod sets)."""
    mask = CD[lv, CD_MASK]
    s = line & mask if mask >= 0 else line % CD[lv, CD_SETS]
    return CD[lv, CD_BASE] + s * 2 * CD[lv, CD_WAYS]


@_inline
def find_in(CT: np.ndarray, row: int, ways: int, line: int) -> int:
    """The index in `CT` of the tag holding `line` in the set row at `row`, or -1 (every way
    compared, no early exit: a set holds a line at most once, and a loop without a branch on the
    data is a vector max)."""
    key = 2 * line + 1
    tags = CT[row : row + ways]  # a view: indices from 0 up need no wraparound test
    w = -1
    for k in range(ways):
        w = max(w, k if tags[k] | 1 == key else -1)
    return row + w if w >= 0 else -1


@_inline
def find(CT: np.ndarray, CD: np.ndarray, lv: int, line: int) -> int:
    """`CacheArray.find`: the index of the tag holding `line` in level `lv`, or -1."""
    return find_in(CT, set_row(CD, lv, line), CD[lv, CD_WAYS], line)


@_inline
def tick(CH: np.ndarray) -> int:
    """Advance the hierarchy's LRU clock and return it."""
    CH[CH_CLOCK] += 1
    return CH[CH_CLOCK]


@_inline
def touch(CT: np.ndarray, CD: np.ndarray, CH: np.ndarray, lv: int, i: int) -> None:
    """Stamp the way whose tag is at `i` with the next tick, keeping its way number (the low
    `shift` bits of its stamp)."""
    j = i + CD[lv, CD_WAYS]
    shift = CD[lv, CD_SHIFT]
    CT[j] = (tick(CH) << shift) | (CT[j] & ((1 << shift) - 1))


@_inline
def fill(CT: np.ndarray, CD: np.ndarray, CH: np.ndarray, lv: int, line: int, pf: int) -> int:
    """`Caches._fill`: `line` into the first invalid way of its set, else the least recently used
    (first smallest stamp, as `np.argmin`); returns the line evicted (-1: none). A way's stamp
    here is (stamp << shift) | way and an invalid way's (-1 << shift) | way, so the smallest is
    unique and is the reference's victim: one vector min."""
    ways = CD[lv, CD_WAYS]
    shift = CD[lv, CD_SHIFT]
    row = set_row(CD, lv, line)
    stamps = CT[row + ways : row + 2 * ways]
    m = stamps[0]
    for k in range(1, ways):
        m = min(m, stamps[k])
    w = m & ((1 << shift) - 1)
    t = CT[row + w]
    CT[row + w] = 2 * line + pf
    CT[row + ways + w] = (tick(CH) << shift) | w
    return t >> 1


@_inline
def invalidate(CT: np.ndarray, CS: np.ndarray, CD: np.ndarray, lv: int, line: int) -> bool:
    """`CacheArray.invalidate`: the way holding `line` becomes invalid (its stamp and prefetch
    flag kept for `store_caches`: the stamp in `CS`, the flag in the tag, -2 | pf)."""
    ways = CD[lv, CD_WAYS]
    shift = CD[lv, CD_SHIFT]
    row = set_row(CD, lv, line)
    i = find_in(CT, row, ways, line)
    if i < 0:
        return False
    w = i - row
    CS[CD[lv, CD_WAYS0] + (row - CD[lv, CD_BASE]) // 2 + w] = CT[i + ways] >> shift
    CT[i + ways] = (-1 << shift) | w
    CT[i] = -2 | (CT[i] & 1)
    return True


@_inline
def fill_llc(CT: np.ndarray, CS: np.ndarray, CD: np.ndarray, CH: np.ndarray, C: np.ndarray, line: int) -> None:
    """`Caches._fill_llc`: an inclusive LLC back-invalidates the L1I, L1D and L2 copies of the
    line it evicts."""
    evicted = fill(CT, CD, CH, LV_LLC, line, 0)
    if CH[CH_INCLUSIVE] and evicted >= 0:
        for lv in (LV_L1I, LV_L1D, LV_L2):
            if invalidate(CT, CS, CD, lv, evicted):
                C[C_LLC_BACK_INVALIDATIONS] += 1


@_inline
def fill_l2(CT: np.ndarray, CS: np.ndarray, CD: np.ndarray, CH: np.ndarray, C: np.ndarray, line: int, pf: int) -> None:
    """`Caches._fill_l2`: a non-inclusive LLC is filled by L2's victims."""
    evicted = fill(CT, CD, CH, LV_L2, line, pf)
    if not CH[CH_INCLUSIVE] and evicted >= 0 and find(CT, CD, LV_LLC, evicted) < 0:
        fill_llc(CT, CS, CD, CH, C, evicted)


@_inline
def llc_read(
    CT: np.ndarray, CS: np.ndarray, CD: np.ndarray, CH: np.ndarray, C: np.ndarray, line: int, demand: bool
) -> int:
    """`Caches._llc_read`: 3 if the LLC holds the line, else 4 (DRAM; an inclusive LLC fills)."""
    i = find(CT, CD, LV_LLC, line)
    if i >= 0:
        touch(CT, CD, CH, LV_LLC, i)
        if demand:
            C[C_LLC_HITS] += 1
        return 3
    if demand:
        C[C_LLC_MISSES] += 1
    C[C_DRAM_READS] += 1
    if CH[CH_INCLUSIVE]:
        fill_llc(CT, CS, CD, CH, C, line)
    return 4


@_inline
def stream(
    CT: np.ndarray, CS: np.ndarray, CD: np.ndarray, CH: np.ndarray, C: np.ndarray, STR: np.ndarray, line: int
) -> None:
    """`Caches._stream`: the L2 streamer, one forward stream per 4 KiB page."""
    page = line // PAGE_LINES
    e = page % CH[CH_STREAMS]
    if STR[e, 0] == page and line > STR[e, 1]:
        nxt = max(STR[e, 2], line) + 1
        end = min(line + CH[CH_DISTANCE], page * PAGE_LINES + PAGE_LINES - 1)
        for _ in range(CH[CH_DEGREE]):
            if nxt > end:
                break
            if find(CT, CD, LV_L2, nxt) < 0:
                C[C_PF_L2_ISSUED] += 1
                llc_read(CT, CS, CD, CH, C, nxt, False)
                fill_l2(CT, CS, CD, CH, C, nxt, 1)
            nxt += 1
        STR[e, 2] = max(STR[e, 2], nxt - 1)
    elif STR[e, 0] != page:
        STR[e, 0] = page
        STR[e, 2] = line
    STR[e, 1] = line


@_jit
def l2_request(
    CT: np.ndarray,
    CS: np.ndarray,
    CD: np.ndarray,
    CH: np.ndarray,
    C: np.ndarray,
    STR: np.ndarray,
    line: int,
    demand: bool,
) -> int:
    """`Caches._l2_request`: a demand miss or a next-line prefetch from L1; trains the streamer."""
    i = find(CT, CD, LV_L2, line)
    if i >= 0:
        touch(CT, CD, CH, LV_L2, i)
        if demand:
            C[C_L2_HITS] += 1
            if CT[i] & 1:
                C[C_PF_L2_USEFUL] += 1
                CT[i] -= 1
        served = 2
    else:
        if demand:
            C[C_L2_MISSES] += 1
        served = llc_read(CT, CS, CD, CH, C, line, demand)
        fill_l2(CT, CS, CD, CH, C, line, 0)
    if CH[CH_DISTANCE]:
        stream(CT, CS, CD, CH, C, STR, line)
    return served


@_jit
def l1_miss(
    CT: np.ndarray, CS: np.ndarray, CD: np.ndarray, CH: np.ndarray, C: np.ndarray, STR: np.ndarray, line: int, kind: int
) -> int:
    """The miss half of `Caches.access`: below L1, the L1 fill, the next-line prefetch."""
    lv = LV_L1I if kind == KIND_FETCH else LV_L1D
    if kind == KIND_FETCH:
        C[C_L1I_MISSES] += 1
    else:
        C[C_L1D_MISSES] += 1
    served = l2_request(CT, CS, CD, CH, C, STR, line, True)
    fill(CT, CD, CH, lv, line, 0)
    nxt = line + 1
    if kind == KIND_DATA and CH[CH_NEXT_LINE] and nxt % PAGE_LINES and find(CT, CD, LV_L1D, nxt) < 0:
        C[C_PF_NL_ISSUED] += 1
        l2_request(CT, CS, CD, CH, C, STR, nxt, False)
        fill(CT, CD, CH, LV_L1D, nxt, 1)
    return served


@_inline
def access(
    CT: np.ndarray,
    CS: np.ndarray,
    CP: np.ndarray,
    CD: np.ndarray,
    CH: np.ndarray,
    C: np.ndarray,
    STR: np.ndarray,
    pa: int,
    kind: int,
) -> None:
    """`Caches.access`: one demand access of `kind` at physical address `pa` (the L1 hit inline)."""
    line = pa >> 6
    lv = LV_L1I if kind == KIND_FETCH else LV_L1D
    i = find_in(CT, set_row(CD, lv, line), CD[lv, CD_WAYS], line)
    if i >= 0:
        touch(CT, CD, CH, lv, i)
        if kind == KIND_FETCH:
            C[C_L1I_HITS] += 1
        else:
            C[C_L1D_HITS] += 1
        if CT[i] & 1:
            C[C_PF_NL_USEFUL] += 1
            CT[i] -= 1
        served = 1
    else:
        served = l1_miss(CT, CS, CD, CH, C, STR, line, kind)
    if kind == KIND_WALK:
        C[C_WALK_L1 + served - 1] += 1
