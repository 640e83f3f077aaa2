"""One pass over a trace for every configuration, the configurations spread over the cores.

`replay_trace` decodes a lackey trace once -- from its text (`LackeyReader`) or from the binary
cache of an earlier parse (`kaiser.traces.trace_cache`) -- and replays it on every requested
configuration (variant x PCID x TLB geometry, `ReplayConfig`), each its own booted kernel, traced
process and replayer (`interleave.ConfigReplay`). The configurations are dealt round-robin into
`workers` groups; each group is one process (this one, and children forked by
`kaiser.traces.forked`) that boots its configurations and replays the whole trace on them, chunk
by chunk, reading the parse from the binary cache (a temporary one without `cache`), memory-mapped
and shared through the page cache. Nothing is exchanged while they run: each group's results
come back once, at the end. Processes, not threads: half of a configuration's work is Python
(booting, compiling each system call's kernel side, mapping pages), which holds the GIL, so on
threads the compiled replay (nogil) overlapped little of it and the GIL's hand-offs cost more CPU
than one thread (docs/traces.md has the figures).

The configurations share nothing mutable (each has its own memory, TLBs and counters) and every
one sees the same chunks in the same order, so each one's counters are those of a
single-configuration pass (tests/traces/test_multireplay.py checks it, with and without the
cache, in 1 and 2 processes).

`bench_replay_throughput` (`kaiser bench replay`) times the end-to-end rate of one configuration
and the one pass over every variant x PCID configuration (`all_configs`) against one pass per
configuration, paired round by round.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from kaiser.linux.kernel import Kernel, Task
from kaiser.linux.variants import VARIANTS
from kaiser.traces import forked, trace_cache
from kaiser.traces.interleave import (
    ConfigReplay,
    EntrySyscalls,
    SyscallHook,
    TraceReplay,
    TraceResult,
    align_syscalls,
    engine_available,
    require_references,
    slice_chunk,
)
from kaiser.traces.lackey import (
    CHUNK_BYTES,
    MAX_EVENTS,
    USER_TOP,
    LackeyChunk,
    LackeyReader,
    LackeyStats,
    SyscallSite,
    TraceError,
)
from kaiser.traces.strace import StraceLog
from kaiser.x86.cpu import CpuState
from kaiser.x86.physmem import FrameKind
from kaiser.x86.tlb_geometry import DEFAULT_GEOMETRY, TlbGeometry

# The requirements (issue 15): one configuration end to end from the file at this rate,
# and every variant x PCID configuration in one pass within this share of as many separate passes.
REPLAY_TARGET_REFS_PER_SECOND: Final = 25_000_000
ONE_PASS_TARGET_RATIO: Final = 0.6


@dataclass(frozen=True)
class ReplayConfig:
    """One configuration of a replay: a variant, a PCID setting, a TLB geometry."""

    variant: str
    pcid: bool
    geometry: TlbGeometry = DEFAULT_GEOMETRY


ConfigLike = ReplayConfig | tuple[str, bool] | tuple[str, bool, TlbGeometry]


def as_config(c: ConfigLike) -> ReplayConfig:
    """A `ReplayConfig` from itself or a (variant, pcid[, geometry]) tuple."""
    return c if isinstance(c, ReplayConfig) else ReplayConfig(*c)


def all_configs() -> list[ReplayConfig]:
    """Every variant with PCID, then every variant without (`kaiser replay`'s default order)."""
    return [ReplayConfig(v, p) for p in (True, False) for v in VARIANTS]


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# ---- decoding ------------------------------------------------------------------------------------
class _Source:
    """The chunks of a trace, from the cache or from the text (writing the cache as it goes)."""

    def __init__(
        self, trace: Path, *, skip_bad: bool, user_top: int, chunk_bytes: int | None, cache: bool | Path
    ) -> None:
        self.trace = trace
        chunk = chunk_bytes or CHUNK_BYTES
        self.reader: LackeyReader | trace_cache.CachedTrace = LackeyReader(
            trace, skip_bad=skip_bad, user_top=user_top, chunk_bytes=chunk
        )
        self.writer: trace_cache.CacheWriter | None = None
        self.cached = False
        if cache is False:
            return
        directory = cache if isinstance(cache, Path) else None
        key = trace_cache.trace_key(trace, user_top=user_top, chunk_bytes=chunk, max_events=MAX_EVENTS)
        got = trace_cache.load(trace, key, directory)
        # a parse that skipped bad lines is not an answer for a reader that must stop at the first
        if got is not None and (skip_bad or not got.final_stats.bad_lines):
            self.reader, self.cached = got, True
        else:
            self.writer = trace_cache.CacheWriter(key, directory)

    @property
    def stats(self) -> LackeyStats:
        return self.reader.stats

    def size(self) -> int:
        return self.reader.size()

    def __iter__(self) -> Generator[LackeyChunk, None, None]:
        done = False
        try:
            for chunk in self.reader:
                if self.writer is not None:
                    self.writer.add(chunk)
                yield chunk
            done = True
        finally:
            if self.writer is not None:
                if done:
                    self.writer.finish(self.reader.stats)
                else:  # stopped early (--limit) or failed: no entry
                    self.writer.abort()


# ---- the pass --------------------------------------------------------------------------------------
@dataclass
class _Part:
    """One group of configurations replayed over the whole trace (in this process or a child)."""

    results: list[TraceResult]
    stats: LackeyStats
    refs: int
    sites: list[SyscallSite]
    names: dict[str, int]
    read_seconds: float
    cached: bool
    user_top: int


def replay_trace(
    trace: str | Path,
    configs: Sequence[ConfigLike],
    *,
    path: str | None = None,
    skip_bad: bool = False,
    strace: StraceLog | None = None,
    max_events: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    hook_factory: Callable[[Kernel, Task], SyscallHook] = EntrySyscalls,
    chunk_bytes: int | None = None,
    seed: int = 0,
    kernel_side: str = "modelled",
    workers: int | None = None,
    cache: bool | Path = False,
) -> TraceReplay:
    """Decode `trace` once and replay it on every configuration of `configs` ((variant, pcid[,
    geometry]) or `ReplayConfig`), the configurations dealt round-robin into `workers` groups
    (default: the cores this process may use), each group replayed over the whole trace in a
    process of its own: this one and forked children (1: no child). `path`: "engine" (default
    when importable) or "reference" (slow: warns). `max_events`: replay only the first that many
    user events (a slice; `refs` then counts events, and the stats say `sliced`).
    `progress(bytes_read, bytes_total)` after each chunk this process decodes or replays.
    `kernel_side="recorded"`: the default hook's syscall bodies from the shipped recordings where
    one exists (kaiser.record.replay). `cache`: True to read (or write) the binary cache of the
    parse in `trace_cache.cache_dir()`, a Path for another directory, False (default) to parse the
    text (with groups: once, into a temporary cache the groups read)."""
    trace = Path(trace)
    if kernel_side == "recorded" and hook_factory is EntrySyscalls:
        hook_factory = functools.partial(EntrySyscalls, kernel_side="recorded")
    elif kernel_side not in ("recorded", "modelled"):
        raise ValueError(f"unknown kernel side {kernel_side!r}; use 'recorded' or 'modelled'")
    path = path or ("engine" if engine_available() else "reference")
    if path == "reference" and (max_events is None or max_events > 2_000_000):
        warnings.warn(
            "replaying on the reference path (the compiled engine is not available): about 10^5 references/s",
            stacklevel=2,
        )
    cfgs = [as_config(c) for c in configs]
    n_groups = max(1, min(workers if workers is not None else default_workers(), len(cfgs)))
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    run = functools.partial(
        _replay_part,
        trace,
        path=path,
        skip_bad=skip_bad,
        max_events=max_events,
        hook_factory=hook_factory,
        chunk_bytes=chunk_bytes,
        seed=seed,
    )
    children_cpu = 0.0
    if n_groups == 1:
        first = run(cfgs, cache=cache, progress=progress)
        parts, cached, decode_s = [first], first.cached, 0.0
    else:
        groups = [cfgs[g::n_groups] for g in range(n_groups)]
        with contextlib.ExitStack() as stack:
            where = cache if cache is not False else Path(stack.enter_context(tempfile.TemporaryDirectory()))
            t_dec = time.perf_counter()
            cached, shared = _decode_once(trace, where, skip_bad, chunk_bytes, max_events, progress)
            decode_s = time.perf_counter() - t_dec
            _load_compiled(path)  # before the fork, so that no child loads (or compiles) them again
            gc.freeze()  # the objects so far: no collection in parent or child touches (and copies) them
            stack.callback(gc.unfreeze)
            children = [forked.start(functools.partial(run, g, cache=where, shared=shared)) for g in groups[1:]]
            try:
                first = run(groups[0], cache=where, progress=progress, shared=shared)
                parts = [first]
                for child in children:
                    part, cpu = forked.finish(child)
                    parts.append(part)
                    children_cpu += cpu
            finally:
                for child in children:
                    forked.stop(child)
    results = [parts[i % n_groups].results[i // n_groups] for i in range(len(cfgs))]
    stats = first.stats.as_dict()
    stats["refs_replayed"] = first.refs
    stats["sliced"] = max_events is not None
    stats["user_top"] = min((r.user_top for r in parts), default=USER_TOP)
    out = TraceReplay(
        trace,
        results,
        stats,
        time.perf_counter() - t0,
        decode_s + first.read_seconds,
        syscall_names=first.names,
        workers=n_groups,
        cached=cached,
        cpu_seconds=time.process_time() - cpu0 + children_cpu,
    )
    if strace is not None:
        out.alignment = align_syscalls(first.sites, strace.calls)
        out.strace = strace.summary()
    return out


def _decode_once(
    trace: Path,
    where: bool | Path,
    skip_bad: bool,
    chunk_bytes: int | None,
    max_events: int | None,
    progress: Callable[[int, int], None] | None,
) -> tuple[bool, _Source | None]:
    """Make sure the groups find the parse in the cache at `where`: whether an earlier run's entry
    is there, and that entry opened (checked once, here: each group iterates its own copy of it
    after the fork); else decode the text once here, writing the entry, and open that. Not for a
    slice (`max_events`), which writes no entry: each group then decodes the slice it needs (None).
    The reader's `user_top` is 4-level paging's TASK_SIZE_MAX, which every configuration boots
    (`ConfigReplay`); a group whose kernels said otherwise would open the entry of its own, never
    read this one wrong."""
    source = _Source(trace, skip_bad=skip_bad, user_top=USER_TOP, chunk_bytes=chunk_bytes, cache=where)
    if source.cached:
        return True, source
    if max_events is not None:
        return False, None
    total = source.size()
    for _chunk in source:
        if progress:
            progress(source.stats.bytes, total)
    require_references(trace, source.stats)
    again = _Source(trace, skip_bad=skip_bad, user_top=USER_TOP, chunk_bytes=chunk_bytes, cache=where)
    return False, again if again.cached else None  # None: the entry could not be written


def _load_compiled(path: str) -> None:
    """Load numba's compiled replay and cache unpacking (from numba's cache) in this process."""
    trace_cache.unpack_events(np.zeros(0, np.uint64))
    if path != "engine":
        return
    from kaiser.x86.engine import Engine
    from kaiser.x86.events import EVENT_DTYPE
    from kaiser.x86.physmem import PhysicalMemory

    mem = PhysicalMemory(1 << 24)
    engine = Engine(mem, CpuState(cr3=mem.alloc(FrameKind.PAGE_TABLE, "warm-up PML4")))
    engine.step(np.zeros(0, EVENT_DTYPE))  # the compiled loop and the WRITE_PHYS scan


def _replay_part(
    trace: Path,
    configs: list[ReplayConfig],
    *,
    path: str,
    skip_bad: bool,
    max_events: int | None,
    hook_factory: Callable[[Kernel, Task], SyscallHook],
    chunk_bytes: int | None,
    seed: int,
    cache: bool | Path,
    progress: Callable[[int, int], None] | None = None,
    shared: _Source | None = None,
) -> _Part:
    """Boot `configs` and replay the whole trace on them, chunk by chunk, one after another;
    `shared`: the trace's cache entry, opened for `lackey.USER_TOP` (`_decode_once`)."""
    runs = [
        ConfigReplay(c.variant, c.pcid, path=path, hook_factory=hook_factory, seed=seed, geometry=c.geometry)
        for c in configs
    ]
    top = min((r.kernel.user_top for r in runs), default=USER_TOP)
    if shared is not None and top == USER_TOP:
        source = shared
    else:
        source = _Source(trace, skip_bad=skip_bad, user_top=top, chunk_bytes=chunk_bytes, cache=cache)
    total = source.size()
    sites: list[SyscallSite] = []
    names: dict[str, int] = {}
    refs = 0
    read_s = 0.0
    chunks = iter(source)
    try:
        while True:
            t_read = time.perf_counter()
            chunk = next(chunks, None)
            read_s += time.perf_counter() - t_read
            if chunk is None:
                break
            events, new_sites, new_pages = chunk.events, chunk.syscalls, chunk.new_pages
            if max_events is not None and refs + len(events) > max_events:
                events, new_sites = slice_chunk(events, new_sites, max_events - refs)
                new_pages = np.unique(events["a"] >> np.uint64(12)) if len(events) else new_pages[:0]
                refs += len(events)
            elif max_events is not None:
                refs += len(events)
            else:
                refs += chunk.refs
            for s in new_sites:
                names[s.name] = names.get(s.name, 0) + 1
            sites.extend(new_sites)
            for run in runs:
                try:
                    run.feed(events, new_sites, new_pages)
                except TraceError as exc:  # raised as "LINE: why" by the replay, which has no file name
                    raise TraceError(f"{trace}:{exc}") from None
            if progress:
                progress(source.stats.bytes, total)
            if max_events is not None and refs >= max_events:
                break
        if max_events is None or refs < max_events:
            require_references(trace, source.stats)
    finally:
        chunks.close()  # a pass stopped early writes no cache entry
    results = [r.result(refs) for r in runs]
    return _Part(results, source.stats, refs, sites, names, read_s, source.cached, top)


# ---- throughput ------------------------------------------------------------------------------------
def _best(
    repeats: int, run: Callable[[], TraceReplay], say: Callable[[str], None], what: str
) -> tuple[TraceReplay, float]:
    """The fastest (wall time) of `repeats` runs, and the CPU seconds it cost (this process's
    threads and its children: what the run cost, whatever share of the machine it was given)."""
    best: TraceReplay | None = None
    for k in range(repeats):
        say(f"{what}, pass {k + 1}/{repeats}")
        got = run()
        if best is None or got.seconds < best.seconds:
            best = got
    assert best is not None
    return best, best.cpu_seconds


def bench_replay_throughput(
    trace: str | Path,
    *,
    variant: str = "linux",
    pcid: bool = True,
    repeats: int = 2,
    skip_bad: bool = False,
    strace: StraceLog | None = None,
    stage: Callable[[str], None] | None = None,
    cache: bool | Path = True,
    workers: int | None = None,
    all_configs_pass: bool = True,
) -> dict[str, Any]:
    """References per second reading `trace` from the file, best of `repeats` each, in one process:
    parsing the text alone; loading the binary cache alone (when `cache`); one configuration end
    to end (boot, decode, map pages, compile the system calls, replay) from the text and from the
    cache; and (`all_configs_pass`) every variant x PCID configuration (`all_configs`) in one pass
    on `workers` processes against as many single-configuration passes in this process, paired
    round by round (`_bench_all`), with a check that every configuration's counters are the same
    both ways. The first, untimed, pass compiles (or
    loads numba's cache) and writes the binary cache. `stage(description)` before each pass."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    trace = Path(trace)
    say = stage or (lambda _: None)
    n_workers = max(1, workers if workers is not None else default_workers())
    reader_best = float("inf")
    stats = LackeyStats()
    for k in range(repeats):
        say(f"parsing, pass {k + 1}/{repeats}")
        r = LackeyReader(trace, skip_bad=skip_bad)
        t0 = time.perf_counter()
        for _chunk in r:
            pass
        reader_best = min(reader_best, time.perf_counter() - t0)
        require_references(trace, r.stats)
        stats = r.stats
    refs = stats.refs
    say("compiling the replay and writing the binary cache (first run only)")
    one = [(variant, pcid)]
    replay_trace(trace, one, skip_bad=skip_bad, max_events=100_000, workers=1)  # warm numba's caches
    warm = replay_trace(trace, one, skip_bad=skip_bad, cache=cache, workers=1)
    top = warm.stats["user_top"]
    load_best: float | None = None
    for k in range(repeats if cache is not False else 0):
        say(f"loading the binary cache, pass {k + 1}/{repeats}")
        t0 = time.perf_counter()
        source = _Source(trace, skip_bad=skip_bad, user_top=top, chunk_bytes=None, cache=cache)
        if not source.cached:  # the entry could not be written (read-only cache directory, disk full)
            load_best = None
            break
        for _chunk in source:
            pass
        load_best = min(load_best or float("inf"), time.perf_counter() - t0)
    text, text_cpu = _best(
        repeats,
        lambda: replay_trace(trace, one, skip_bad=skip_bad, strace=strace, workers=1),
        say,
        f"from the text, {variant}, PCID {'on' if pcid else 'off'}",
    )
    cached, cached_cpu = _best(
        repeats,
        lambda: replay_trace(trace, one, skip_bad=skip_bad, cache=cache, workers=n_workers),
        say,
        f"end to end, {variant}, PCID {'on' if pcid else 'off'}",
    )
    res = cached.results[0]
    rate = refs / cached.seconds
    out: dict[str, Any] = {
        "trace": str(trace),
        "bytes": trace.stat().st_size,
        "refs": refs,
        "bad_lines": stats.bad_lines,
        "events_replayed": res.events,
        "syscalls": res.syscalls,
        "variant": variant,
        "pcid": pcid,
        "path": res.path,
        "repeats": repeats,
        "workers": n_workers,
        "cache": {
            "enabled": cache is not False,
            "used": cached.cached,
            "dir": str(cache if isinstance(cache, Path) else trace_cache.cache_dir()) if cache is not False else None,
            "load_seconds": load_best,
            "load_refs_per_second": refs / load_best if load_best else None,
        },
        "parse_seconds": reader_best,
        "parse_refs_per_second": refs / reader_best,
        "parse_mb_per_second": trace.stat().st_size / reader_best / 1e6,
        "text_end_to_end_seconds": text.seconds,
        "text_end_to_end_refs_per_second": refs / text.seconds,
        "text_end_to_end_cpu_seconds": text_cpu,
        "end_to_end_seconds": cached.seconds,
        "end_to_end_refs_per_second": rate,
        "end_to_end_cpu_seconds": cached_cpu,
        "replay_seconds": res.seconds,
        "target_refs_per_second": REPLAY_TARGET_REFS_PER_SECOND,
        "target_met": rate >= REPLAY_TARGET_REFS_PER_SECOND,
        "alignment": text.alignment.as_dict() if text.alignment else None,
        "all_configs": None,
        "note": "end to end = boot + read + decode + map pages + compile syscalls + replay, one configuration",
    }
    if all_configs_pass:
        out["all_configs"] = _bench_all(trace, repeats, skip_bad, cache, n_workers, say)
    return out


def _bench_all(
    trace: Path, repeats: int, skip_bad: bool, cache: bool | Path, n_workers: int, say: Callable[[str], None]
) -> dict[str, Any]:
    """Every variant x PCID configuration: one pass on `n_workers` processes against one pass per
    configuration in this process, paired: each round runs both, one after the other, and the
    ratio is the median of the rounds' ratios (a machine shared with other jobs slows a round's
    two halves alike far more often than it slows one round against another). Seconds are each
    kind's median."""
    configs = all_configs()
    n = len(configs)
    one_pass: list[TraceReplay] = []
    separate: list[list[TraceReplay]] = []
    for k in range(repeats):
        say(f"{n} configurations in one pass on {n_workers} processes, round {k + 1}/{repeats}")
        one_pass.append(replay_trace(trace, configs, skip_bad=skip_bad, cache=cache, workers=n_workers))
        got = []
        for i, c in enumerate(configs):
            say(f"{n} separate passes, {i + 1}/{n}, round {k + 1}/{repeats}")
            got.append(replay_trace(trace, [c], skip_bad=skip_bad, cache=cache, workers=1))
        separate.append(got)
    sep_seconds = [sum(r.seconds for r in got) for got in separate]
    sep_cpu = [sum(r.cpu_seconds for r in got) for got in separate]
    ratios = [a.seconds / b for a, b in zip(one_pass, sep_seconds, strict=True)]
    equal = all(
        a.counters == b.results[0].counters and a.events == b.results[0].events
        for one, got in zip(one_pass, separate, strict=True)
        for a, b in zip(one.results, got, strict=True)
    )
    ratio = statistics.median(ratios)
    one_seconds = statistics.median(r.seconds for r in one_pass)
    separate_seconds = statistics.median(sep_seconds)
    refs = one_pass[0].stats["refs"]
    return {
        "configs": n,
        "workers": one_pass[0].workers,
        "rounds": repeats,
        "ratios": ratios,
        "one_pass_seconds": one_seconds,
        "one_pass_refs_per_second": refs * n / one_seconds,
        "one_pass_cpu_seconds": statistics.median(r.cpu_seconds for r in one_pass),
        "separate_seconds": separate_seconds,
        "separate_cpu_seconds": statistics.median(sep_cpu),
        "separate_refs_per_second": refs * n / separate_seconds,
        "ratio": ratio,
        "target_ratio": ONE_PASS_TARGET_RATIO,
        "target_met": ratio <= ONE_PASS_TARGET_RATIO,
        "counters_equal": equal,
    }
