"""One pass over a trace for many configurations, in forked processes: each configuration's
counters are those of a pass of its own (differential: the same replay with one configuration in
this process)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaiser.linux.pgtable_types import PAGE_KERNEL
from kaiser.linux.variants import VARIANTS
from kaiser.traces.interleave import EntrySyscalls
from kaiser.traces.lackey import SyscallSite, format_lackey
from kaiser.traces.multireplay import ReplayConfig, all_configs, as_config, replay_trace
from kaiser.x86.bits import PTE
from kaiser.x86.events import EVENT_DTYPE, Ev
from kaiser.x86.physmem import PAGE_SIZE, FrameKind
from kaiser.x86.tlb_geometry import DEFAULT_GEOMETRY, CacheGeometry

# A smaller dTLB and STLB than Skylake's: a geometry the replay must honour per configuration.
SMALL = dataclasses.replace(
    DEFAULT_GEOMETRY,
    name="small",
    dtlb=(CacheGeometry("dTLB 4K", 8, 2, (12,)),),
    stlb=(CacheGeometry("STLB 4K", 32, 4, (12,)),),
)
SYSCALL = "SYSCALL[7,1](39) sys_getpid ()[sync] --> Success(0x7)\n"


def assert_same_as_separate(trace: Path, configs: list[ReplayConfig], **kw: object) -> None:
    together = replay_trace(trace, configs, workers=2, **kw)  # type: ignore[arg-type]
    assert together.workers == 2 and len(together.results) == len(configs)
    for c, got in zip(configs, together.results, strict=True):
        alone = replay_trace(trace, [c], workers=1, **kw).results[0]  # type: ignore[arg-type]
        assert (got.variant, got.pcid) == (c.variant, c.pcid)
        assert got.counters == alone.counters, c
        assert (got.events, got.user_events, got.syscalls, got.pages) == (
            alone.events,
            alone.user_events,
            alone.syscalls,
            alone.pages,
        )
        assert got.ops.as_dict() == alone.ops.as_dict() and got.cycles == alone.cycles


def random_trace(draw: st.DrawFn, directory: Path) -> Path:
    """Lackey text of user references over a few pages of code, data and stack, getpid calls
    between them."""
    n = draw(st.integers(50, 400))
    bases = (0x400000, 0x601000, 0x7FFF_F000_0000)
    lines = []
    for _ in range(n):
        kind = draw(st.sampled_from([Ev.READ, Ev.WRITE, Ev.FETCH]))
        page = draw(st.integers(0, 40))
        va = bases[kind == Ev.FETCH and 0 or draw(st.integers(1, 2))] + page * 4096 + draw(st.integers(0, 4095))
        ev = np.zeros(1, EVENT_DTYPE)
        ev["kind"], ev["a"] = kind, va
        lines.append(format_lackey(ev, np.array([draw(st.sampled_from([1, 4, 8]))])))
        if draw(st.integers(0, 30)) == 0:
            lines.append(SYSCALL)
    path = directory / f"t{draw(st.integers(0, 1 << 30))}.lackey"
    path.write_text("".join(lines))
    return path


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_one_pass_equals_separate_passes_on_random_traces(tmp_path: Path, data: st.DataObject) -> None:
    trace = random_trace(data.draw, tmp_path)
    pool = [ReplayConfig(v, p, g) for v in VARIANTS for p in (True, False) for g in (DEFAULT_GEOMETRY, SMALL)]
    configs = data.draw(st.lists(st.sampled_from(pool), min_size=2, max_size=4, unique=True))
    assert_same_as_separate(trace, configs, chunk_bytes=data.draw(st.sampled_from([64, 256, 1 << 20])))


def test_one_pass_equals_separate_passes_on_the_real_trace(real_trace: tuple[Path, Path]) -> None:
    """Every variant x PCID configuration, one pass on 2 threads from the binary cache against
    separate passes: counters, events, operations and cycles identical."""
    lackey, _ = real_trace
    replay_trace(lackey, [("nopti", True)], cache=True)  # writes the cache entry
    configs = all_configs()
    together = replay_trace(lackey, configs, workers=2, cache=True)
    assert together.cached
    for c, got in zip(configs, together.results, strict=True):
        alone = replay_trace(lackey, [c], workers=1).results[0]  # from the text
        assert got.counters == alone.counters and got.events == alone.events, c
        assert got.total_cycles == alone.total_cycles and got.syscalls == alone.syscalls == 77


def test_geometry_is_per_configuration(real_trace: tuple[Path, Path]) -> None:
    lackey, _ = real_trace
    got = replay_trace(lackey, [("linux", True), ("linux", True, SMALL)], workers=2, max_events=200_000)
    big, small = (r.counters for r in got.results)
    assert small.dtlb_misses > big.dtlb_misses and small.walks > big.walks


def test_configs_from_tuples() -> None:
    assert as_config(("linux", False)) == ReplayConfig("linux", False, DEFAULT_GEOMETRY)
    assert as_config(("linux", True, SMALL)).geometry is SMALL
    assert len(all_configs()) == 2 * len(VARIANTS) and all_configs()[0] == ReplayConfig(next(iter(VARIANTS)), True)


def test_an_error_in_one_configuration_names_the_file(tmp_path: Path) -> None:
    """A read() whose buffer reaches above user space fails in the replay of every configuration;
    in two processes the error is the same one line naming the file and line."""
    from kaiser.traces.lackey import TraceError

    trace = tmp_path / "bad.lackey"
    trace.write_text(
        "I  00400000,2\nSYSCALL[7,1](0) sys_read ( 3, 0x7ffffffff000, 8192 ) --> Success(0x2000)\nI  00400002,2\n"
    )
    with pytest.raises(TraceError, match=rf"^{trace}:2: system call read's buffer"):
        replay_trace(trace, [("nopti", True), ("linux", True)], workers=2)


class FailsOnLinux(EntrySyscalls):
    """A hook whose system calls fail on one variant only: the error comes from that group."""

    def syscall_events(self, site: SyscallSite) -> np.ndarray:
        from kaiser.traces.lackey import TraceError

        if self.kernel.variant.name == "linux":
            raise TraceError(f"{site.line}: no {site.name} on linux")
        return super().syscall_events(site)


def test_an_error_in_a_forked_group_is_raised_here(real_trace: tuple[Path, Path]) -> None:
    """configs[1] is the second group's, replayed in a child: its error, with the file in front."""
    from kaiser.traces.lackey import TraceError

    lackey, _ = real_trace
    configs = [("nopti", True), ("linux", True), ("nopti", False)]
    with pytest.raises(TraceError, match=rf"^{lackey}:\d+: no \w+ on linux$"):
        replay_trace(lackey, configs, workers=2, hook_factory=FailsOnLinux, max_events=100_000)
    got = replay_trace(lackey, configs[::2], workers=2, hook_factory=FailsOnLinux, max_events=100_000)
    assert got.workers == 2 and got.cpu_seconds > 0 and [r.pcid for r in got.results] == [True, False]


def test_replay_command_uses_the_cache_and_the_workers(real_trace: tuple[Path, Path]) -> None:
    import json

    from typer.testing import CliRunner

    from kaiser.cli.app import app

    lackey, _ = real_trace
    args = ["replay", str(lackey), "-v", "linux", "--workers", "2", "--json"]
    runs = [json.loads(CliRunner().invoke(app, args).stdout) for _ in range(2)]
    nocache = json.loads(CliRunner().invoke(app, [*args, "--no-cache"]).stdout)
    assert [r["from_cache"] for r in (*runs, nocache)] == [False, True, False]
    assert {r["workers"] for r in (*runs, nocache)} == {2}
    untimed = [[{k: v for k, v in r.items() if k != "replay_seconds"} for r in run["results"]] for run in runs]
    assert (
        untimed[0] == untimed[1] == [{k: v for k, v in r.items() if k != "replay_seconds"} for r in nocache["results"]]
    )
    res = CliRunner().invoke(app, ["replay", str(lackey), "--workers", "0"])
    assert res.exit_code == 2 and res.output.strip().count("\n") == 0 and "--workers" in res.output
    res = CliRunner().invoke(app, ["replay", str(lackey), "-v", "linux", "--pcid", "--workers", "2"])
    assert res.exit_code == 0 and "2 processes, binary cache" in res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80


class MapsWhileCompiling(EntrySyscalls):
    """A hook that, like the recorded side's vmalloc pages, maps a fresh kernel page while it
    compiles a call, and reads it in the call's body."""

    def syscall_events(self, site: SyscallSite) -> np.ndarray:
        k = self.kernel
        va = k.layout.vmalloc_base + (5 << 30) + site.line * PAGE_SIZE
        k.init.kernel_pt.map(va, k.mem.alloc(FrameKind.DATA, "test page"), PAGE_SIZE, int(PAGE_KERNEL & ~PTE.G))
        out = super().syscall_events(site)
        # in the body: after the switch to the kernel CR3 (isolating variants), else the first write
        switch = np.flatnonzero(out["kind"] == Ev.MOV_CR3)
        first = np.flatnonzero((out["cpl"] == 0) & (out["kind"] == Ev.WRITE))
        at = int(switch[0] if len(switch) else first[0]) + 1
        ev = np.zeros(1, EVENT_DTYPE)
        ev["kind"], ev["a"] = Ev.READ, va
        return np.concatenate([out[:at], ev, out[at:]])


def test_kernel_pages_mapped_while_compiling_are_seen_by_the_engine(real_trace: tuple[Path, Path]) -> None:
    """The engine's copy of memory is taken after the chunk's calls are compiled: a page a call's
    compilation maps is there for the call, as on the reference path (no fault, same counters)."""
    lackey, _ = real_trace
    configs = [("nopti", True), ("linux", True), ("linux-4.15", False)]
    kw = {"max_events": 80_000, "hook_factory": MapsWhileCompiling, "chunk_bytes": 1 << 18}
    ref = replay_trace(lackey, configs, path="reference", workers=1, **kw)  # type: ignore[arg-type]
    eng = replay_trace(lackey, configs, path="engine", workers=2, **kw)  # type: ignore[arg-type]
    for a, b in zip(ref.results, eng.results, strict=True):
        assert a.syscalls > 10 and a.counters.faults == 0
        assert a.counters == b.counters and a.events == b.events
