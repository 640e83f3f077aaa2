"""The machine side of KASLR probing: what a user-mode probe of a kernel address costs, the process
interface the attacker gets, and the experiment (boot, attack, score) over seeded layouts.

A probe is run on our `Mmu` (TLBs, paging-structure caches, the reference walker) at CPL 3 under
the process's current CR3 -- the user CR3 under isolation -- after the process's own system call
(`kaiser.linux.entry.EntryModel`, replayed on the same `Mmu`), so the TLB holds whatever that
call left: global entries, and under PCID the user-PCID entries its exit path made after the
NOFLUSH switch back. Its cost is read off the `Access` the MMU returns (`ProbeCosts`), then a
noisy timer turns it into measured cycles (`kaiser.attacks.cache.Timer`, the same noise model as
the Meltdown attack's Flush+Reload).

Two probes (`PROBES`):

* `prefetch`: `prefetchnta; prefetcht2` of the address between two `rdtscp`, as in the EntryBleed
  proof of concept. PREFETCHh never faults (SDM Vol. 2B, PREFETCHh), and the processor may cache
  the translations a prefetch makes (SDM Vol. 3A §4.10.2.3): a prefetch's translation is made
  like a supervisor read (`Mmu.access(..., implicit=True)`), so a walk that reaches a present leaf
  fills the TLB and the second prefetch hits it -- Gruss et al.'s address-translation oracle
  (CCS 2016). A walk that stops at a non-present entry fills nothing, and the Mmu treats it as a
  page-fault walk (it drops the paging-structure-cache entries for the address: extra
  invalidation, which SDM §4.10.3.1 allows), so an unmapped probe always walks from the root.
* Under LASS (CR4.LASS, `--lass`) both probes of a kernel address end before the TLB lookup: a
  user-mode access to the upper half violates LASS before paging (Intel SDM Vol. 3A, chapter 4
  "Linear-Address Pre-Processing", LASS), so the prefetch is dropped (`Access.dropped`) and the
  load faults #GP(0); neither walks nor looks up a TLB, so every kernel address costs the same
  (`ProbeCosts.no_lookup`) and timing tells the attacker nothing.
* `load`: one faulting user load (fault suppressed, e.g. by TSX, as in DrK). A TLB entry with
  supervisor rights faults without a walk and is then invalidated (SDM §4.10.4.1); a walk that
  reaches a present supervisor leaf faults without filling the TLB (our Mmu caches only
  successful translations). So the load sees what the system call left in the TLB and how deep
  a walk goes, but not whether an uncached page is mapped.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from kaiser.attacks.cache import Timer, TimerNoise
from kaiser.attacks.kaslr import KaslrAttacker, KaslrParams, Knowledge, RegionGuess, RegionSpec
from kaiser.choices import PROBES
from kaiser.cost.params import SKYLAKE
from kaiser.linux.entry import ENTRY_TEXT_OFFSETS, EntryModel
from kaiser.linux.kernel import Kernel, KernelConfig, Task
from kaiser.linux.layout import (
    CPU_ENTRY_AREA_PGD,
    KERNEL_IMAGE_SIZE_KASLR,
    LOAD_PHYSICAL_ADDR,
    MAX_PHYSMEM_BITS,
    P4D_SHIFT,
    P4D_SIZE,
    PAGE_OFFSET_BASE,
    PAGE_SIZE,
    PHYSICAL_ALIGN,
    PMD_SIZE,
    PUD_SIZE,
    RANDOMIZE_MEMORY_PHYSICAL_PADDING_TB,
    START_KERNEL_MAP,
    STRUCT_PAGE_SIZE,
    TOP,
    VMALLOC_SIZE_TB,
    ImageSizes,
    TiB,
)
from kaiser.linux.syscalls import RODATA_SYS_CALL_TABLE, SYSCALLS, TEXT_OFFSETS
from kaiser.linux.variants import get_variant
from kaiser.sourced import Source, chosen, cited
from kaiser.x86.bits import PF_VECTOR
from kaiser.x86.counters import TlbCounters
from kaiser.x86.events import EVENT_DTYPE, IMPLICIT, PREFETCH, Ev, replay_reference
from kaiser.x86.geometry import GiB
from kaiser.x86.mmu import Access, Mmu
from kaiser.x86.processor import DEFAULT_PROCESSOR
from kaiser.x86.rights import Op
from kaiser.x86.tlb import HitLevel, Tlb

if TYPE_CHECKING:
    from kaiser.x86.engine import Engine

PATHS: Final = ("engine", "reference")  # where probes run: the compiled engine or the readable Mmu
REGIONS: Final = ("text", "direct_map", "vmalloc", "vmemmap")
VICTIM_SYSCALL: Final = "getppid"  # a cheap call, as the EntryBleed PoC's syscall(104) (getgid)
# Positions in an engine counter array (`TlbCounters`' field order, which the engine's is).
_COUNTER: Final = {f.name: i for i, f in enumerate(fields(TlbCounters))}
_WALKS_I, _WALKS_D, _WALK_LOADS = _COUNTER["walks_i"], _COUNTER["walks_d"], _COUNTER["walk_loads"]
_ITLB_HITS, _DTLB_HITS = _COUNTER["itlb_hits"], _COUNTER["dtlb_hits"]
_STLB_HITS_I, _STLB_HITS_D, _FAULTS = _COUNTER["stlb_hits_i"], _COUNTER["stlb_hits_d"], _COUNTER["faults"]


@dataclass(frozen=True)
class ProbeCosts:
    """Cycles of one probe by what the MMU did for it (model parameters; sources per line).

    The walk-depth dependence is the observation of Gruss et al., "Prefetch Side-Channel Attacks:
    Bypassing SMAP and Kernel ASLR", CCS 2016 (§3, translation-level oracle): a prefetch takes
    longer the more paging-structure levels its walk reads before it stops. We price that as one
    cache access per entry read; their measured cycle values are not in our facts, so the
    numbers below come from facts/performance.md §1 instead.
    """

    l1_tlb_hit: float = 0.0
    stlb_hit: float = SKYLAKE.stlb_hit  # the cost model's (kaiser.cost.params)
    walk_load: float = float(DEFAULT_PROCESSOR.latencies.l2_hit)  # the default processor's L2 hit
    no_lookup: float = 0.0
    fault_suppress: float = 60.0

    def access(self, a: Access) -> float:
        """Cycles of one translation: a TLB hit (L1 or STLB), or an STLB miss and the walk's loads;
        nothing looked up (a dropped prefetch, a #GP before paging): `no_lookup`."""
        if a.dropped or (a.fault is not None and a.fault.vector != PF_VECTOR):
            return self.no_lookup
        if a.walk is None:
            return self.l1_tlb_hit if a.level is HitLevel.L1 else self.stlb_hit
        return self.stlb_hit + self.walk_load * a.walk_loads

    def counted(self, counts: np.ndarray) -> np.ndarray:
        """`access`'s price read off the counters each translation added (engine counter arrays
        along the last axis, in `TlbCounters`' field order): it walked (an STLB miss, or a dirty
        assist after a hit), or it hit the L1 TLB or the STLB; none of these (a dropped prefetch,
        a #GP before paging): `no_lookup`. One price per translation, float64."""
        walked = (counts[..., _WALKS_D] + counts[..., _WALKS_I]) > 0
        l1 = (counts[..., _DTLB_HITS] + counts[..., _ITLB_HITS]) > 0
        stlb = (counts[..., _STLB_HITS_D] + counts[..., _STLB_HITS_I]) > 0
        hit = np.where(l1, self.l1_tlb_hit, np.where(stlb, self.stlb_hit, self.no_lookup))
        return np.where(walked, self.stlb_hit + self.walk_load * counts[..., _WALK_LOADS], hit)


# The tag of every number of ProbeCosts (kaiser.sourced).
PROBE_COST_SOURCES: Final[dict[str, Source]] = {
    "l1_tlb_hit": cited("an L1 TLB hit is hidden in the load pipeline (Intel Optimization Manual; perf.md §1)"),
    "stlb_hit": cited(
        "pmu-tools Mem_STLB_Hit_Cost, SKL/SKX (perf.md §1), the cost model's stlb_hit; also charged before every "
        "walk, which starts only after the STLB lookup missed"
    ),
    "walk_load": cited(
        "each paging-structure entry a walk reads is an L2 hit, 12 cycles (the default processor's, Skylake); PSC "
        "hits save loads (`Access.walk_loads` counts only those made)"
    ),
    "no_lookup": chosen(
        "a probe that ends before the TLB lookup (a #GP, a prefetch LASS drops): any constant carries no information",
        " [u]",
    ),
    "fault_suppress": chosen(
        "`load` only: a suppressed #PF (TSX abort), constant: it carries no information, only "
        "adds to the timer's proportional jitter",
        " [u]",
    ),
}


# The tag of every number of KaslrParams (kaiser.sourced): the attack program's own knobs, CHOSEN
# (here, not in kaslr.py, which imports nothing of the model).
KASLR_PARAM_SOURCES: Final[dict[str, Source]] = {
    "reps": chosen("2 probes an address in the text scan, the median taken: the scan's cost doubles with it"),
    "region_reps": chosen("5 in the region scans, whose level-to-level steps are smaller"),
    "confirm_reps": chosen("11 probes an address to confirm that it stands out"),
    "z": chosen("3 robust sd from the scan's median stands out"),
    "floor": chosen("and at least 6 cycles (timer resolution)"),
    "min_run": chosen("3 adjacent fast 2 MiB slots: the image's text, not one mapped page"),
    "max_descend": chosen("6 slots followed into the next level per scan at most: bounds the scan's cost"),
}


@dataclass(frozen=True)
class ProbeConfig:
    """The probe: which instruction sequence, its costs, and the timer's noise."""

    probe: str = "prefetch"
    costs: ProbeCosts = ProbeCosts()
    noise: TimerNoise = TimerNoise()

    def __post_init__(self) -> None:
        if self.probe not in PROBES:
            raise ValueError(f"probe {self.probe!r} is not one of {', '.join(PROBES)}")


class ProbeCore:
    """One logical CPU running the attacker's process: its MMU, its system call, the timer.

    `path`: where the system calls and probes run -- `engine`, the compiled engine
    (`kaiser.x86.engine.Engine`) stepped one call and one probe at a time on its own copy of the
    machine (no copying back between calls), each probe priced from the counters it added
    (`ProbeCosts.counted`); or `reference`, the readable `Mmu`, each probe priced from its
    `Access`. Both start from the same warmed-up `Mmu` and time every probe the same (a test
    checks it). `log`: if a list, every probe appends (va, latency before noise, measured)."""

    def __init__(self, kernel: Kernel, task: Task, config: ProbeConfig, seed: int, *, path: str = "engine") -> None:
        if path not in PATHS:
            raise ValueError(f"path {path!r} is not one of {', '.join(PATHS)}")
        self.kernel = kernel
        self.config = config
        self.path = path
        self.timer = Timer(seed ^ 0x7A51, config.noise)
        model = EntryModel(kernel, 0)
        state = model.start(task)
        model.return_to_user()
        model.syscall(VICTIM_SYSCALL)  # the first call may carry a deferred flush: warm up on it
        warm = len(model.out)
        model.syscall(VICTIM_SYSCALL)
        events = model.out.array()
        self.mmu = Mmu(kernel.mem, state)
        replay_reference(self.mmu, events[:warm])
        self._syscall_events = events[warm:]  # the steady-state call, replayed for every syscall()
        self.mmu.set_registers(cpl=3)
        self.user_cr3 = self.mmu.state.cr3
        self.syscalls = 0
        self.probes = 0
        self.cycles = 0
        self.log: list[tuple[int, float, int]] | None = None
        self.engine: Engine | None = None
        if path == "engine":
            from kaiser.x86.engine import Engine  # numba: only when the engine runs

            self.engine = Engine.from_mmu(self.mmu)
            self.engine.prepare(self._syscall_events)
            self._step = self.engine.stepper()
            # The probe as one event, its address set per probe: a prefetch's translation is made
            # like a supervisor read (IMPLICIT), as `Mmu.access(..., implicit=True, prefetch=True)`.
            aux = IMPLICIT | PREFETCH if config.probe == "prefetch" else 0
            self._probe = np.array([(Ev.READ, 3, aux, 0, 0)], dtype=EVENT_DTYPE)
            self._probe_va = self._probe["a"]

    def syscall(self) -> None:
        if self.engine is not None:
            self._step(self._syscall_events)
        else:
            replay_reference(self.mmu, self._syscall_events)
            self.mmu.set_registers(cpl=3)
        self.syscalls += 1

    def latency(self, va: int) -> float:
        """Cycles of one probe of `va` before the timer's noise."""
        costs = self.config.costs
        if self.engine is not None:
            self._probe_va[0] = va
            if self.config.probe == "prefetch":
                return sum(float(costs.counted(self._step(self._probe))) for _ in range(2))
            counts = self._step(self._probe)
            return float(costs.counted(counts)) + (costs.fault_suppress if counts[_FAULTS] else 0.0)
        mmu = self.mmu
        if mmu.state.cpl != 3:
            mmu.set_registers(cpl=3)
        if self.config.probe == "prefetch":
            return sum(costs.access(mmu.access(va, Op.READ, implicit=True, prefetch=True)) for _ in range(2))
        access = mmu.access(va, Op.READ)
        return costs.access(access) + (costs.fault_suppress if access.fault is not None else 0.0)

    def probe(self, va: int) -> int:
        latency = self.latency(va)
        cycles = self.timer.measure(round(latency))
        self.probes += 1
        self.cycles += cycles
        if self.log is not None:
            self.log.append((va, latency, cycles))
        return cycles

    def rounds(self, vas: list[int], reps: int) -> list[list[int]]:
        """For each of `vas` in turn, `reps` times: `syscall()`, then `probe(va)`; the measured
        cycles per address. On the engine all of it is one compiled call, each probe's latency
        priced from the counters its translations added."""
        if self.engine is None or not vas:
            out = []
            for va in vas:
                times = []
                for _ in range(reps):
                    self.syscall()
                    times.append(self.probe(va))
                out.append(times)
            return out
        costs = self.config.costs
        events = np.repeat(self._probe, 2 if self.config.probe == "prefetch" else 1)
        counts = self.engine.rounds(self._syscall_events, events, np.array(vas, np.uint64), reps)
        prices = costs.counted(counts)  # (address, round, translation)
        if self.config.probe == "prefetch":
            latencies = prices[..., 0] + prices[..., 1]
        else:
            latencies = prices[..., 0] + np.where(counts[..., 0, _FAULTS] > 0, costs.fault_suppress, 0.0)
        measure, log = self.timer.measure, self.log
        out = []
        for va, row in zip(vas, latencies.tolist(), strict=True):
            times = [measure(round(latency)) for latency in row]
            if log is not None:
                log.extend((va, latency, t) for latency, t in zip(row, times, strict=True))
            out.append(times)
        n = len(vas) * reps
        self.syscalls += n
        self.probes += n
        self.cycles += sum(map(sum, out))
        return out

    def tlb(self) -> Tlb:
        """The TLB state now (the engine's, copied out, on the engine path)."""
        return self.engine.to_tlb() if self.engine is not None else self.mmu.tlb


class ProbeProcess:
    """The attacker's process as its own code sees it: implements `kaslr.ProbePort`."""

    __slots__ = ("_core",)

    def __init__(self, core: ProbeCore) -> None:
        self._core = core

    def syscall(self) -> None:
        """`syscall(SYS_getppid)`: enter and leave the kernel once."""
        self._core.syscall()

    def probe(self, va: int) -> int:
        """`rdtscp; probe (va); rdtscp`: the measured cycles, nothing else."""
        return self._core.probe(va)

    def rounds(self, vas: list[int], reps: int) -> list[list[int]]:
        """For each of `vas` in turn, `reps` times: `syscall()`, then `probe(va)`."""
        return self._core.rounds(vas, reps)


# ---- what the attacker may know -------------------------------------------------------------------
def text_symbols(image: ImageSizes | None = None) -> dict[str, int]:
    """System.map: offsets from `_text` of the symbols a `getppid` call touches (entry.py's
    placement; public for a distribution kernel, whose System.map ships with it)."""
    sizes = image or ImageSizes()
    rodata = -(-sizes.text // PMD_SIZE) * PMD_SIZE
    nr = SYSCALLS[VICTIM_SYSCALL].nr
    return {
        "entry_SYSCALL_64": sizes.entry_text_offset + ENTRY_TEXT_OFFSETS["entry_SYSCALL_64"],
        "syscall_return_via_sysret": sizes.entry_text_offset + ENTRY_TEXT_OFFSETS["syscall_return_via_sysret"],
        "do_syscall_64": TEXT_OFFSETS["do_syscall_64"],
        "__x64_sys_getppid": TEXT_OFFSETS["kernel/sys.c"],
        "sys_call_table": rodata + RODATA_SYS_CALL_TABLE + 8 * nr,
    }


def memory_regions(la57: bool, era: str, ram: int) -> tuple[RegionSpec, ...]:
    """The direct map, vmalloc and vmemmap KASLR ranges as arch/x86/mm/kaslr.c defines them
    (restated in `kaiser.linux.layout._kaslr_memory`): the lowest base when every earlier random
    share is 0, the highest when every one is at its maximum. Sizes from the RAM size."""
    align = P4D_SIZE if (la57 and era == "4.15") else PUD_SIZE
    memory_tb = -(-ram // TiB) + RANDOMIZE_MEMORY_PHYSICAL_PADDING_TB
    direct_tb = min(memory_tb, 1 << (MAX_PHYSMEM_BITS[la57] - 40))
    vmemmap_tb = -(-(direct_tb * (TiB // PAGE_SIZE) * STRUCT_PAGE_SIZE) // TiB)
    sizes = (direct_tb * TiB, VMALLOC_SIZE_TB[la57] * TiB, vmemmap_tb * TiB)
    struct_pages = -(-(ram // PAGE_SIZE * STRUCT_PAGE_SIZE) // PMD_SIZE) * PMD_SIZE
    extents = (ram, GiB, struct_pages)  # see kaslr.py: what each region's used part can span
    start = PAGE_OFFSET_BASE[(era, la57)]
    end = (CPU_ENTRY_AREA_PGD << P4D_SHIFT) % TOP
    remain = end - start - sum(sizes)
    lo = hi = start
    out = []
    for i, (name, size, extent) in enumerate(zip(("direct_map", "vmalloc", "vmemmap"), sizes, extents, strict=True)):
        entropy = (remain // (len(sizes) - i)) & ~(align - 1)
        out.append(RegionSpec(name, lo, hi + entropy, align, size, extent))
        hi += entropy
        remain -= entropy
        lo = -(-(lo + size + 1) // align) * align
        hi = -(-(hi + size + 1) // align) * align
    return tuple(out)


def public_knowledge(config: KernelConfig) -> Knowledge:
    """Everything the attacker is told: a function of the paging mode, the kernel's era and the
    RAM size only -- never of `config.seed`."""
    era = get_variant(config.variant).era
    symbols = text_symbols()
    span = _image_span(ImageSizes())
    return Knowledge(
        top_shift=48 if config.la57 else 39,
        image_window=(START_KERNEL_MAP, START_KERNEL_MAP + KERNEL_IMAGE_SIZE_KASLR),
        text_base_range=(
            START_KERNEL_MAP + LOAD_PHYSICAL_ADDR,
            START_KERNEL_MAP + KERNEL_IMAGE_SIZE_KASLR - span,
        ),
        text_align=PHYSICAL_ALIGN,
        symbols=symbols,
        entry_symbol="entry_SYSCALL_64",
        regions=memory_regions(config.la57, era, config.ram),
    )


def _image_span(sizes: ImageSizes) -> int:
    rodata = -(-sizes.text // PMD_SIZE) * PMD_SIZE + sizes.rodata
    return -(-(-(-rodata // PMD_SIZE) * PMD_SIZE + sizes.data + sizes.bss) // PMD_SIZE) * PMD_SIZE


# ---- the experiment -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegionOutcome:
    """One region of one layout: the truth (for scoring only) against the attacker's guess."""

    region: str
    true_base: int
    guess: RegionGuess

    @property
    def matched(self) -> bool:
        return self.guess.guess == self.true_base

    @property
    def guessed(self) -> bool:
        return self.guess.guess is not None

    def as_dict(self) -> dict[str, object]:
        return {
            "region": self.region,
            "true_base": hex(self.true_base),
            "guessed_base": None if self.guess.guess is None else hex(self.guess.guess),
            "matched": self.matched,
            "candidates": self.guess.candidates,
            "how": self.guess.how,
            "found": [hex(a) for a in self.guess.found[:4]],
            "probes": self.guess.probes,
        }


@dataclass
class KaslrRun:
    """One attack on one seeded layout."""

    variant: str
    seed: int
    probe: str
    pcid: bool
    la57: bool
    ram: int
    outcomes: list[RegionOutcome]
    lass: bool = False  # CR4.LASS was set (`KernelConfig.lass_active`)
    syscalls: int = 0
    probes: int = 0
    seconds: float = 0.0

    def outcome(self, region: str) -> RegionOutcome:
        return next(o for o in self.outcomes if o.region == region)

    def as_dict(self) -> dict[str, object]:
        return {
            "variant": self.variant,
            "seed": self.seed,
            "probe": self.probe,
            "pcid": self.pcid,
            "la57": self.la57,
            "lass": self.lass,
            "regions": [o.as_dict() for o in self.outcomes],
            "syscalls": self.syscalls,
            "probes": self.probes,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class KaslrSummary:
    """Many seeds of one variant: per region, how often the base was guessed and matched."""

    variant: str
    probe: str
    pcid: bool
    runs: list[KaslrRun] = field(default_factory=list)

    def matched(self, region: str) -> int:
        return sum(r.outcome(region).matched for r in self.runs)

    def guessed(self, region: str) -> int:
        return sum(r.outcome(region).guessed for r in self.runs)

    def narrowed(self, region: str) -> int:
        """Layouts where the attacker found mapped pages but several aligned bases fit."""
        return sum(r.outcome(region).guess.candidates > 1 for r in self.runs)

    def as_dict(self) -> dict[str, object]:
        n = len(self.runs)
        return {
            "variant": self.variant,
            "probe": self.probe,
            "pcid": self.pcid,
            "seeds": [r.seed for r in self.runs],
            "summary": {
                region: {
                    "matched": self.matched(region),
                    "guessed": self.guessed(region),
                    "narrowed": self.narrowed(region),
                    "layouts": n,
                }
                for region in REGIONS
            },
            "runs": [r.as_dict() for r in self.runs],
        }


def true_bases(kernel: Kernel) -> dict[str, int]:
    """The layout's randomized values: for scoring the attacker, never handed to it."""
    lay = kernel.layout
    return {
        "text": lay.kernel_base,
        "direct_map": lay.page_offset_base,
        "vmalloc": lay.vmalloc_base,
        "vmemmap": lay.vmemmap_base,
    }


def run_kaslr(
    variant: str = "linux",
    *,
    seed: int = 0,
    probe: str = "prefetch",
    pcid: bool = True,
    la57: bool = False,
    ram: int = 4 * GiB,
    params: KaslrParams | None = None,
    costs: ProbeCosts | None = None,
    noise: TimerNoise | None = None,
    regions: tuple[str, ...] = REGIONS,
    progress: Callable[[str], None] | None = None,
    path: str = "engine",
    log: list[tuple[int, float, int]] | None = None,
    **machine: Any,
) -> KaslrRun:
    """Boot `variant` with KASLR, start the attacker's process, let it probe, score its guesses.
    `path`: where the probes run (`ProbeCore`); `log`: a list every probe appends to."""
    started = time.perf_counter()
    config = KernelConfig(variant=variant, pcid=pcid, la57=la57, kaslr=True, seed=seed, ram=ram, **machine)
    kernel = Kernel.boot(config)
    task = kernel.spawn()
    probe_config = ProbeConfig(probe, costs or ProbeCosts(), noise or TimerNoise())
    core = ProbeCore(kernel, task, probe_config, seed, path=path)
    core.log = log
    attacker = KaslrAttacker(ProbeProcess(core), public_knowledge(config), params)
    guesses = attacker.run(progress, regions=regions)
    truth = true_bases(kernel)
    return KaslrRun(
        variant=variant,
        seed=seed,
        probe=probe,
        pcid=pcid,
        la57=la57,
        ram=ram,
        outcomes=[RegionOutcome(g.region, truth[g.region], g) for g in guesses],
        lass=config.lass_active,
        syscalls=core.syscalls,
        probes=core.probes,
        seconds=time.perf_counter() - started,
    )


def run_seeds(
    variant: str,
    seeds: range | list[int],
    *,
    progress: Callable[[str], None] | None = None,
    **kwargs: object,
) -> KaslrSummary:
    """`run_kaslr` over several seeded layouts."""
    probe = str(kwargs.get("probe", "prefetch"))
    pcid = bool(kwargs.get("pcid", True))
    summary = KaslrSummary(variant, probe, pcid)
    for seed in seeds:
        summary.runs.append(run_kaslr(variant, seed=seed, progress=progress, **kwargs))  # type: ignore[arg-type]
    return summary


def run_variants(
    variants: list[str],
    seeds: range | list[int],
    *,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
    **kwargs: object,
) -> list[KaslrSummary]:
    """`run_seeds` of each variant, the (variant, seed) attacks spread over `jobs` processes
    (forked: each attack is independent, seeded and deterministic, so the results are the ones
    one process gets, in the same order). `progress` is told each region of a finished attack."""
    summaries = [run_seeds(v, [], **kwargs) for v in variants]  # type: ignore[arg-type]
    if jobs <= 1 or len(variants) * len(seeds) <= 1:
        for summary, v in zip(summaries, variants, strict=True):
            summary.runs = run_seeds(v, seeds, progress=progress, **kwargs).runs
        return summaries
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {
            pool.submit(run_kaslr, v, seed=seed, **kwargs): (i, seed)  # type: ignore[arg-type]
            for i, v in enumerate(variants)
            for seed in seeds
        }
        done: dict[tuple[int, int], KaslrRun] = {}
        for future in concurrent.futures.as_completed(futures):
            run = future.result()
            done[futures[future]] = run
            for outcome in run.outcomes:
                if progress:
                    progress(outcome.region)
    for i, summary in enumerate(summaries):
        summary.runs = [done[i, seed] for seed in seeds]
    return summaries


def costs_table(costs: ProbeCosts | None = None) -> dict[str, float]:
    """The probe's cost parameters by name (the defaults unless `costs`), for reports and JSON."""
    return asdict(costs or ProbeCosts())
