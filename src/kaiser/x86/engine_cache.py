"""The data caches for the compiled engine: `kaiser.x86.cache.Caches` in numba.

Operation for operation the reference (`kaiser.x86.cache`), in the same order, so the one LRU
clock of the hierarchy ticks at the same moments and every counter moves the same way
(`tests/x86/test_engine_cache.py` replays random streams through both and compares counters and
final state). The rules themselves (replacement, inclusion, prefetchers) are documented once, in
`kaiser.x86.cache_geometry`.

State: one int64 array `CM` (built by `kaiser.x86.engine.Engine`, copied in and out by
`load_caches`/`store_caches`, which convert it exactly to and from the reference's (sets, ways)
arrays). One array, not six: numba passes an array to a function that is not inlined field by
field (data pointer, shape, strides, ...), and `l1_miss`/`l2_request` are called on every L1
miss; one array also lets the geometry sit in the host cache lines next to the first rows.

* `CM[CD_FIELDS * level + CD_*]` (level: L1I, L1D, L2, LLC): the index in `CM` of the level's
  first set row, sets, ways, set mask (sets - 1 for a power of two, else -1), the index in `CM`
  of the level's first saved stamp, shift (bits of a way number).
* `CM[CM_HIER + CH_*]`: on/off, inclusive LLC, next-line on, streamer distance, degree, stream
  count, the clock. `CM[CM_STREAMS_AT]`: the index of the streamer table.
* Set rows, level by level, one row per set: the set's tags, then its LRU stamps, so a set's
  whole state is one contiguous run of host cache lines (an LLC set of 16 ways: 256 B). A valid
  way's tag is 2 x line + prefetched flag; an invalid way's tag is -2 + flag (the flag kept for
  `store_caches`). A way's stamp is (stamp << shift) | way number, an invalid way's
  (-1 << shift) | way number: every stamp of a set differs and the smallest is the reference's
  victim (its first invalid way, else its first least recently used), found by one min. Scans
  compare every way without an early exit, on a view of the row (no index wraparound), so
  numba emits vector compares and a max/min. A lookup's row goes on to the fill that follows
  it (`fill` takes the row), not computed again.
* Saved stamps, one per way in the levels' order: the reference's stamp of an invalid way,
  which the engine never reads (only `store_caches` gives it back).
* The streamer table: per stream, page, last line, highest line looked at.

Numba's cache of the compiled replay is stamped with every engine source, this module among
them (`kaiser.x86.engine_jit.ENGINE_SOURCES`): an edit here compiles afresh.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from kaiser.x86.engine_jit import inline, jit, prefetch

LV_L1I, LV_L1D, LV_L2, LV_LLC = range(4)
CD_BASE, CD_SETS, CD_WAYS, CD_MASK, CD_WAYS0, CD_SHIFT = range(6)
CD_FIELDS: Final = 6
CH_ON, CH_INCLUSIVE, CH_NEXT_LINE, CH_DISTANCE, CH_DEGREE, CH_STREAMS, CH_CLOCK = range(7)
CH_FIELDS: Final = 7
CM_HIER: Final = 4 * CD_FIELDS  # where the CH_* fields start in CM
CM_STREAMS_AT: Final = CM_HIER + CH_FIELDS  # CM[CM_STREAMS_AT]: index of the streamer table
CM_HEADER: Final = CM_STREAMS_AT + 1  # the set rows start here
CM_ON: Final = CM_HIER + CH_ON
KIND_FETCH, KIND_DATA, KIND_WALK = 0, 1, 2  # = kaiser.x86.cache.KIND_*
PAGE_LINES: Final = 64  # lines of a 4 KiB page (the streamer's unit): line >> 6 is its page

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
def set_row(CM: np.ndarray, lv: int, line: int) -> int:
    """Index in `CM` of `line`'s set row in level `lv` (set = line mod sets)."""
    d = CD_FIELDS * lv
    mask = CM[d + CD_MASK]
    s = line & mask if mask >= 0 else line % CM[d + CD_SETS]
    return CM[d + CD_BASE] + s * 2 * CM[d + CD_WAYS]


@_inline
def find_in(CM: np.ndarray, row: int, ways: int, line: int) -> int:
    """The index in `CM` of the tag holding `line` in the set row at `row`, or -1 (every way
    compared, no early exit: a set holds a line at most once, and a loop without a branch on the
    data is a vector max)."""
    key = 2 * line + 1
    tags = CM[row : row + ways]  # a view: indices from 0 up need no wraparound test
    w = -1
    for k in range(ways):
        w = max(w, k if tags[k] | 1 == key else -1)
    return row + w if w >= 0 else -1


@_inline
def lookup(CM: np.ndarray, lv: int, line: int) -> tuple[int, int]:
    """`CacheArray.find`: (the index of `line`'s set row in level `lv`, the index of the tag
    holding `line` there or -1); the row goes on to a fill if the line is absent."""
    row = set_row(CM, lv, line)
    return row, find_in(CM, row, CM[CD_FIELDS * lv + CD_WAYS], line)


@_inline
def tick(CM: np.ndarray) -> int:
    """Advance the hierarchy's LRU clock and return it."""
    CM[CM_HIER + CH_CLOCK] += 1
    return CM[CM_HIER + CH_CLOCK]


@_inline
def touch(CM: np.ndarray, lv: int, i: int) -> None:
    """Stamp the way whose tag is at `i` with the next tick, keeping its way number (the low
    `shift` bits of its stamp)."""
    d = CD_FIELDS * lv
    j = i + CM[d + CD_WAYS]
    shift = CM[d + CD_SHIFT]
    CM[j] = (tick(CM) << shift) | (CM[j] & ((1 << shift) - 1))


@_inline
def fill(CM: np.ndarray, lv: int, row: int, line: int, pf: int) -> int:
    """`Caches._fill`: `line` (its set row in level `lv` at `row`, where its lookup found it
    absent) into the first invalid way of its set, else the least recently used (first smallest
    stamp, as `np.argmin`); returns the line evicted (-1: none). A way's stamp here is
    (stamp << shift) | way and an invalid way's (-1 << shift) | way, so the smallest is unique
    and is the reference's victim: one vector min."""
    d = CD_FIELDS * lv
    ways = CM[d + CD_WAYS]
    shift = CM[d + CD_SHIFT]
    stamps = CM[row + ways : row + 2 * ways]
    m = stamps[0]
    for k in range(1, ways):
        m = min(m, stamps[k])
    w = m & ((1 << shift) - 1)
    t = CM[row + w]
    CM[row + w] = 2 * line + pf
    CM[row + ways + w] = (tick(CM) << shift) | w
    return t >> 1


@_inline
def invalidate(CM: np.ndarray, lv: int, line: int) -> bool:
    """`CacheArray.invalidate`: the way holding `line` becomes invalid (its stamp and prefetch
    flag kept for `store_caches`: the stamp among the saved stamps, the flag in the tag, -2 | pf)."""
    d = CD_FIELDS * lv
    ways = CM[d + CD_WAYS]
    shift = CM[d + CD_SHIFT]
    row, i = lookup(CM, lv, line)
    if i < 0:
        return False
    w = i - row
    CM[CM[d + CD_WAYS0] + ((row - CM[d + CD_BASE]) >> 1) + w] = CM[i + ways] >> shift
    CM[i + ways] = (-1 << shift) | w
    CM[i] = -2 | (CM[i] & 1)
    return True


@_inline
def fill_llc(CM: np.ndarray, C: np.ndarray, line: int, row: int) -> None:
    """`Caches._fill_llc`: an inclusive LLC back-invalidates the L1I, L1D and L2 copies of the
    line it evicts."""
    evicted = fill(CM, LV_LLC, row, line, 0)
    if CM[CM_HIER + CH_INCLUSIVE] and evicted >= 0:
        for lv in (LV_L1I, LV_L1D, LV_L2):
            if invalidate(CM, lv, evicted):
                C[C_LLC_BACK_INVALIDATIONS] += 1


@_inline
def fill_l2(CM: np.ndarray, C: np.ndarray, line: int, row: int, pf: int) -> None:
    """`Caches._fill_l2`: a non-inclusive LLC is filled by L2's victims."""
    evicted = fill(CM, LV_L2, row, line, pf)
    if not CM[CM_HIER + CH_INCLUSIVE] and evicted >= 0:
        llc_row, i = lookup(CM, LV_LLC, evicted)
        if i < 0:
            fill_llc(CM, C, evicted, llc_row)


@_inline
def llc_read(CM: np.ndarray, C: np.ndarray, line: int, row: int, demand: bool) -> int:
    """`Caches._llc_read`: 3 if the LLC holds the line, else 4 (DRAM; an inclusive LLC fills).
    `row`: the line's LLC set row (`set_row`)."""
    i = find_in(CM, row, CM[CD_FIELDS * LV_LLC + CD_WAYS], line)
    if i >= 0:
        touch(CM, LV_LLC, i)
        if demand:
            C[C_LLC_HITS] += 1
        return 3
    if demand:
        C[C_LLC_MISSES] += 1
    C[C_DRAM_READS] += 1
    if CM[CM_HIER + CH_INCLUSIVE]:
        fill_llc(CM, C, line, row)
    return 4


@_inline
def stream(CM: np.ndarray, C: np.ndarray, line: int) -> None:
    """`Caches._stream`: the L2 streamer, one forward stream per 4 KiB page."""
    page = line >> 6
    n = CM[CM_HIER + CH_STREAMS]
    e = CM[CM_STREAMS_AT] + 3 * (page & (n - 1) if n & (n - 1) == 0 else page % n)
    if CM[e] == page and line > CM[e + 1]:
        nxt = max(CM[e + 2], line) + 1
        end = min(line + CM[CM_HIER + CH_DISTANCE], line | (PAGE_LINES - 1))
        for _ in range(CM[CM_HIER + CH_DEGREE]):
            if nxt > end:
                break
            row, i = lookup(CM, LV_L2, nxt)
            if i < 0:
                C[C_PF_L2_ISSUED] += 1
                llc_read(CM, C, nxt, set_row(CM, LV_LLC, nxt), False)
                fill_l2(CM, C, nxt, row, 1)
            nxt += 1
        CM[e + 2] = max(CM[e + 2], nxt - 1)
    elif CM[e] != page:
        CM[e] = page
        CM[e + 2] = line
    CM[e + 1] = line


@_jit
def l2_request(CM: np.ndarray, C: np.ndarray, line: int, demand: bool) -> int:
    """`Caches._l2_request`: a demand miss or a next-line prefetch from L1; trains the streamer."""
    llc_row = set_row(CM, LV_LLC, line)  # read after L2's lookup and its branch: fetch it now
    prefetch(CM, llc_row)
    prefetch(CM, llc_row + 8)
    row, i = lookup(CM, LV_L2, line)
    if i >= 0:
        touch(CM, LV_L2, i)
        if demand:
            C[C_L2_HITS] += 1
            if CM[i] & 1:
                C[C_PF_L2_USEFUL] += 1
                CM[i] -= 1
        served = 2
    else:
        if demand:
            C[C_L2_MISSES] += 1
        served = llc_read(CM, C, line, llc_row, demand)
        fill_l2(CM, C, line, row, 0)
    if CM[CM_HIER + CH_DISTANCE]:
        stream(CM, C, line)
    return served


@_jit
def l1_miss(CM: np.ndarray, C: np.ndarray, line: int, kind: int, row: int) -> int:
    """The miss half of `Caches.access`: below L1, the L1 fill, the next-line prefetch."""
    lv = LV_L1I if kind == KIND_FETCH else LV_L1D
    if kind == KIND_FETCH:
        C[C_L1I_MISSES] += 1
    else:
        C[C_L1D_MISSES] += 1
    served = l2_request(CM, C, line, True)
    fill(CM, lv, row, line, 0)
    nxt = line + 1
    if kind == KIND_DATA and CM[CM_HIER + CH_NEXT_LINE] and nxt & (PAGE_LINES - 1):
        nxt_row, i = lookup(CM, LV_L1D, nxt)
        if i < 0:
            C[C_PF_NL_ISSUED] += 1
            l2_request(CM, C, nxt, False)
            fill(CM, LV_L1D, nxt_row, nxt, 1)
    return served


@_inline
def access(CM: np.ndarray, C: np.ndarray, pa: int, kind: int) -> None:
    """`Caches.access`: one demand access of `kind` at physical address `pa` (the L1 hit inline)."""
    line = pa >> 6
    lv = LV_L1I if kind == KIND_FETCH else LV_L1D
    row, i = lookup(CM, lv, line)
    if i >= 0:
        touch(CM, lv, i)
        if kind == KIND_FETCH:
            C[C_L1I_HITS] += 1
        else:
            C[C_L1D_HITS] += 1
        if CM[i] & 1:
            C[C_PF_NL_USEFUL] += 1
            CM[i] -= 1
        served = 1
    else:
        served = l1_miss(CM, C, line, kind, row)
    if kind == KIND_WALK:
        C[C_WALK_L1 + served - 1] += 1
