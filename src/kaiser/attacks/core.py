"""The machine side of Meltdown: a core that may forward a faulting load's value, the process
interface the attacker gets, and the experiment (boot, plant a secret, attack, score).

A user-mode load is one access through the reference MMU (CPL 3, the task's user CR3).
Architecturally a load of a supervisor page faults (#PF, SDM Vol. 3A §4.6.1, §4.7). Transiently,
on a Meltdown-vulnerable core (Lipp et al., USENIX Security 2018; Intel's "Rogue Data Cache Load",
CVE-2017-5754), the permission check is resolved late: if the walk reached a *present* leaf and the
only problem is the U/S check, the data at the translated physical address reaches dependent
instructions before the fault retires. Nothing is forwarded when the walk stops at a non-present
entry or a reserved bit (the core has no physical address to load from; L1TF/Foreshadow, which
does forward from non-present PTEs, is out of scope), on a protection-key fault (Meltdown-PK, out
of scope), when LASS faults the load before paging (#GP(0) from the bit-63 check, Intel SDM Vol.
3A, chapter 4 "Linear-Address Pre-Processing", LASS: there is no walk, so no physical address to
forward from -- the LASS series' cover letter: LASS "alone would have mitigated Meltdown"), or when
the core is fixed (`meltdown_vulnerable=False`, RDCL_NO). The result is
`MemResult(value, fault, cycles)`: the transient value with the architectural fault attached
(the lennihein/cpu-emulator shape, shared/STYLE.md).

Translation is one logical processor's MMU with the part's TLB geometry
(`kaiser.attacks.user_mmu`: the compiled engine by default, the reference `Mmu` on request, held
equal by tests): every user access goes through its TLBs and counters, a miss walks (setting A as
hardware does, SDM §4.8; a fault never sets the leaf's A bit), and a page fault invalidates the
page's entries. The faulting load's fault is the MMU's; only what a vulnerable core then forwards
is this module's. `explain` walks with `set_ad=False`: the defender's look at the target changes
nothing in the tables the other commands dump and audit.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from kaiser.attacks.cache import DataCache, Hit, Timer, TimerNoise
from kaiser.attacks.meltdown import ByteReading, Calibration, MeltdownAttacker, MeltdownParams, Sigsegv
from kaiser.attacks.user_mmu import translations
from kaiser.choices import SECRET_REGIONS as REGIONS
from kaiser.linux.kernel import THREAD_SIZE, Kernel, KernelConfig, Task
from kaiser.sourced import Source, chosen, cited
from kaiser.x86.bits import PF_VECTOR, PFEC, PTE, entry_phys
from kaiser.x86.counters import TlbCounters
from kaiser.x86.cpu import CpuState
from kaiser.x86.physmem import PAGE_SIZE, FrameKind, PhysicalMemory
from kaiser.x86.processor import DEFAULT_PROCESSOR, Processor, Transient
from kaiser.x86.rights import Op
from kaiser.x86.tlb_geometry import TlbGeometry
from kaiser.x86.walker import Fault, translate

# Regions whose memory is sensitive in ASI's sense (kaiser.linux.asi): a fresh frame no
# nonsensitive allocation owns, and a process's user page (GFP_USER carries __GFP_SENSITIVE).
# The other regions hold nonsensitive memory, which the asi variant maps by design.
SENSITIVE_REGIONS: Final = ("direct-map", "sensitive")


# The tag of every number of MeltdownParams (kaiser.sourced): the attack program's own knobs (here,
# not in meltdown.py, which imports nothing of the model).
MELTDOWN_PARAM_SOURCES: Final[dict[str, Source]] = {
    "stride": cited(
        "4096: one probe line per page, as the Meltdown PoC (libkdump), out of the L2 spatial prefetcher's reach"
    ),
    "max_rounds": chosen("12 rounds a byte before giving up: a bound on the attack's time, with room for retries"),
    "min_votes": chosen("3 votes, so one lying probe (TimerNoise) cannot claim a byte"),
    "lead": chosen("a lead of 2 over the runner-up stops a round early"),
    "calibration_samples": chosen("200 timed hits and as many misses to set the threshold"),
}


class AttackError(ValueError):
    """A bad request: unknown region, a length out of range, a target nothing is mapped at."""


class SegmentationFault(Exception):
    """An architectural fault of a plain user load or CLFLUSH: the process would get SIGSEGV."""

    def __init__(self, info: Sigsegv) -> None:
        super().__init__(f"SIGSEGV at {info.addr:#x} (error {info.error_code:#x})")
        self.info = info


@dataclass(frozen=True)
class MemResult:
    """One load: the value dependent instructions see (`None`: nothing flows), the architectural
    fault if any, and the load's latency in cycles."""

    value: int | None
    fault: Fault | None
    cycles: int


def transient_source(fault: Fault) -> int | None:
    """Physical address a vulnerable core loads from despite `fault`: only a #PF whose walk ended
    at a present leaf and failed the U/S check (error code P set, RSVD and PK clear, some entry on
    the path with U/S=0; SDM §4.6.1, §4.7)."""
    if fault.vector != PF_VECTOR or fault.entry is None or fault.cr2 is None:
        return None
    if not fault.error_code & PFEC.P or fault.error_code & (PFEC.RSVD | PFEC.PK):
        return None
    if not all(e.value & PTE.P for e in fault.entries):
        return None
    if all(e.value & PTE.US for e in fault.entries):
        return None  # a user page that failed for another reason (write, fetch): not Meltdown
    size = fault.entry.level.span
    return entry_phys(fault.entry.value, size) | (fault.cr2 & (size - 1))


class Core:
    """One logical CPU running a user task: the MMU (TLBs, walker, counters; on `path`), a data
    cache, a timer."""

    def __init__(
        self,
        mem: PhysicalMemory,
        state: CpuState,
        *,
        meltdown_vulnerable: bool | None = None,
        seed: int = 0,
        noise: TimerNoise | None = None,
        cache: DataCache | None = None,
        transient: Transient = DEFAULT_PROCESSOR.transient,
        geometry: TlbGeometry = DEFAULT_PROCESSOR.tlb,
        path: str = "engine",
    ) -> None:
        """`transient`: the part's Meltdown behaviour and race window, `geometry` its TLBs
        (kaiser.x86.processor); `meltdown_vulnerable` overrides whether it forwards (None: the
        part's); `path`: the MMU's, `engine` or `reference` (kaiser.attacks.user_mmu)."""
        if state.cpl != 3:
            raise ValueError("the attack core runs user code: CPL must be 3")
        self.mem = mem
        self.meltdown_vulnerable = transient.meltdown if meltdown_vulnerable is None else meltdown_vulnerable
        self.transient = transient
        self.cache = cache or DataCache()
        self.timer = Timer(seed ^ 0x71E5, noise or TimerNoise())
        self._race = random.Random(seed ^ 0x5ACE)
        self.translations = translations(mem, state, geometry, path)
        # Architectural translation of a user read, by the MMU: its physical address or fault (the
        # MMU's own method: the hot path, no call of the core's between).
        self.user_pa: Callable[[int], int | Fault] = self.translations.pa
        self.cycles = 0

    @property
    def state(self) -> CpuState:
        """The registers the core runs with (the MMU's)."""
        return self.translations.state

    @property
    def counters(self) -> TlbCounters:
        """The MMU's counters: every user access so far."""
        return self.translations.counters

    def sync(self) -> None:
        """Bring `mem` up to date with the MMU (the A bits its walks set)."""
        self.translations.sync()

    def load(self, va: int) -> MemResult:
        """A one-byte user load, architectural and transient."""
        pa = self.user_pa(va)
        if not isinstance(pa, Fault):
            hit = self.cache.access(pa)
            return MemResult(self.mem.read_bytes(pa, 1)[0], None, self.cache.latency(hit))
        fault = pa
        source = transient_source(fault) if self.meltdown_vulnerable else None
        if source is None:
            return MemResult(None, fault, 0)
        latency = self.cache.latency(self.cache.where(source))
        self.cache.access(source)  # the transient load fills the line whether or not it wins
        # The race between the faulting load and the exception (Transient: the window in which
        # dependants still run): data later than it is not forwarded (0 instead), but the
        # transient load has filled the line, so the next attempt wins.
        window = self._race.gauss(self.transient.window_mean, self.transient.window_sd)
        value = self.mem.read_bytes(source, 1)[0] if latency <= window else 0
        return MemResult(value, fault, latency)

    def touch(self, va: int) -> Hit | None:
        """A dependent (possibly transient) user load whose value nobody uses: only its cache fill."""
        pa = self.user_pa(va)
        return None if isinstance(pa, Fault) else self.cache.access(pa)


def sanitize_error_code(addr: int, error_code: int, user_top: int) -> int:
    """Linux reports every user fault on a kernel address as a protection fault, so the signal
    frame does not reveal which kernel pages are present (arch/x86/mm/fault.c,
    `sanitize_error_code()`)."""
    return error_code | int(PFEC.P) if addr >= user_top else error_code


class UserProcess:
    """A user process as its own code sees it: implements `kaiser.attacks.meltdown.UserPort`."""

    __slots__ = ("_core", "_task", "_user_top")

    def __init__(self, core: Core, task: Task, user_top: int) -> None:
        self._core = core
        self._task = task
        self._user_top = user_top

    def _segv(self, fault: Fault) -> Sigsegv:
        addr = fault.cr2 or 0
        return Sigsegv(addr, sanitize_error_code(addr, fault.error_code, self._user_top))

    def _pa(self, va: int) -> int:
        pa = self._core.user_pa(va)
        if isinstance(pa, Fault):
            raise SegmentationFault(self._segv(pa))
        return pa

    def mmap(self, length: int) -> int:
        """Anonymous private memory, populated (MAP_POPULATE)."""
        with self._core.translations.edit_tables():
            return self._task.mm.mmap(length, name="attacker")

    def clflush(self, va: int) -> None:
        """CLFLUSH is checked like a byte load (SDM Vol. 2A, CLFLUSH: #PF as for a read)."""
        self._core.cache.clflush(self._pa(va))

    def timed_load(self, va: int) -> int:
        """`rdtscp; mov (va); rdtscp`: measured cycles of one load of the process's own memory."""
        core = self._core
        cycles = core.timer.measure(core.cache.latency(core.cache.access(self._pa(va))))
        core.cycles += cycles
        return cycles

    def meltdown_gadget(self, target: int, probe: int, stride: int) -> Sigsegv | None:
        """``x = *(u8 *)target; probe[x * stride];`` then the signal, if the load faulted."""
        result = self._core.load(target)
        if result.value is not None:
            self._core.touch(probe + result.value * stride)
        return None if result.fault is None else self._segv(result.fault)


# ---- planting the secret ------------------------------------------------------------------------
@dataclass(frozen=True)
class Secret:
    """Random bytes the kernel holds at `va` (physical `pa` for the first byte)."""

    region: str
    va: int
    pa: int
    data: bytes


def _kernel_pa(kernel: Kernel, va: int) -> int | None:
    leaf = kernel.init.kernel_pt.lookup(va)
    return None if leaf is None else leaf.pa | (va & (leaf.size - 1))


def plant_at(kernel: Kernel, va: int, data: bytes, region: str = "target") -> Secret:
    """Write `data` at whatever init_mm maps at `va` (kernel half only, never into a page table)."""
    lay = kernel.layout
    if not lay.kernel_start <= va < 1 << 64 or va + len(data) > 1 << 64:
        raise AttackError(f"target {va:#x} is not a kernel address (kernel half starts at {lay.kernel_start:#x})")
    first = None
    for offset in range(len(data)):
        pa = _kernel_pa(kernel, va + offset)
        if pa is None:
            raise AttackError(f"nothing is mapped at {va + offset:#x} in the kernel's tables")
        if kernel.mem.kind_of(pa & ~(PAGE_SIZE - 1)) is FrameKind.PAGE_TABLE:
            raise AttackError(f"{va + offset:#x} maps a page-table frame ({pa:#x}); refusing to overwrite it")
        kernel.mem.write_bytes(pa, data[offset : offset + 1])
        first = pa if first is None else first
    assert first is not None
    return Secret(region, va, first, data)


def plant_secret(kernel: Kernel, region: str, length: int, rng: random.Random, victim: Task) -> Secret:
    """Random secret bytes in a kernel region, returned with the address the attacker targets:
    `direct-map`: a fresh data frame at its direct-map address; `kernel-data`: inside the image's
    .data at its kernel-image address; `vmalloc`: in the victim task's vmalloc'd kernel stack;
    `sensitive`: in a page of the victim's own user memory, at its direct-map alias (GFP_USER:
    sensitive under ASI); `nonsensitive`: in a kernel allocation (GFP_KERNEL, the ASI RFC's
    nonsensitive default) at its direct-map address."""
    data = rng.randbytes(length)
    lay = kernel.layout
    if region == "direct-map":
        offset = rng.randrange(PAGE_SIZE // 8) * 8
        pa = kernel.mem.alloc(FrameKind.DATA, "meltdown secret", count=-(-(offset + length) // PAGE_SIZE))
        va = lay.page_offset_base + pa + offset
    elif region == "kernel-data":
        sec = lay.section("data")
        va = sec.start + rng.randrange((sec.size - PAGE_SIZE - length) // 8) * 8
    elif region == "vmalloc":
        top_page = victim.stack + THREAD_SIZE - PAGE_SIZE
        va = top_page + rng.randrange((PAGE_SIZE - length) // 8 + 1) * 8
    elif region in ("sensitive", "nonsensitive"):
        offset = rng.randrange((PAGE_SIZE - length) // 8 + 1) * 8
        if region == "sensitive":
            user = victim.mm.mmap(PAGE_SIZE, name="victim secret")
            leaf = victim.mm.pt.lookup(user)
            assert leaf is not None  # populated at mmap (MAP_POPULATE)
            pa = leaf.pa + (user - leaf.va)
        else:
            pa = kernel.alloc_kernel_pages(1, "meltdown secret")
        va = lay.page_offset_base + pa + offset
    else:
        raise AttackError(f"unknown region {region!r}; known: {', '.join(REGIONS)}")
    return plant_at(kernel, va, data, region)


# ---- why the target is (not) reachable ------------------------------------------------------------
@dataclass(frozen=True)
class Reach:
    """The attacker's walk of the target, as the defender explains it (the attacker never sees it)."""

    present: bool  # the walk reached a present leaf
    user: bool  # ... and the leaf is user-accessible
    level: str  # SDM entry name where the walk stopped
    index: int
    entry: int
    reason: str
    top_index: int  # top-level slot of the target
    part: str | None  # the variant's user-mapped part covering the target, if any

    def describe(self) -> str:
        where = f"{self.level}[{self.index}] = {self.entry:#018x}"
        if self.user:
            return f"user-accessible leaf at {where}"
        via = f" [user tables' part: {self.part}]" if self.part else ""
        if self.index < 0:  # a fault before paging (LASS): no entry was read
            return f"no walk: {self.reason}{via}"
        verdict = "present supervisor leaf" if self.present else "walk stops"
        return f"{verdict} at {where}: {self.reason}{via}"

    def as_dict(self) -> dict[str, object]:
        return {
            "present": self.present,
            "user": self.user,
            "level": self.level,
            "index": self.index,
            "entry": hex(self.entry),
            "reason": self.reason,
            "top_index": self.top_index,
            "part": self.part,
            "summary": self.describe(),
        }


def explain(kernel: Kernel, state: CpuState, va: int) -> Reach:
    """Walk `va` at CPL 3 under the attacker's CR3 (no A/D) and name the entry that decided it."""
    walk = translate(kernel.mem, state, va, Op.READ, set_ad=False)
    top = walk.entries[0].index if walk.entries else -1
    if not kernel.variant.isolating:
        part: str | None = "no isolation"
    else:
        covering = dict.fromkeys(name for lo, hi, name in kernel.user_allowed_ranges() if lo <= va < hi)
        part = "+".join(covering) or None  # with 5-level paging one top-level entry can hold several
    if isinstance(walk, Fault):
        ref = walk.entry
        if ref is None:
            return Reach(False, False, "-", -1, 0, walk.reason, top, part)
        present = transient_source(walk) is not None
        return Reach(present, False, ref.level.entry, ref.index, ref.value, walk.reason, top, part)
    leaf = walk.entries[-1]
    return Reach(True, True, leaf.level.entry, leaf.index, leaf.value, "user-accessible", top, part)


# ---- the experiment -------------------------------------------------------------------------------
@dataclass
class MeltdownResult:
    """One attack: what was planted, what the attacker recovered, and why."""

    variant: str
    region: str
    secret: Secret
    readings: list[ByteReading]
    calibration: Calibration
    reach: Reach
    vulnerable: bool
    config: KernelConfig
    seconds: float = 0.0
    timer_cycles: int = 0
    cache_hits: dict[str, int] = field(default_factory=dict)
    counters: TlbCounters | None = None  # the attacker core's MMU (not in the JSON)
    # Is this secret one the variant's isolation promises to keep from user mode? Every secret
    # but under asi, which promises it only for sensitive memory (it maps nonsensitive memory
    # by design, kaiser.linux.asi).
    protected: bool = True

    @property
    def recovered(self) -> list[int | None]:
        return [r.value for r in self.readings]

    @property
    def claimed(self) -> int:
        """Bytes the attacker reports a value for."""
        return sum(v is not None for v in self.recovered)

    @property
    def correct(self) -> int:
        """Bytes recovered correctly."""
        return sum(v == s for v, s in zip(self.recovered, self.secret.data, strict=True))

    @property
    def accuracy(self) -> float:
        return self.correct / len(self.secret.data)

    @property
    def rounds(self) -> int:
        return sum(r.rounds for r in self.readings)

    def as_dict(self) -> dict[str, object]:
        return {
            "variant": self.variant,
            "region": self.region,
            "target": hex(self.secret.va),
            "secret_pa": hex(self.secret.pa),
            "length": len(self.secret.data),
            "secret_bytes": list(self.secret.data),
            "recovered_bytes": self.recovered,
            "secret_hex": self.secret.data.hex(),
            "recovered_hex": "".join("??" if v is None else f"{v:02x}" for v in self.recovered),
            "correct": self.correct,
            "claimed": self.claimed,
            "accuracy": self.accuracy,
            "leaked": self.correct > 0,
            "protected": self.protected,
            "vulnerable_core": self.vulnerable,
            "lass": self.config.lass_active,
            "pcid": self.config.pcid,
            "la57": self.config.la57,
            "kaslr": self.config.kaslr,
            "seed": self.config.seed,
            "reachable": self.reach.as_dict(),
            "threshold": self.calibration.threshold,
            "calibration": {"hit_median": self.calibration.hit_median, "miss_median": self.calibration.miss_median},
            "rounds": self.rounds,
            "seconds": round(self.seconds, 3),
        }


def run_meltdown(
    variant: str = "linux",
    *,
    region: str = "direct-map",
    target: int | None = None,
    length: int = 32,
    seed: int = 0,
    vulnerable: bool | None = None,
    processor: Processor = DEFAULT_PROCESSOR,
    pcid: bool = True,
    la57: bool = False,
    kaslr: bool = True,
    params: MeltdownParams | None = None,
    noise: TimerNoise | None = None,
    progress: Callable[[int], None] | None = None,
    path: str = "engine",
    **machine: Any,
) -> MeltdownResult:
    """Boot `variant`, start a victim and an attacker process, plant `length` random bytes in
    `region` (or at `target`), and let the attacker read them through Flush+Reload. The core is
    `processor`'s (its Meltdown behaviour and race window); `vulnerable` overrides whether it
    forwards (None: the processor's). `path`: where the core's MMU runs, the compiled engine or
    the reference Mmu (the same results)."""
    if vulnerable is None:
        vulnerable = processor.transient.meltdown
    if not 1 <= length <= PAGE_SIZE:
        raise AttackError(f"length {length} must be 1..{PAGE_SIZE}")
    if target is None and region not in REGIONS:
        raise AttackError(f"unknown region {region!r}; known: {', '.join(REGIONS)}")
    started = time.perf_counter()
    config = KernelConfig(variant=variant, pcid=pcid, la57=la57, kaslr=kaslr, seed=seed, **machine)
    kernel = Kernel.boot(config)
    victim = kernel.spawn()
    attacker_task = kernel.spawn()
    rng = random.Random(seed ^ 0x5EC2E7)
    if target is not None:
        secret = plant_at(kernel, target, rng.randbytes(length))
    else:
        secret = plant_secret(kernel, region, length, rng, victim)
    kcr3, ucr3 = kernel.cr3_pair(attacker_task)
    state = CpuState(cr3=kcr3 if ucr3 is None else ucr3, cr4=kernel.cr4(), cpl=3)
    core = Core(
        kernel.mem,
        state,
        meltdown_vulnerable=vulnerable,
        seed=seed,
        noise=noise,
        transient=processor.transient,
        geometry=processor.tlb,
        path=path,
    )
    attacker = MeltdownAttacker(UserProcess(core, attacker_task, kernel.user_top), params)
    readings = attacker.read(secret.va, length, progress)
    core.sync()
    protected = True
    if kernel.asi is not None:
        protected = secret.region in SENSITIVE_REGIONS or (
            secret.region == "target" and kernel.asi.sensitive_direct_map(secret.va, secret.pa)
        )
    return MeltdownResult(
        variant=variant,
        region=secret.region,
        secret=secret,
        readings=readings,
        calibration=attacker.calibration,
        reach=explain(kernel, state, secret.va),
        vulnerable=vulnerable,
        config=config,
        seconds=time.perf_counter() - started,
        timer_cycles=core.cycles,
        cache_hits={h.name: n for h, n in core.cache.stats.hits.items()},
        counters=core.counters,
        protected=protected,
    )
