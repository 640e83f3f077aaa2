"""Cold numba compile of the replay engine, measured: seconds per jitted function, and its types.

    PYTHONPATH=src python tools/numba_compile.py            # every scenario, from no cache
    PYTHONPATH=src python tools/numba_compile.py --warm     # then again from the cache just made
    PYTHONPATH=src python tools/numba_compile.py --pytest tests/x86/test_engine.py ...

Each run is a fresh child process with an empty numba cache (a new `NUMBA_CACHE_DIR`, so the
tree's own cache in src/kaiser/x86/__pycache__ is neither read nor touched): what a clean clone,
CI or a pytest-xdist worker pays on the first Engine build. The scenarios are the feature
combinations the suite uses (PCID on and off, data caches, nested paging, `step(accesses_only)`,
`stepper`, `rounds`, replays on threads as traces/multireplay.py runs them); each prints its
seconds and the functions it compiled, with their seconds not counting the functions they
compiled in turn (numba's "numba:compile" events). The end lists every signature of every
jitted function: more than one means a second specialization (literal vs int64 arguments, C vs
A layout, readonly arrays) compiled at full price. `--pytest`: the same, attributed to the test
files that triggered each compile.

A tool for developers, not part of the package; `kaiser bench engine` reports replay speed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

MODULES = ("kaiser.x86.engine_core", "kaiser.x86.engine_cache", "kaiser.x86.engine_rules")


class CompileLog:
    """Exclusive compile seconds per function, from numba's nested compile events."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list[Any]] = []

    def on_event(self, event: Any) -> None:
        data = event.data
        name = getattr(data.get("dispatcher"), "py_func", None)
        label = f"{name.__module__.rsplit('.', 1)[-1]}.{name.__name__}" if name else "?"
        now = time.thread_time()  # CPU seconds: a shared machine's load does not count
        if event.is_start:
            self._stack.append([label, now, 0.0])
            return
        label, start, inner = self._stack.pop()
        spent = now - start
        self.seconds[label] += spent - inner
        if self._stack:
            self._stack[-1][2] += spent

    def take(self) -> dict[str, float]:
        out, self.seconds = dict(self.seconds), defaultdict(float)
        return out


@contextmanager
def listening() -> Iterator[CompileLog]:
    from numba.core import event

    log = CompileLog()

    class Listener(event.Listener):
        def on_start(self, ev: Any) -> None:
            log.on_event(ev)

        def on_end(self, ev: Any) -> None:
            log.on_event(ev)

    listener = Listener()
    event.register("numba:compile", listener)
    try:
        yield log
    finally:
        event.unregister("numba:compile", listener)


def signatures() -> list[tuple[str, list[str]]]:
    import importlib

    out = []
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        for name, obj in vars(mod).items():
            sigs = getattr(obj, "signatures", None)
            if sigs and getattr(getattr(obj, "py_func", None), "__module__", None) == mod_name:
                short = mod_name.rsplit(".", 1)[-1]
                out.append((f"{short}.{name}", [", ".join(str(t) for t in s) for s in sigs]))
    return out


def print_signatures() -> None:
    print("signatures (more than one: compiled more than once)")
    for name, sigs in signatures():
        print(f"  {len(sigs)}  {name}")
        if len(sigs) > 1:
            for s in sigs:
                print(f"       ({s[:150]})")


def _world() -> tuple[Any, ...]:
    """A small world: user and kernel pages, and a stream with every event kind."""
    import numpy as np

    from kaiser.x86.bits import CR4, EFER, PTE
    from kaiser.x86.cpu import CpuFeatures, CpuState
    from kaiser.x86.events import EVENT_DTYPE, Ev
    from kaiser.x86.pagetable import PageTable
    from kaiser.x86.physmem import PhysicalMemory

    mem = PhysicalMemory(1 << 30)
    pt = PageTable(mem)
    pt.map(0x400000, 0x200000, 0x4000, PTE.US | PTE.RW)
    pt.map(0xFFFF888000000000, 0x800000, 0x200000, PTE.RW | PTE.NX | PTE.G)
    cr4 = CR4.PAE | CR4.PGE | CR4.SMEP | CR4.SMAP
    state = CpuState(cr3=pt.cr3(), cr4=cr4, cpl=3, efer=EFER.LME | EFER.LMA | EFER.NXE)
    features = CpuFeatures(maxphyaddr=mem.maxphyaddr, pcid=True, invpcid=True)
    rows = [(int(Ev.READ), 3, 0, 0x400000 + 64 * i, 0) for i in range(200)]
    rows += [(int(Ev.WRITE), 3, 0, 0x401000, 0), (int(Ev.FETCH), 0, 0, 0xFFFF888000000000, 0)]
    rows += [(int(Ev.READ), 3, 0, 0xFFFF888000000000, 0), (int(Ev.MOV_CR3), 0, 0, pt.cr3(), 0)]
    rows += [(int(Ev.INVLPG), 0, 0, 0x400000, 0), (int(Ev.INVPCID), 0, 2, 0, 0)]
    rows += [(int(Ev.MOV_CR4), 0, 0, int(cr4 & ~CR4.PGE), 0), (int(Ev.MOV_CR4), 0, 0, int(cr4), 0)]
    rows += [(int(Ev.WRITE_PHYS), 0, 0, 0x200000, 0x123007), (int(Ev.READ), 3, 0, 0x402000, 0)]
    events = np.array(rows, EVENT_DTYPE)
    pcid_state = CpuState(cr3=pt.cr3() | 5, cr4=cr4 | CR4.PCIDE, cpl=3, efer=state.efer)
    return mem, state, pcid_state, features, events


def _ignore(_: object) -> None:
    """A scenario runs for its compiles; what it returns does not matter."""


def scenarios() -> list[tuple[str, Callable[[], None]]]:
    import copy
    import threading

    import numpy as np

    from kaiser.x86.cache_geometry import get_hierarchy
    from kaiser.x86.engine import Engine
    from kaiser.x86.events import Ev
    from kaiser.x86.nested import HostTable

    mem, state, pcid_state, features, events = _world()
    accesses = events[events["kind"] <= int(Ev.FETCH)].copy()

    def engine(st: Any = state, **kw: Any) -> Engine:
        return Engine(copy.deepcopy(mem), st, features, **kw)

    def stepper() -> Callable[[Any], Any]:
        e = engine()
        e.prepare(events)  # storage for the frames WRITE_PHYS writes, as stepper requires
        return e.stepper()

    def threads() -> None:
        engines = [engine(), engine(pcid_state)]
        workers = [threading.Thread(target=e.step, args=(accesses,), kwargs={"sync": False}) for e in engines]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return [
        ("replay, 4-level, no PCID, caches off", lambda: _ignore(engine().replay(events))),
        ("replay, PCID on", lambda: _ignore(engine(pcid_state).replay(events))),
        ("replay, caches on", lambda: _ignore(engine(caches=get_hierarchy("skylake-client")).replay(events))),
        (
            "replay, nested (2 MiB host pages)",
            lambda: _ignore(engine(host=HostTable.build(mem.size, "2m")).replay(events)),
        ),
        ("step, accesses_only, sync=False", lambda: _ignore(engine().step(accesses, sync=False, accesses_only=True))),
        ("stepper", lambda: _ignore(stepper()(events))),
        ("rounds", lambda: _ignore(engine().rounds(events[:8], accesses[:2], np.array([0x400000], np.uint64), 2))),
        ("step on two threads (multireplay)", threads),
    ]


def run_scenarios() -> None:
    total = 0.0
    with listening() as log:
        for name, fn in scenarios():
            start, cpu = time.perf_counter(), time.thread_time()
            fn()
            spent, spent_cpu = time.perf_counter() - start, time.thread_time() - cpu
            total += spent_cpu
            print(f"{spent_cpu:7.2f} s  {name} (CPU; wall {spent:.2f} s)")
            for fname, secs in sorted(log.take().items(), key=lambda kv: -kv[1]):
                if secs >= 0.05:
                    print(f"           {secs:6.2f} s  {fname}")
    print(f"{total:7.2f} s  all scenarios (CPU)")
    print_signatures()


class PytestPlugin:
    """Compile seconds per test file (`--pytest`): the file whose test was running."""

    def __init__(self) -> None:
        self.per_file: dict[str, float] = defaultdict(float)
        self.per_fn: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._ctx = listening()
        self.log = self._ctx.__enter__()

    def _charge(self, where: str) -> None:
        for fname, secs in self.log.take().items():
            self.per_file[where] += secs
            self.per_fn[where][fname] += secs

    def pytest_runtest_protocol(self, item: Any, nextitem: Any) -> None:
        self._charge("(collection or before)")
        self._current = item.nodeid.split("::")[0]

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        self._charge(nodeid.split("::")[0])

    def pytest_sessionfinish(self, session: Any, exitstatus: int) -> None:
        self._charge("(session end)")
        print("\ncompile seconds per test file")
        for where, secs in sorted(self.per_file.items(), key=lambda kv: -kv[1]):
            if secs >= 0.05:
                tops = sorted(self.per_fn[where].items(), key=lambda kv: -kv[1])[:3]
                print(f"{secs:7.2f} s  {where}  ({', '.join(f'{n} {s:.1f}' for n, s in tops)})")
        print_signatures()


def child(argv: list[str]) -> int:
    if argv and argv[0] == "--pytest":
        import pytest

        return int(pytest.main(["-p", "no:xdist", "-p", "no:cacheprovider", *argv[1:]], plugins=[PytestPlugin()]))
    run_scenarios()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--warm", action="store_true", help="run again on the cache the cold run made")
    parser.add_argument("--cache-dir", help="numba cache directory to use (default: a new empty one)")
    parser.add_argument("--pytest", nargs=argparse.REMAINDER, help="pytest arguments: compiles per test file")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args.child)
    with tempfile.TemporaryDirectory(prefix="numba-cold-") as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=args.cache_dir or tmp)
        extra = ["--pytest", *args.pytest] if args.pytest is not None else []
        rc = 0
        for label in ("cold", "warm") if args.warm else ("cold",):
            print(f"== {label} (NUMBA_CACHE_DIR={env['NUMBA_CACHE_DIR']})", flush=True)
            start = time.perf_counter()
            rc = subprocess.call([sys.executable, __file__, "--child", *extra], env=env)
            print(f"== {label}: {time.perf_counter() - start:.1f} s wall, exit {rc}", flush=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
