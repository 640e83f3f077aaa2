"""The vulnerable core: what a faulting user load forwards, and what it must not."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaiser.attacks.cache import Hit
from kaiser.attacks.core import Core, MemResult, sanitize_error_code, transient_source
from kaiser.x86.bits import PFEC, PTE
from kaiser.x86.cpu import CpuState
from kaiser.x86.mmu import Mmu
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import PhysicalMemory
from kaiser.x86.walker import Fault

KVA = 0xFFFF800000001000  # a supervisor page
NP_VA = 0xFFFF800000400000  # nothing mapped
RSVD_VA = 0xFFFF800000002000  # a present page whose leaf has a reserved address bit
UVA = 0x400000  # a user page
SECRET_PA = 0x5000
USER_PA = 0x9000
USER_PAGES = [0x10000000 + n * 0x1000 for n in range(80)]  # more than the 64-entry L1 dTLB


Machine = tuple[PhysicalMemory, PageTable, CpuState]


@pytest.fixture
def machine() -> Machine:
    mem = PhysicalMemory(64 << 20)
    pt = PageTable(mem)
    pt.map(KVA, SECRET_PA, 0x1000, int(PTE.RW | PTE.NX))
    pt.map(RSVD_VA, 0x6000, 0x1000, int(PTE.RW | PTE.NX))
    slot = pt.entry_slot(RSVD_VA, 3)
    assert slot is not None
    mem.write_u64(slot, mem.read_u64(slot) | 1 << 50)  # bits 51:46 are reserved with MAXPHYADDR 46
    pt.map(UVA, USER_PA, 0x1000, int(PTE.US | PTE.RW | PTE.NX))
    mem.write_bytes(SECRET_PA + 0x10, b"\x42")
    mem.write_bytes(0x6000 + 0x10, b"\x43")
    mem.write_bytes(USER_PA + 0x10, b"\x07")
    return mem, pt, CpuState(cr3=pt.cr3(), cpl=3)


def test_present_supervisor_page_forwards_its_value_with_the_fault_attached(machine: Machine) -> None:
    mem, _, state = machine
    core = Core(mem, state)
    core.cache.access(SECRET_PA)  # the kernel used it recently: cached, so the race is won
    result = core.load(KVA + 0x10)
    assert isinstance(result, MemResult)
    assert result.value == 0x42
    assert isinstance(result.fault, Fault) and result.fault.vector == 14
    assert result.fault.error_code == PFEC.P | PFEC.US  # architecturally a protection fault
    assert result.cycles == 4


def test_fixed_core_forwards_nothing(machine: Machine) -> None:
    mem, _, state = machine
    core = Core(mem, state, meltdown_vulnerable=False)
    core.cache.access(SECRET_PA)
    result = core.load(KVA + 0x10)
    assert result.value is None and result.fault is not None


def test_non_present_and_reserved_bit_faults_forward_nothing(machine: Machine) -> None:
    mem, _, state = machine
    core = Core(mem, state)
    absent = core.load(NP_VA)
    assert absent.value is None and absent.fault is not None and not absent.fault.error_code & PFEC.P
    reserved = core.load(RSVD_VA + 0x10)
    assert reserved.value is None and reserved.fault is not None
    assert reserved.fault.error_code & PFEC.RSVD
    assert transient_source(reserved.fault) is None


def test_a_user_page_is_an_ordinary_architectural_load(machine: Machine) -> None:
    mem, _, state = machine
    result = Core(mem, state).load(UVA + 0x10)
    assert result == MemResult(0x07, None, 200)


def test_a_cold_secret_loses_the_race_forwards_zero_and_is_cached_afterwards(machine: Machine) -> None:
    mem, _, state = machine
    firsts = []
    for seed in range(20):
        core = Core(mem, state, seed=seed)
        firsts.append(core.load(KVA + 0x10).value)
        assert core.cache.where(SECRET_PA) is not Hit.DRAM and core.load(KVA + 0x10).value == 0x42
    assert 0 in firsts  # Meltdown's bias towards zero when the data comes from DRAM


def test_transient_walks_leave_every_table_bit_alone(machine: Machine) -> None:
    mem, pt, state = machine
    before = {table: mem.read_frame(table).copy() for table, _ in pt.tables()}
    core = Core(mem, state)
    for va in (KVA + 0x10, NP_VA, RSVD_VA):
        core.load(va)
    after = {table: mem.read_frame(table) for table, _ in pt.tables()}
    assert before.keys() == after.keys()
    assert all((before[t] == after[t]).all() for t in before)


def test_linux_reports_kernel_address_faults_as_protection_faults() -> None:
    top = 0x7FFFFFFFF000
    assert sanitize_error_code(0xFFFF888000000000, int(PFEC.US), top) == PFEC.US | PFEC.P
    assert sanitize_error_code(0x1000, int(PFEC.US), top) == PFEC.US


def test_core_refuses_to_run_at_cpl0() -> None:
    mem = PhysicalMemory(64 << 20)
    with pytest.raises(ValueError, match="CPL must be 3"):
        Core(mem, CpuState(cr3=PageTable(mem).cr3()))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from([UVA + 0x10, KVA + 0x10, NP_VA, RSVD_VA + 0x10] + USER_PAGES), max_size=40))
def test_the_cores_translations_are_the_mmus(machine: Machine, vas: list[int]) -> None:
    """Every user load of the core is an `Mmu.access`: the same address or fault, and the same
    TLB counters, as a plain Mmu given the same accesses (more pages than the L1 dTLB holds)."""
    mem, pt, state = machine
    for n, va in enumerate(USER_PAGES):
        if pt.lookup(va) is None:
            pt.map(va, 0x100000 + n * 0x1000, 0x1000, int(PTE.US | PTE.NX))
    core, ref = Core(mem, state), Mmu(mem, state)
    for va in vas:
        access = ref.access(va)
        got = core.user_pa(va)
        assert got == (access.fault if access.fault is not None else access.pa)
        assert core.counters == ref.counters
