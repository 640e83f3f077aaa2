"""The referee: our walker against Unicorn (QEMU TCG) on random page tables, and proof it can fail."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from kaiser.referee import UnicornMachine, generate_case, run_case, run_verify
from kaiser.referee.cases import simple_case
from kaiser.referee.verify import QEMU_1G_ACCESSED
from kaiser.x86.bits import CR0, CR4, EFER, PFEC, PTE
from kaiser.x86.cpu import CpuState
from kaiser.x86.physmem import PhysicalMemory
from kaiser.x86.rights import Op
from kaiser.x86.walker import Fault, Translation, translate

BASE = CpuState(cr3=0, cr0=int(CR0.PE | CR0.PG | CR0.WP), cr4=int(CR4.PAE), efer=int(EFER.LME | EFER.LMA | EFER.NXE))
VA = 0x0000_7F12_3456_7450  # PML4 slot 254: not the harness's slot 0
SUPERVISOR_PAGE = int(PTE.P | PTE.RW)  # U/S = 0


@pytest.fixture(scope="module")
def machine() -> UnicornMachine:
    return UnicornMachine()


@pytest.fixture(scope="module")
def seeded_report() -> Any:
    return run_verify(3000, seed=2024)


# ---- agreement ---------------------------------------------------------------------------------------


def test_seeded_run_has_no_disagreement(seeded_report: Any) -> None:
    report = seeded_report
    assert report.disagreements == 0, report.first_disagreement
    assert report.agreements + report.known_qemu_deviations == report.cases == 3000


def test_seeded_run_covers_every_rule(seeded_report: Any) -> None:
    """A referee that only ever sees easy cases proves nothing: every rule must be exercised."""
    labels = set(seeded_report.outcomes)
    for size in ("4K", "2M", "1G"):
        for op in ("read", "write", "fetch"):
            assert f"ok {op} {size}" in labels
    for level in ("PML5E", "PML4E", "PDPTE", "PDE", "PTE"):
        assert f"#PF {level} not present" in labels
        assert f"#PF reserved bit in {level}" in labels
    for rule in (
        "PKRU.AD",
        "PKRU.WD",
        "user access to a supervisor-mode address",
        "supervisor data access to a user-mode address with SMAP",
        "supervisor fetch from a user-mode address with SMEP",
        "supervisor write to a read-only address with CR0.WP=1",
        "user write to a read-only address",
        "user fetch from an execute-disabled address",
    ):
        assert f"#PF {rule}" in labels
    assert "#GP non-canonical" in labels
    assert seeded_report.error_codes_compared > 1500
    assert seeded_report.pk_probes > 20
    assert seeded_report.known_qemu_deviations > 0  # the 1 GiB A-bit pattern does occur and is counted


def test_deterministic_given_seed() -> None:
    a, b = run_verify(150, seed=7).to_json(), run_verify(150, seed=7).to_json()
    for report in (a, b):
        report.pop("seconds")
        report.pop("cases_per_second")
    assert a == b
    c = run_verify(150, seed=8).to_json()
    assert c["outcomes"] != a["outcomes"]


@pytest.mark.slow
def test_100k_cases_have_no_disagreement() -> None:
    report = run_verify(100_000, seed=1)
    assert report.disagreements == 0, report.first_disagreement
    assert report.agreements > 90_000


# ---- Unicorn really faults ---------------------------------------------------------------------------


def test_user_read_of_supervisor_page_faults_in_unicorn(machine: UnicornMachine) -> None:
    case = simple_case(VA, Op.READ, BASE.replace(cpl=3), SUPERVISOR_PAGE)
    seen = machine.run(case)
    assert not seen.completed
    assert seen.vector == 14
    assert seen.cr2 == VA
    result = run_case(case, machine)
    assert result.agrees, result.detail()
    assert isinstance(result.ours, Fault) and result.ours.error_code == PFEC.P | PFEC.US
    assert result.recomputed_error == PFEC.P | PFEC.US


def test_kernel_read_of_supervisor_page_completes_in_unicorn(machine: UnicornMachine) -> None:
    case = simple_case(VA, Op.READ, BASE, SUPERVISOR_PAGE)
    seen = machine.run(case)
    assert seen.completed and seen.vector == 3
    expected = int.from_bytes(case.frames[0x2000000][0x450:0x458], "little")
    assert seen.rdi == expected
    pte = case.walk_slots[-1]
    assert int.from_bytes(seen.frames[pte & ~0xFFF][pte & 0xFFF :][:8], "little") & PTE.A  # A set by QEMU


def test_user_fetch_runs_the_target(machine: UnicornMachine) -> None:
    case = simple_case(VA, Op.FETCH, BASE.replace(cpl=3), int(PTE.P | PTE.US), marker=0xABCD1234)
    seen = machine.run(case)
    assert seen.completed and seen.rax & 0xFFFFFFFF == 0xABCD1234
    assert run_case(case, machine).agrees


def test_pkru_reaches_unicorn(machine: UnicornMachine) -> None:
    """PKRU.AD1 blocks a user read of a key-1 page only with CR4.PKE=1 (SDM Vol. 3A §4.6.2)."""
    leaf = int(PTE.P | PTE.RW | PTE.US) | (1 << 59)
    blocked = BASE.replace(cpl=3, cr4=int(CR4.PAE | CR4.PKE), pkru=0b0100)
    assert not machine.run(simple_case(VA, Op.READ, blocked, leaf)).completed
    assert machine.run(simple_case(VA, Op.READ, blocked.replace(cr4=int(CR4.PAE)), leaf)).completed
    result = run_case(simple_case(VA, Op.READ, blocked, leaf), machine)
    assert result.agrees and result.pk_observed is True
    assert result.recomputed_error == PFEC.P | PFEC.US | PFEC.PK


# ---- the harness can fail ----------------------------------------------------------------------------


def _no_accessed_dirty(mem: PhysicalMemory, state: CpuState, va: int, op: Op, **kw: Any) -> Translation | Fault:
    return translate(mem, state, va, op, set_ad=False, **kw)


def _ignores_smap(mem: PhysicalMemory, state: CpuState, va: int, op: Op, **kw: Any) -> Translation | Fault:
    return translate(mem, state.replace(cr4=state.cr4 & ~CR4.SMAP), va, op, **kw)


def _drops_pk_bit(mem: PhysicalMemory, state: CpuState, va: int, op: Op, **kw: Any) -> Translation | Fault:
    result = translate(mem, state, va, op, **kw)
    if isinstance(result, Fault):
        return dataclasses.replace(result, error_code=result.error_code & ~PFEC.PK)
    return result


def _rsvd_as_not_present(mem: PhysicalMemory, state: CpuState, va: int, op: Op, **kw: Any) -> Translation | Fault:
    result = translate(mem, state, va, op, **kw)
    if isinstance(result, Fault) and result.error_code & PFEC.RSVD:
        return dataclasses.replace(result, error_code=result.error_code & ~(PFEC.RSVD | PFEC.P))
    return result


def _wrong_cr2(mem: PhysicalMemory, state: CpuState, va: int, op: Op, **kw: Any) -> Translation | Fault:
    result = translate(mem, state, va, op, **kw)
    if isinstance(result, Fault) and result.cr2 is not None:
        return dataclasses.replace(result, cr2=result.cr2 ^ 0x1000)
    return result


def _pa_off_by_eight(mem: PhysicalMemory, state: CpuState, va: int, op: Op, **kw: Any) -> Translation | Fault:
    result = translate(mem, state, va, op, **kw)
    if isinstance(result, Translation):
        return dataclasses.replace(result, pa=result.pa + 8)
    return result


def _qemu_like_1g(mem: PhysicalMemory, state: CpuState, va: int, op: Op, **kw: Any) -> Translation | Fault:
    """Our walker plus QEMU's quirk: A set in a present 1 GiB PDPTE leaf before its checks."""
    result = translate(mem, state, va, op, **kw)
    high = ((1 << 52) - 1) & ~((1 << 40) - 1) | (0 if state.nxe else int(PTE.NX))
    if (
        isinstance(result, Fault)
        and result.entry is not None
        and result.entry.level.shift == 30
        and result.entry.value & PTE.P
        and result.entry.value & PTE.PS
        and not result.entry.value & high
    ):
        mem.write_u64(result.entry.address, result.entry.value | PTE.A)
    return result


@pytest.mark.parametrize(
    ("walker", "kind"),
    [
        (_no_accessed_dirty, "walk-entry-accessed-dirty"),
        (_ignores_smap, "unicorn-faults-walker-allows"),
        (_drops_pk_bit, "error-code"),
        (_rsvd_as_not_present, "error-code"),
        (_wrong_cr2, "cr2"),
        (_pa_off_by_eight, "value-read"),
    ],
)
def test_broken_walker_is_caught(walker: Any, kind: str) -> None:
    report = run_verify(600, seed=11, walker=walker)
    assert report.disagreements > 0
    assert report.disagreements_by_kind[kind] > 0
    assert report.first_disagreement is not None and report.first_disagreement["kinds"]


def test_known_deviation_is_exactly_qemus_1g_quirk() -> None:
    """Teach our walker QEMU's quirk and every deviation turns into agreement: the classification
    matches nothing else."""
    plain = run_verify(600, seed=11)
    assert plain.deviations_by_kind[QEMU_1G_ACCESSED] == plain.known_qemu_deviations > 0
    quirky = run_verify(600, seed=11, walker=_qemu_like_1g)
    assert quirky.disagreements == 0 and quirky.known_qemu_deviations == 0
    assert quirky.agreements == 600


class _FlippingMachine(UnicornMachine):
    """Unicorn with one bit of its memory flipped after each run: the comparison must notice."""

    def run(self, case: Any, state: Any = None, frames: Any = None) -> Any:
        seen = super().run(case, state, frames)
        slot = case.walk_slots[0]
        page = bytearray(seen.frames[slot & ~0xFFF])
        page[slot & 0xFFF] ^= int(PTE.D)
        return dataclasses.replace(seen, frames={**seen.frames, slot & ~0xFFF: bytes(page)})


def test_corrupted_unicorn_side_is_caught() -> None:
    machine = _FlippingMachine()
    rng = random.Random(3)
    results = [run_case(generate_case(rng, i), machine) for i in range(50)]
    assert all("walk-entry-accessed-dirty" in r.kinds for r in results)
