"""`kaiser bench engine`: the engine's and the reference path's references per second, one run.

A realistic user stream on a booted `linux` kernel: two processes with the footprint of a small
server (`populate_typical`), instruction fetches from their text, loads and stores over their data
with Zipf-distributed page popularity and short sequential runs inside a page, and a context
switch (MOV to CR3 of the other process, NOFLUSH with PCID) every `switch_every` references.
Both paths replay the same first `ref_refs` events from the same cold state and must agree on
every counter; the engine then replays all `n_refs` (after its compile warm-up) for the rate.
The same is done again with a data-cache hierarchy (`caches`, default skylake-client): both
paths with the caches on, their agreement on every TLB and cache counter and the cache state,
and the engine's rate with the caches on (target 25 M refs/s, reported, never asserted).
Per-call cost (`per_call`): many small batches (`PER_CALL_BATCH` events of the same stream) on one
engine that keeps its state (`sync=False`), through `Engine.step` (counters as an array) and
`Engine.replay` (named `TlbCounters`), wall and CPU time; target under 10 µs of CPU a call
(the wall clock of a shared machine also counts other processes), reported, never asserted.
In a guest (`nested`): the engine's rate on the same stream with nested paging over 2 MiB host
pages (`kaiser.x86.nested`, no data caches), its counters checked against `NestedMmu` on a tenth
of the shared slice.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np

from kaiser.linux.kernel import Kernel, KernelConfig, Task
from kaiser.linux.mm import Prot, populate_typical
from kaiser.x86.cache import Caches
from kaiser.x86.cache_geometry import CacheHierarchy, get_hierarchy
from kaiser.x86.counters import TlbCounters
from kaiser.x86.cpu import CpuFeatures, CpuState
from kaiser.x86.engine import Engine
from kaiser.x86.events import EVENT_DTYPE, Ev, replay_reference
from kaiser.x86.mmu import Mmu
from kaiser.x86.nested import HostTable, NestedMmu
from kaiser.x86.physmem import PAGE_SIZE

# The stream's knobs (a "realistic locality mix": chosen, not measured).
FETCH_SHARE = 0.30  # instruction fetches among references
WRITE_SHARE = 0.25  # stores among data references
CODE_ZIPF = 1.6  # page popularity exponents: code is hotter than data
DATA_ZIPF = 1.3
RUN_MEAN = 6  # mean references per run inside one page (sequential 8-byte steps)
# CHOSEN: 19 events, the small batch issue 15 measured (154 µs of overhead against ~3 µs of loop);
# 20,000 calls a round (~0.1 s at the target) so that the timer's resolution does not matter.
PER_CALL_BATCH = 19
PER_CALL_CALLS = 20_000
PER_CALL_TARGET_US = 10.0


def _pages(task: Task, want: Prot, avoid: Prot = Prot.NONE) -> np.ndarray:
    vas = [
        np.arange(v.start, v.end, PAGE_SIZE, dtype=np.uint64)
        for v in task.mm.vmas
        if v.prot & want == want and not v.prot & avoid and not v.name.startswith("[vdso")
    ]
    return np.concatenate(vas)


def _zipf_pick(rng: np.random.Generator, pages: np.ndarray, exponent: float, n: int) -> np.ndarray:
    """`n` pages, page of rank r drawn with weight r**-exponent over a random ranking."""
    ranked = rng.permutation(pages)
    weights = np.arange(1, len(ranked) + 1, dtype=np.float64) ** -exponent
    return ranked[rng.choice(len(ranked), size=n, p=weights / weights.sum())]


def user_stream(
    kernel: Kernel, tasks: list[Task], n_refs: int, seed: int, switch_every: int = 20_000
) -> tuple[np.ndarray, int]:
    """(events, index of the task running first): `n_refs` user references at CPL 3 with a
    MOV to CR3 to the next task every `switch_every` references."""
    rng = np.random.default_rng(seed)
    segments = []
    n_seg = -(-n_refs // switch_every)
    per_task = []
    for task in tasks:
        per_task.append((_pages(task, Prot.EXEC), _pages(task, Prot.READ, Prot.EXEC), _pages(task, Prot.WRITE)))
    for s in range(n_seg):
        t = s % len(tasks)
        n = min(switch_every, n_refs - s * switch_every)
        code, data, writable = per_task[t]
        runs = max(1, n // RUN_MEAN + 1)
        run_len = rng.geometric(1 / RUN_MEAN, size=runs)
        run_len[-1] += max(0, n - int(run_len.sum()))
        kind_of_run = rng.random(runs)
        fetch = kind_of_run < FETCH_SHARE
        write = ~fetch & (rng.random(runs) < WRITE_SHARE)
        page = np.where(
            fetch,
            _zipf_pick(rng, code, CODE_ZIPF, runs),
            np.where(write, _zipf_pick(rng, writable, DATA_ZIPF, runs), _zipf_pick(rng, data, DATA_ZIPF, runs)),
        )
        start = rng.integers(0, PAGE_SIZE // 8, size=runs).astype(np.uint64) * np.uint64(8)
        idx = np.repeat(np.arange(runs), run_len)[:n]
        step = np.arange(len(idx)) - np.repeat(np.cumsum(run_len) - run_len, run_len)[:n]
        seg = np.zeros(n + (1 if s else 0), EVENT_DTYPE)
        body = seg[1:] if s else seg
        body["kind"] = np.where(fetch[idx], Ev.FETCH, np.where(write[idx], Ev.WRITE, Ev.READ))
        body["cpl"] = 3
        body["a"] = page[idx] + (start[idx] + np.uint64(8) * step.astype(np.uint64)) % np.uint64(PAGE_SIZE)
        if s:  # switch_mm to this task: its user CR3 (NOFLUSH with PCID: its ASID is still valid)
            _, ucr3 = kernel.cr3_pair(tasks[t], asid=t)
            assert ucr3 is not None
            seg[0] = (Ev.MOV_CR3, 0, 0, ucr3 | ((1 << 63) if kernel.config.pcid else 0), 0)
        segments.append(seg)
    return np.concatenate(segments), 0


def _setup(seed: int, variant: str) -> tuple[Kernel, list[Task], CpuState, CpuFeatures]:
    kernel = Kernel.boot(KernelConfig(variant=variant, seed=seed))
    tasks = [kernel.spawn(), kernel.spawn()]
    for task in tasks:
        populate_typical(task.mm)
    _, ucr3 = kernel.cr3_pair(tasks[0], asid=0)
    assert ucr3 is not None
    state = CpuState(cr3=ucr3, cr4=kernel.cr4(), cpl=3)
    return kernel, tasks, state, CpuFeatures(maxphyaddr=kernel.mem.maxphyaddr)


def _with_caches(
    kernel: Kernel,
    state: CpuState,
    features: CpuFeatures,
    events: np.ndarray,
    head: np.ndarray,
    hierarchy: CacheHierarchy,
    repeats: int,
) -> dict[str, Any]:
    """Both paths on `head` and the engine's rate on `events`, with the data caches on."""
    refs_total = int(np.count_nonzero(events["kind"] <= Ev.FETCH))
    refs_head = int(np.count_nonzero(head["kind"] <= Ev.FETCH))
    warm = Engine(copy.deepcopy(kernel.mem), state, features, caches=hierarchy)
    engine_head = warm.replay(head)
    mmu = Mmu(copy.deepcopy(kernel.mem), state, features=features, caches=hierarchy)
    t0, c0 = time.perf_counter(), time.process_time()
    ref_head = replay_reference(mmu, head)
    ref_s, ref_cpu = time.perf_counter() - t0, time.process_time() - c0
    agree = ref_head == engine_head
    assert mmu.caches is not None
    got = Caches(hierarchy, TlbCounters())
    warm.store_caches(got)
    for a, b in zip(mmu.caches.arrays, got.arrays, strict=True):
        agree = agree and all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("tag", "stamp", "pf"))
    agree = agree and mmu.caches.clock == got.clock
    times, cpu_times = [], []
    counters = TlbCounters()
    for _ in range(repeats):
        engine = Engine(copy.deepcopy(kernel.mem), state, features, caches=hierarchy)
        t0, c0 = time.perf_counter(), time.process_time()
        counters = engine.replay(events)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    c = counters
    return {
        "caches": hierarchy.name,
        "engine": {
            "references": refs_total,
            "seconds_best": min(times),
            "seconds_all": times,
            "refs_per_second": refs_total / min(times),
            "refs_per_cpu_second": refs_total / min(cpu_times),
        },
        "reference": {
            "references": refs_head,
            "seconds": ref_s,
            "refs_per_second": refs_head / ref_s,
            "refs_per_cpu_second": refs_head / ref_cpu,
        },
        "agree_on_shared_slice": bool(agree),
        "stream": {
            "l1d_miss_rate": c.l1d_misses / max(1, c.l1d_hits + c.l1d_misses),
            "l1i_miss_rate": c.l1i_misses / max(1, c.l1i_hits + c.l1i_misses),
            "llc_misses": c.llc_misses,
            "dram_reads": c.dram_reads,
            "walk_loads_l1_l2_llc_dram": [c.walk_loads_l1, c.walk_loads_l2, c.walk_loads_llc, c.walk_loads_dram],
        },
        "target_refs_per_second": 25_000_000,
        "met": bool(refs_total / min(times) >= 25_000_000 and agree),
    }


def _nested(
    kernel: Kernel,
    state: CpuState,
    features: CpuFeatures,
    events: np.ndarray,
    head: np.ndarray,
    host_page: str,
    repeats: int,
) -> dict[str, Any]:
    """The engine's rate on `events` in a guest (nested paging over `host_page` host pages, no
    data caches), and its counters against `NestedMmu`'s on `head`."""
    host = HostTable.build(kernel.mem.size, host_page)
    refs_total = int(np.count_nonzero(events["kind"] <= Ev.FETCH))
    warm = Engine(copy.deepcopy(kernel.mem), state, features, host=host)
    agree = warm.replay(head) == replay_reference(
        NestedMmu(copy.deepcopy(kernel.mem), state, host, features=features), head
    )
    times, cpu_times = [], []
    counters = TlbCounters()
    for _ in range(repeats):
        engine = Engine(copy.deepcopy(kernel.mem), state, features, host=host)
        t0, c0 = time.perf_counter(), time.process_time()
        counters = engine.replay(events)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return {
        "host_page": host_page,
        "engine": {
            "references": refs_total,
            "seconds_best": min(times),
            "refs_per_second": refs_total / min(times),
            "refs_per_cpu_second": refs_total / min(cpu_times),
        },
        "agree_on_shared_slice": bool(agree),
        "stream": {
            "walks": counters.walks,
            "walk_loads": counters.walk_loads,
            "host_walk_loads": counters.host_walk_loads,
        },
    }


def per_call(
    kernel: Kernel,
    state: CpuState,
    features: CpuFeatures,
    events: np.ndarray,
    *,
    batch: int = PER_CALL_BATCH,
    calls: int = PER_CALL_CALLS,
    repeats: int = 3,
) -> dict[str, Any]:
    """Microseconds per `Engine` call on `batch`-event slices of `events` (consecutive slices,
    wrapping around), best of `repeats` rounds of `calls` calls, wall and CPU time of this process."""
    n_batches = max(1, len(events) // batch)
    batches = [events[(i % n_batches) * batch : (i % n_batches + 1) * batch] for i in range(calls)]
    engine = Engine(copy.deepcopy(kernel.mem), state, features)
    engine.step(batches[0], sync=False)  # compiles (or loads the cache) and takes the memory copy
    out: dict[str, Any] = {"batch_events": len(batches[0]), "calls": calls}
    for key, call in (("step", engine.step), ("replay", engine.replay)):
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            for part in batches:
                call(part, sync=False)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out[key] = {"us_best": min(wall) / calls * 1e6, "cpu_us_best": min(cpu) / calls * 1e6}
    out["target_us"] = PER_CALL_TARGET_US
    # Judged on CPU time: on a shared machine the wall clock also counts other processes' turns.
    out["met"] = bool(out["step"]["cpu_us_best"] < PER_CALL_TARGET_US)
    return out


def bench_engine(
    n_refs: int = 10_000_000,
    seed: int = 0,
    *,
    ref_refs: int = 50_000,
    repeats: int = 3,
    variant: str = "linux",
    caches: str = "skylake-client",
) -> dict[str, Any]:
    """Measure both paths in one run; returns rates, their ratio and the agreement check.

    Rates are wall-clock (`refs_per_second`, best of `repeats`) and per CPU second of this
    process (`refs_per_cpu_second`: what one core does when other work shares the machine)."""
    kernel, tasks, state, features = _setup(seed, variant)
    events, _ = user_stream(kernel, tasks, n_refs, seed)
    refs_total = int(np.count_nonzero(events["kind"] <= Ev.FETCH))
    head = events[: ref_refs + ref_refs // 20_000 + 1]
    head = head[: np.searchsorted(np.cumsum(head["kind"] <= Ev.FETCH), ref_refs) + 1]
    refs_head = int(np.count_nonzero(head["kind"] <= Ev.FETCH))

    # Engine on the shared slice first: compiles (or loads the cache) outside the timed runs.
    t0 = time.perf_counter()
    warm = Engine(copy.deepcopy(kernel.mem), state, features)
    engine_head = warm.replay(head)
    compile_s = time.perf_counter() - t0

    mmu = Mmu(copy.deepcopy(kernel.mem), state, features=features)
    t0, c0 = time.perf_counter(), time.process_time()
    ref_head = replay_reference(mmu, head)
    ref_s, ref_cpu = time.perf_counter() - t0, time.process_time() - c0
    agree = ref_head == engine_head and warm.state == mmu.state
    tlb = warm.to_tlb()
    agree = agree and tlb.clock == mmu.tlb.clock
    for a, b in zip((*tlb.arrays, *tlb.psc), (*mmu.tlb.arrays, *mmu.tlb.psc), strict=True):
        agree = agree and all(np.array_equal(v, getattr(b, k)) for k, v in vars(a).items() if isinstance(v, np.ndarray))

    times, cpu_times = [], []
    counters = None
    for _ in range(repeats):
        engine = Engine(copy.deepcopy(kernel.mem), state, features)
        t0, c0 = time.perf_counter(), time.process_time()
        counters = engine.replay(events)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    assert counters is not None
    best = min(times)
    engine_rate = refs_total / best
    ref_rate = refs_head / ref_s
    c = counters
    calls = per_call(kernel, state, features, events)
    return {
        "variant": variant,
        "seed": seed,
        "per_call_us": calls["step"]["us_best"],
        "per_call_cpu_us": calls["step"]["cpu_us_best"],
        "per_call": calls,
        "engine": {
            "references": refs_total,
            "events": len(events),
            "seconds_best": best,
            "seconds_all": times,
            "refs_per_second": engine_rate,
            "refs_per_second_median": refs_total / float(np.median(times)),
            "cpu_seconds_best": min(cpu_times),
            "refs_per_cpu_second": refs_total / min(cpu_times),
            "first_call_seconds": compile_s,
        },
        "reference": {
            "references": refs_head,
            "seconds": ref_s,
            "refs_per_second": ref_rate,
            "refs_per_cpu_second": refs_head / ref_cpu,
        },
        "ratio": engine_rate / ref_rate,
        "ratio_cpu": (refs_total / min(cpu_times)) / (refs_head / ref_cpu),
        "agree_on_shared_slice": bool(agree),
        "shared_slice_counters": ref_head.as_dict(),
        "stream": {
            "l1_hit_rate": (c.itlb_hits + c.dtlb_hits) / refs_total,
            "stlb_hit_rate_of_l1_misses": c.stlb_hits / max(1, c.itlb_misses + c.dtlb_misses),
            "walks": c.walks,
            "faults": c.faults,
            "cr3_writes": c.cr3_writes,
        },
        "targets": {
            "refs_per_second": 50_000_000,
            "ratio": 20,
            "met": bool(engine_rate >= 50_000_000 and engine_rate / ref_rate >= 20 and agree),
        },
        "with_caches": _with_caches(kernel, state, features, events, head, get_hierarchy(caches), repeats),
        "nested": _nested(kernel, state, features, events, head[: len(head) // 10], "2m", repeats),
    }
