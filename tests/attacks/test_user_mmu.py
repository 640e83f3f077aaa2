"""The Meltdown core's MMU on the compiled engine equals the reference Mmu's: the same loads give
the same addresses or faults, the same TLB counters and the same table bits, and a whole attack
the same readings, per-probe timings and counters (kaiser.attacks.user_mmu)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaiser.attacks import core as core_module
from kaiser.attacks.core import Core, UserProcess, run_meltdown
from kaiser.x86.bits import PTE
from kaiser.x86.cpu import CpuState
from kaiser.x86.mmu import Mmu
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import PhysicalMemory

KVA = 0xFFFF800000001000  # a supervisor page
NP_VA = 0xFFFF800000400000  # nothing mapped
UVA = 0x400000  # a user page
BIG_VA = 0x40000000  # a user 2 MiB page
USER_PAGES = [0x10000000 + n * 0x1000 for n in range(80)]  # more than the 64-entry L1 dTLB
LATE_PAGES = [0x20000000 + n * 0x1000 for n in range(4)]  # mapped halfway through


def _machine() -> tuple[PhysicalMemory, PageTable, CpuState]:
    mem = PhysicalMemory(64 << 20)
    pt = PageTable(mem)
    pt.map(KVA, 0x5000, 0x1000, int(PTE.RW | PTE.NX))
    pt.map(UVA, 0x9000, 0x1000, int(PTE.US | PTE.RW | PTE.NX))
    pt.map(BIG_VA, 0x200000, 0x200000, int(PTE.US | PTE.NX))
    for n, va in enumerate(USER_PAGES):
        pt.map(va, 0x1000000 + n * 0x1000, 0x1000, int(PTE.US | PTE.NX))
    return mem, pt, CpuState(cr3=pt.cr3(), cpl=3)


ADDRESSES = [UVA + 0x10, KVA + 0x10, NP_VA, BIG_VA + 0x1234, BIG_VA + 0x1FF000, *USER_PAGES, *LATE_PAGES]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(ADDRESSES), max_size=60), st.integers(0, 60))
def test_engine_and_reference_translate_alike(vas: list[int], edit_at: int) -> None:
    """Loads (known pages queued on the engine), a table edit between them (the late pages
    mapped), then the counters and every table frame: both paths and a plain Mmu agree."""
    machines = [_machine() for _ in range(3)]
    engine = Core(machines[0][0], machines[0][2], path="engine")
    reference = Core(machines[1][0], machines[1][2], path="reference")
    plain = Mmu(machines[2][0], machines[2][2])
    for n, va in enumerate(vas):
        if n == edit_at:
            for core, (_, pt, _) in ((engine, machines[0]), (reference, machines[1])):
                with core.translations.edit_tables():
                    for k, late in enumerate(LATE_PAGES):
                        pt.map(late, 0x2000000 + k * 0x1000, 0x1000, int(PTE.US | PTE.NX))
            for k, late in enumerate(LATE_PAGES):
                machines[2][1].map(late, 0x2000000 + k * 0x1000, 0x1000, int(PTE.US | PTE.NX))
        access = plain.access(va)
        want = access.fault if access.fault is not None else access.pa
        assert engine.user_pa(va) == want
        assert reference.user_pa(va) == want
    assert engine.counters == reference.counters == plain.counters
    engine.sync()
    frames = [{t: m.read_frame(t).tobytes() for t, _ in pt.tables()} for m, pt, _ in machines]
    assert frames[0] == frames[1] == frames[2]  # the A bits the walks set


@pytest.mark.parametrize(("variant", "seed"), [("nopti", 0), ("nopti", 3), ("linux", 1), ("linux-4.15", 2)])
def test_an_attack_runs_alike_on_both_paths(monkeypatch: pytest.MonkeyPatch, variant: str, seed: int) -> None:
    """The whole attack: the same bytes and rounds, every probe's timing, the TLB counters."""
    timed = UserProcess.timed_load
    runs = []
    for path in ("engine", "reference"):
        timings: list[int] = []

        def record(self: UserProcess, va: int, timings: list[int] = timings) -> int:
            timings.append(timed(self, va))
            return timings[-1]

        monkeypatch.setattr(core_module.UserProcess, "timed_load", record)
        result = run_meltdown(variant, length=2, seed=seed, path=path)
        runs.append((result.recovered, result.rounds, result.as_dict()["reachable"], timings, result.counters))
    assert runs[0] == runs[1]
    assert runs[0][4] is not None and runs[0][4].walks_d > 0
