"""The data caches (L1I, L1D, L2, LLC, prefetchers) of one core: the reference path.

Physically indexed and tagged 64-byte lines, so a CR3 write or a TLB flush leaves them alone: a
page walk after a flushing CR3 write reads its paging-structure entries through L1D/L2/LLC and is
cheap when they are still cached (the PAGE_WALKER_LOADS.{DTLB,ITLB}_{L1,L2,L3,MEMORY} events of
Haswell count where walk loads are served: Intel SDM Vol. 3B, Haswell performance-monitoring
events). Geometry and policy are `kaiser.x86.cache_geometry` data; its docstring states the
replacement, inclusion and prefetcher rules these functions implement.

State is numpy arrays of shape (sets, ways) per level (`tag`: line number, -1 invalid; `stamp`:
LRU time from one clock per hierarchy, ticked on every hit and every fill; `pf`: brought in by a
prefetcher and not yet used by a demand access) plus the streamer's table, so that the compiled
engine (`kaiser.x86.engine_cache`) holds the same state and must produce the same counters.

Three kinds of access: an instruction fetch (L1I), a load or store (L1D, trains the next-line
prefetcher) and a page-walk load (L1D, does not train it). Stores are write-allocate like loads;
write-backs of dirty lines are not modelled (they cost DRAM bandwidth the model does not count).
"""

from __future__ import annotations

from typing import Final

import numpy as np

from kaiser.x86.cache_geometry import LINE_SHIFT, CacheHierarchy, CacheLevel
from kaiser.x86.counters import TlbCounters

KIND_FETCH: Final = 0
KIND_DATA: Final = 1
KIND_WALK: Final = 2
# Where an access was served (the PAGE_WALKER_LOADS levels).
SERVED_L1, SERVED_L2, SERVED_LLC, SERVED_DRAM = 1, 2, 3, 4
PAGE_LINES: Final = 64  # 64-byte lines in a 4 KiB page: prefetchers stay inside one
# Streamer table columns.
ST_PAGE, ST_LAST, ST_HIGH = 0, 1, 2


class CacheArray:
    """One set-associative level as numpy arrays of shape (sets, ways)."""

    def __init__(self, level: CacheLevel) -> None:
        self.level = level
        self.sets, self.ways = level.sets, level.ways
        self.tag = np.full((self.sets, self.ways), -1, np.int64)
        self.stamp = np.zeros((self.sets, self.ways), np.int64)
        self.pf = np.zeros((self.sets, self.ways), np.bool_)

    def find(self, line: int) -> int:
        """The way of `line`'s set holding it, or -1."""
        row = self.tag[line % self.sets]
        for w in range(self.ways):
            if row[w] == line:
                return w
        return -1

    def victim(self, s: int) -> int:
        """The first invalid way of set `s`, else the least recently used."""
        row = self.tag[s]
        for w in range(self.ways):
            if row[w] < 0:
                return w
        return int(np.argmin(self.stamp[s]))

    def invalidate(self, line: int) -> bool:
        w = self.find(line)
        if w < 0:
            return False
        self.tag[line % self.sets, w] = -1
        return True

    def lines(self) -> set[int]:
        return {int(t) for t in self.tag.ravel() if t >= 0}


class Caches:
    """One core's cache hierarchy; counts into `counters` (the cache fields of `TlbCounters`)."""

    def __init__(self, hierarchy: CacheHierarchy, counters: TlbCounters) -> None:
        self.hierarchy = hierarchy
        self.l1i, self.l1d, self.l2, self.llc = (CacheArray(lv) for lv in hierarchy.levels)
        self.clock = 0
        self.streams = np.full((max(1, hierarchy.streamer_streams), 3), -1, np.int64)
        self.counters = counters

    @property
    def arrays(self) -> tuple[CacheArray, CacheArray, CacheArray, CacheArray]:
        return (self.l1i, self.l1d, self.l2, self.llc)

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    # ---- the one entry point --------------------------------------------------------------------
    def access(self, pa: int, kind: int) -> int:
        """One demand access of `kind` to physical address `pa`; returns the level that served it
        (SERVED_L1..SERVED_DRAM). Misses fill every level on the way per the inclusion policy."""
        c = self.counters
        line = pa >> LINE_SHIFT
        l1 = self.l1i if kind == KIND_FETCH else self.l1d
        w = l1.find(line)
        if w >= 0:
            s = line % l1.sets
            l1.stamp[s, w] = self._tick()
            if kind == KIND_FETCH:
                c.l1i_hits += 1
            else:
                c.l1d_hits += 1
            if l1.pf[s, w]:
                c.pf_nl_useful += 1
                l1.pf[s, w] = False
            served = SERVED_L1
        else:
            if kind == KIND_FETCH:
                c.l1i_misses += 1
            else:
                c.l1d_misses += 1
            served = self._l2_request(line, True)
            self._fill(l1, line, False)
            nxt = line + 1
            if kind == KIND_DATA and self.hierarchy.next_line and nxt % PAGE_LINES and self.l1d.find(nxt) < 0:
                c.pf_nl_issued += 1  # the next-line (DCU) prefetcher: same page, into L1D
                self._l2_request(nxt, False)
                self._fill(self.l1d, nxt, True)
        if kind == KIND_WALK:
            if served == SERVED_L1:
                c.walk_loads_l1 += 1
            elif served == SERVED_L2:
                c.walk_loads_l2 += 1
            elif served == SERVED_LLC:
                c.walk_loads_llc += 1
            else:
                c.walk_loads_dram += 1
        return served

    # ---- below L1 -----------------------------------------------------------------------------
    def _l2_request(self, line: int, demand: bool) -> int:
        """A request from L1 (a demand miss, or a next-line prefetch) to L2; trains the streamer."""
        c = self.counters
        l2 = self.l2
        w = l2.find(line)
        if w >= 0:
            s = line % l2.sets
            l2.stamp[s, w] = self._tick()
            if demand:
                c.l2_hits += 1
                if l2.pf[s, w]:
                    c.pf_l2_useful += 1
                    l2.pf[s, w] = False
            served = SERVED_L2
        else:
            if demand:
                c.l2_misses += 1
            served = self._llc_read(line, demand)
            self._fill_l2(line, False)
        if self.hierarchy.streamer_distance:
            self._stream(line)
        return served

    def _llc_read(self, line: int, demand: bool) -> int:
        c = self.counters
        llc = self.llc
        w = llc.find(line)
        if w >= 0:
            llc.stamp[line % llc.sets, w] = self._tick()
            if demand:
                c.llc_hits += 1
            return SERVED_LLC
        if demand:
            c.llc_misses += 1
        c.dram_reads += 1
        if self.hierarchy.inclusive_llc:
            self._fill_llc(line)
        return SERVED_DRAM

    def _fill(self, arr: CacheArray, line: int, pf: bool) -> int:
        """Write `line` into its set's victim way; returns the line evicted (-1: none)."""
        s = line % arr.sets
        w = arr.victim(s)
        evicted = int(arr.tag[s, w])
        arr.tag[s, w] = line
        arr.stamp[s, w] = self._tick()
        arr.pf[s, w] = pf
        return evicted

    def _fill_l2(self, line: int, pf: bool) -> None:
        evicted = self._fill(self.l2, line, pf)
        if not self.hierarchy.inclusive_llc and evicted >= 0 and self.llc.find(evicted) < 0:
            self._fill_llc(evicted)  # non-inclusive LLC: filled by L2 victims

    def _fill_llc(self, line: int) -> None:
        evicted = self._fill(self.llc, line, False)
        if self.hierarchy.inclusive_llc and evicted >= 0:
            for arr in (self.l1i, self.l1d, self.l2):  # inclusion: back-invalidate the copies
                if arr.invalidate(evicted):
                    self.counters.llc_back_invalidations += 1

    def _stream(self, line: int) -> None:
        """The L2 streamer (see `kaiser.x86.cache_geometry`): one forward stream per 4 KiB page."""
        h = self.hierarchy
        page = line // PAGE_LINES
        st = self.streams[page % len(self.streams)]
        if st[ST_PAGE] == page and line > st[ST_LAST]:
            nxt = max(int(st[ST_HIGH]), line) + 1
            end = min(line + h.streamer_distance, page * PAGE_LINES + PAGE_LINES - 1)
            for _ in range(h.streamer_degree):
                if nxt > end:
                    break
                if self.l2.find(nxt) < 0:
                    self.counters.pf_l2_issued += 1
                    self._llc_read(nxt, False)
                    self._fill_l2(nxt, True)
                nxt += 1
            st[ST_HIGH] = max(int(st[ST_HIGH]), nxt - 1)
        elif st[ST_PAGE] != page:
            st[ST_PAGE] = page
            st[ST_HIGH] = line
        st[ST_LAST] = line
