"""One bench run: boot a variant, compile a workload, replay it, price it; and comparisons with nopti.

`run(...)` boots `Kernel(KernelConfig(variant, pcid, ...))`, lets the workload set up processes
and buffers, compiles `warmup` iterations and then `iterations` measured ones into two event
arrays, replays both on one fresh MMU (the warm-up fills TLBs and paging-structure caches; only
the measured part is counted) and prices the counts with `kaiser.cost.model`.

Two replay paths, one semantics: `path="engine"` uses the compiled `kaiser.x86.engine.Engine`,
`path="reference"` the readable `Mmu` (`replay_reference`); `path=None` picks the engine when it
can be imported, else the reference path.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from kaiser.cost.model import Cycles, overhead_percent, price, rate_per_second
from kaiser.cost.params import SKYLAKE, CostParams
from kaiser.cost.workloads import Workload, get_workload
from kaiser.linux.entry import EntryModel, OpCounts
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.variants import BASELINE, Variant
from kaiser.record.replay import RecordedSide, pages_report
from kaiser.x86.cache_geometry import CacheHierarchy
from kaiser.x86.counters import TlbCounters
from kaiser.x86.cpu import CpuFeatures, CpuState
from kaiser.x86.events import replay_reference
from kaiser.x86.mmu import Mmu
from kaiser.x86.nested import HostTable, NestedMmu
from kaiser.x86.physmem import PhysicalMemory
from kaiser.x86.tlb_geometry import DEFAULT_GEOMETRY, TlbGeometry

if TYPE_CHECKING:
    from kaiser.x86.engine import Engine

Path = Literal["engine", "reference"]


def engine_available() -> bool:
    """Whether the numba engine can be imported (numba installed)."""
    return importlib.util.find_spec("kaiser.x86.engine") is not None


def default_path() -> Path:
    """The engine where it is available, else the reference path (same results, slower)."""
    return "engine" if engine_available() else "reference"


def _cpu(
    mem: PhysicalMemory,
    state: CpuState,
    features: CpuFeatures,
    geometry: TlbGeometry,
    path: Path,
    caches: CacheHierarchy | None,
    host: HostTable | None,
) -> Engine | Mmu:
    """The CPU that replays on `path`: the compiled engine, or the reference `Mmu` (a
    `NestedMmu` for a guest)."""
    if path == "engine":
        from kaiser.x86.engine import Engine

        return Engine(mem, state, features, geometry, caches=caches, host=host)
    if path != "reference":
        raise ValueError(f"unknown replay path {path!r}; use 'engine' or 'reference'")
    if host is not None:
        return NestedMmu(mem, state, host, features=features, geometry=geometry, caches=caches)
    return Mmu(mem, state, features=features, geometry=geometry, caches=caches)


def make_replayer(
    mem: PhysicalMemory,
    state: CpuState,
    features: CpuFeatures,
    geometry: TlbGeometry,
    path: Path,
    caches: CacheHierarchy | None = None,
    host: HostTable | None = None,
) -> Callable[[np.ndarray], TlbCounters]:
    """A function replaying event arrays on one CPU whose TLB (and cache) state persists between
    calls. `caches`: the data-cache hierarchy, or None for none (every reference an L1D hit);
    `host`: a guest's nested paging (kaiser.x86.nested), or None for bare metal."""
    cpu = _cpu(mem, state, features, geometry, path, caches, host)
    if isinstance(cpu, Mmu):
        return lambda events: replay_reference(cpu, events)
    replay: Callable[[np.ndarray], TlbCounters] = cpu.replay
    return replay


def make_stepper(
    mem: PhysicalMemory,
    state: CpuState,
    features: CpuFeatures,
    geometry: TlbGeometry,
    path: Path,
    caches: CacheHierarchy | None = None,
    host: HostTable | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """`make_replayer` for many small batches: each call returns the counters it added as an
    int64 array in `TlbCounters`' field order (the engine's `step`, its memory copy kept between
    calls: nothing edits `mem` from Python meanwhile)."""
    cpu = _cpu(mem, state, features, geometry, path, caches, host)
    if isinstance(cpu, Mmu):
        return lambda events: np.array(dataclasses.astuple(replay_reference(cpu, events)), dtype=np.int64)
    engine = cpu
    return lambda events: engine.step(events, sync=False)


def replay_split(
    step: Callable[[np.ndarray], np.ndarray], events: np.ndarray, spans: list[tuple[int, int]]
) -> tuple[TlbCounters, TlbCounters]:
    """Replay `events` in order, batch by batch at the bounds of `spans` (sorted, disjoint
    [start, end) ranges): (every counter, the counters of the events inside `spans`)."""
    total, inside = replay_spans(step, events, {"inside": spans})
    return total, inside["inside"]


def replay_spans(
    step: Callable[[np.ndarray], np.ndarray], events: np.ndarray, spans: dict[str, list[tuple[int, int]]]
) -> tuple[TlbCounters, dict[str, TlbCounters]]:
    """`replay_split` with several kinds of span (disjoint across kinds too): (every counter, per
    kind the counters of the events inside its spans)."""
    width = len(dataclasses.fields(TlbCounters))
    total = np.zeros(width, dtype=np.int64)
    inside = {kind: total.copy() for kind in spans}
    pos = 0
    for start, end, kind in sorted((a, b, k) for k, ranges in spans.items() for a, b in ranges):
        if start > pos:
            total += step(events[pos:start])
        got = step(events[start:end])
        total += got
        inside[kind] += got
        pos = end
    if pos < len(events):
        total += step(events[pos:])
    return TlbCounters(*total.tolist()), {k: TlbCounters(*v.tolist()) for k, v in inside.items()}


@dataclass
class RunResult:
    """Counts, operations and cycles of the measured iterations of one run."""

    variant: str
    pcid: bool
    workload: str
    knobs: dict[str, Any]
    iterations: int
    path: str
    events: int
    counters: TlbCounters
    ops: OpCounts
    cycles: Cycles
    params: CostParams = field(repr=False, default=SKYLAKE)
    kernel_side: dict[str, str] = field(default_factory=dict)  # transition -> recorded|modelled
    kernel_pages: dict[str, dict[str, Any]] = field(default_factory=dict)  # a recording's pages, per syscall
    recorded_counters: TlbCounters | None = None  # of the recorded transitions' events alone
    host_page: str | None = None  # a guest's nested paging: the host page size (None: bare metal)
    user_counters: TlbCounters | None = None  # of the user phases' independent loads alone

    @property
    def recorded_transitions(self) -> int:
        o = self.ops
        return o.recorded_syscalls + o.recorded_interrupts + o.recorded_exceptions

    def recorded_walks(self) -> dict[str, float] | None:
        """Page walks a recorded transition (its entry path, body and exit), or None without any."""
        n, c = self.recorded_transitions, self.recorded_counters
        if not n or c is None:
            return None
        return {"transitions": n, "per_transition": c.walks / n, "itlb": c.walks_i / n, "dtlb": c.walks_d / n}

    @property
    def per_op(self) -> float:
        return self.cycles.total / self.iterations

    @property
    def syscalls(self) -> int:
        return self.ops.syscalls

    def per_syscall(self, value: float) -> float:
        return value / self.ops.syscalls if self.ops.syscalls else float("nan")

    @property
    def syscall_rate(self) -> float:
        """System calls per second of this run's modelled time."""
        return rate_per_second(self.ops.syscalls, self.cycles.total, self.params)

    def as_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "pcid": self.pcid,
            "workload": self.workload,
            "knobs": self.knobs,
            "iterations": self.iterations,
            "path": self.path,
            "events": self.events,
            "vm": self.host_page is not None,
            "host_page": self.host_page,
            "counters": self.counters.as_dict(),
            "ops": self.ops.as_dict(),
            "cycles": self.cycles.as_dict(),
            "cycles_per_op": self.per_op,
            "syscalls_per_second": self.syscall_rate,
            "kernel_side": self.kernel_side,
            "kernel_pages": self.kernel_pages,
            "recorded_walks": self.recorded_walks(),
            "walks": {
                "total": self.counters.walks,
                "per_syscall": self.per_syscall(self.counters.walks),
                "itlb_per_syscall": self.per_syscall(self.counters.walks_i),
                "dtlb_per_syscall": self.per_syscall(self.counters.walks_d),
            },
        }


def transition_sides(em: EntryModel, ops: OpCounts) -> dict[str, str]:
    """Per transition the run compiled: "recorded" when its kernel body came from a recording,
    else "modelled" (linux/syscalls.py's hand-placed references)."""
    out = {name: ("recorded" if name in em.recorded_calls else "modelled") for name in ops.syscalls_by_name}
    for key, count in (
        ("interrupt", ops.interrupts),
        ("nmi", ops.nmis),
        ("page_fault", ops.exceptions),
        ("context_switch", ops.context_switches),
    ):
        if count:  # an interrupt's recorded body is the one from user mode (inside the kernel: modelled)
            out[key] = "recorded" if key in em.recorded_calls else "modelled"
    return out


def run(
    variant: str | Variant,
    workload: str | Workload,
    *,
    pcid: bool = True,
    settings: dict[str, str] | None = None,
    iterations: int = 200,
    warmup: int = 50,
    path: Path | None = None,
    params: CostParams = SKYLAKE,
    la57: bool = False,
    kaslr: bool = True,
    seed: int = 0,
    geometry: TlbGeometry = DEFAULT_GEOMETRY,
    caches: CacheHierarchy | None = None,
    kernel_side: str = "recorded",
    switches: dict[str, Any] | None = None,
    host_page: str | None = None,
) -> RunResult:
    """Boot, compile, replay, price. `variant` may be a registry name or a `Variant` object.
    `kernel_side="recorded"` (the default): system call, user interrupt and user page-fault
    bodies from the shipped recordings where one exists (kaiser.record.replay), the entry and
    exit paths still the variant's own, priced as the recorded instructions (kaiser.cost.model);
    `"modelled"`: linux/syscalls.py's hand-placed references for every transition.
    With `caches`, references are priced by the cache level that served them, at the latencies
    in `params` (the caller picks them: `kaiser.cost.params.for_caches`, or a machine's).
    `switches`: further `KernelConfig` switches (pti, vendor, vsyscall; kaiser.cli.machine).
    `host_page` (4k, 2m, 1g): run as a guest with nested paging over an identity EPT of that page
    size (kaiser.x86.nested); None: bare metal."""
    wl = get_workload(workload) if isinstance(workload, str) else workload
    knobs = wl.resolve(settings)
    name = variant if isinstance(variant, str) else variant.name
    config = KernelConfig(
        name if isinstance(variant, str) else "linux", pcid=pcid, la57=la57, kaslr=kaslr, seed=seed, ncpus=1,
        **(switches or {}),
    )  # fmt: skip
    kernel = Kernel.boot(config, variant=None if isinstance(variant, str) else variant)
    em = EntryModel(kernel)
    em.track_spans = True  # the recorded transitions' counters are priced apart
    if kernel_side == "recorded":
        em.kernel_side = RecordedSide(em)
    elif kernel_side != "modelled":
        raise ValueError(f"unknown kernel side {kernel_side!r}; use 'recorded' or 'modelled'")
    state = wl.setup(em, knobs)
    if warmup:
        wl.iterate(em, state, knobs, warmup)
    user_spans: list[tuple[int, int]] | None = getattr(state, "user_spans", None)
    if user_spans is not None:
        user_spans.clear()  # the measured part's event indices start again at 0
    warm_events = em.out.array()
    em.out = type(em.out)()
    em.ops = OpCounts()
    em.recorded_spans = []
    wl.iterate(em, state, knobs, iterations)
    events = em.out.array()
    features = CpuFeatures(maxphyaddr=kernel.mem.maxphyaddr)
    path = path or default_path()
    host = HostTable.build(kernel.mem.size, host_page) if host_page else None
    recorded: TlbCounters | None = None
    user: TlbCounters | None = None
    if em.recorded_spans or user_spans:  # counted apart: the recorded transitions, the user loads
        step = make_stepper(kernel.mem, em.initial_state(), features, geometry, path, caches, host)
        if len(warm_events):
            step(warm_events)
        counters, inside = replay_spans(step, events, {"recorded": em.recorded_spans, "user": user_spans or []})
        recorded = inside["recorded"] if em.recorded_spans else None
        user = inside["user"] if user_spans else None
    else:
        replay = make_replayer(kernel.mem, em.initial_state(), features, geometry, path, caches, host)
        if len(warm_events):
            replay(warm_events)
        counters = replay(events)
    return RunResult(
        name,
        pcid,
        wl.name,
        knobs,
        iterations,
        path,
        len(events),
        counters,
        em.ops,
        price(counters, em.ops, params, caches=caches is not None, recorded=recorded, user=user),
        params,
        transition_sides(em, em.ops),
        pages_report(sorted(transition_sides(em, em.ops)), set(em.recorded_calls)),
        recorded,
        host_page,
        user,
    )


@dataclass
class Comparison:
    """A run and the nopti run at the same work and PCID setting."""

    result: RunResult
    baseline: RunResult

    @property
    def overhead(self) -> float:
        return overhead_percent(self.result.cycles.total, self.baseline.cycles.total)

    def extra_walks(self) -> int:
        return self.result.counters.walks - self.baseline.counters.walks

    def overhead_at_work(self, work_cycles_per_op: float) -> float:
        """The overhead if every iteration did `work_cycles_per_op` more user computation: the
        event stream does not depend on `work`, so this is exact for the model."""
        extra = work_cycles_per_op * self.result.iterations
        return overhead_percent(self.result.cycles.total + extra, self.baseline.cycles.total + extra)

    def rate_at_work(self, work_cycles_per_op: float) -> float:
        """System calls per second of nopti time at that extra work."""
        b = self.baseline
        return rate_per_second(b.ops.syscalls, b.cycles.total + work_cycles_per_op * b.iterations, b.params)

    def per_syscall(self) -> dict[str, float]:
        r = self.result
        return {
            "itlb_walks": r.per_syscall(r.counters.walks_i),
            "dtlb_walks": r.per_syscall(r.counters.walks_d),
            "extra_walks_vs_nopti": r.per_syscall(self.extra_walks()),
            "cr3_writes": r.per_syscall(r.counters.cr3_writes),
            "cr3_flushing_writes": r.per_syscall(r.counters.cr3_writes - r.counters.cr3_noflush),
            "cycles": r.per_syscall(r.cycles.total),
            "overhead_percent": self.overhead,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.result.as_dict(),
            "overhead_percent": self.overhead,
            "baseline_cycles_per_op": self.baseline.per_op,
            "syscalls_per_second": self.result.syscall_rate,
            "per_syscall": self.per_syscall(),
        }


def compare(
    variants: list[str],
    workload: str,
    *,
    pcids: tuple[bool, ...] = (True, False),
    settings: dict[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
    **kw: Any,
) -> list[Comparison]:
    """Each variant at each PCID setting against nopti at the same setting and work."""
    out: list[Comparison] = []
    for pcid in pcids:
        if progress:
            progress(f"{BASELINE} pcid={'on' if pcid else 'off'}")
        base = run(BASELINE, workload, pcid=pcid, settings=settings, **kw)
        for v in variants:
            if progress:
                progress(f"{v} pcid={'on' if pcid else 'off'}")
            out.append(
                Comparison(base if v == BASELINE else run(v, workload, pcid=pcid, settings=settings, **kw), base)
            )
    return out
