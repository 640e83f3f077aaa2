"""Real entry code on our tables, run by Unicorn: every variant's system calls come back, the
user's kernel load faults where isolation says it must, and the broken variant faults in
Unicorn's MMU (not our walker) on the first fetch of entry_SYSCALL_64."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from kaiser.linux.variants import VARIANTS
from kaiser.realcode import BROKEN_VARIANT, build, run_variant
from kaiser.realcode.machine import PF_VECTOR, RealMachine

# the real entry code is PTI's (SWITCH_TO_*_CR3); asi's entry switches nothing (kaiser.realcode.session)
REAL = [name for name, v in VARIANTS.items() if not v.asi]
ISOLATING = [name for name in REAL if VARIANTS[name].isolating]


def test_binutils_present() -> None:
    """The kernel is assembled with GNU binutils; the suite must not silently skip without it."""
    for tool in build.TOOLS:
        assert shutil.which(tool), f"{tool} missing: install binutils"
    assert set(build.toolchain()) == set(build.TOOLS)


@pytest.mark.parametrize("pcid", [False, True], ids=["nopcid", "pcid"])
@pytest.mark.parametrize("name", REAL)
def test_every_variant_runs(name: str, pcid: bool) -> None:
    rep = run_variant(name, pcid=pcid)
    assert rep.ok, rep.problems
    out, ld = rep.outcome, rep.loaded
    assert out.error is None
    assert out.sysrets == out.syscalls_entered == len(ld.calls)
    assert [r.result for r in out.results] == [c.expect for c in ld.calls]
    assert out.passed == len(ld.calls)  # the user program's own check
    # The user's load from the direct map faults, in Unicorn, at CPL 3, at exactly that address.
    fault = out.fault
    assert fault is not None and fault.vector == PF_VECTOR and fault.cpl == 3
    assert fault.cr2 == ld.kernel_target and fault.where == "user_kernel_read"
    assert out.leaked is None


@pytest.mark.parametrize("name", ISOLATING)
def test_isolation_unmaps_the_kernel_word(name: str) -> None:
    rep = run_variant(name, pcid=True, seed=3)
    out, ld = rep.outcome, rep.loaded
    assert out.fault is not None and out.fault.cr3 == ld.user_cr3  # the user CR3 was live
    assert out.probe_value is None  # even a CPL-0 load with that CR3 cannot translate it
    assert out.probe is not None and out.probe.vector == PF_VECTOR and out.probe.cr2 == ld.kernel_target


def test_nopti_faults_on_us_not_on_absence() -> None:
    """Honest about nopti: the user load faults too (U/S=0), but the word is in the live tables."""
    rep = run_variant("nopti", pcid=False)
    out, ld = rep.outcome, rep.loaded
    assert out.fault is not None and out.fault.vector == PF_VECTOR and out.fault.cr3 == ld.kernel_cr3
    assert ld.user_cr3 is None and out.cr3_writes == []
    assert out.probe_value == ld.kdata[0]


@pytest.mark.parametrize("pcid", [False, True], ids=["nopcid", "pcid"])
def test_cr3_trace_switches_on_entry_and_exit(pcid: bool) -> None:
    rep = run_variant("linux", pcid=pcid)
    writes, ld = rep.outcome.cr3_writes, rep.loaded
    assert ld.user_cr3 is not None
    assert len(writes) == 1 + 2 * len(ld.calls)
    assert writes[0].user_pgd and "iret_to_user_tail" in writes[0].site  # boot's first exit (IRETQ)
    for entry, leave in zip(writes[1::2], writes[2::2], strict=True):
        assert not entry.user_pgd and entry.site.startswith("entry_SYSCALL_64")
        assert leave.user_pgd and leave.site.startswith("syscall_return_via_sysret_tail")
        assert entry.value & ~(1 << 63) == ld.kernel_cr3  # bit 12 clear: kernel PGD
        assert leave.value & ~(1 << 63) == ld.user_cr3  # bit 12 set: user PGD
    if pcid:  # calling.h: NOFLUSH on entry; on exit unless a user-ASID flush was pending (the first)
        assert not writes[0].value >> 63
        assert all(w.value >> 63 for w in writes[1:])
    else:
        assert not any(w.value >> 63 for w in writes)


@pytest.mark.parametrize("pcid", [False, True], ids=["nopcid", "pcid"])
def test_broken_variant_faults_in_unicorn(pcid: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Our walker is not consulted: fail loudly if anything in the run calls it.
    import kaiser.x86.walker as walker

    def no_walk(*_a: object, **_k: object) -> None:
        raise AssertionError("our walker was used")

    for name in dir(walker):
        if name.startswith("walk") or name == "translate":
            monkeypatch.setattr(walker, name, no_walk)
    rep = run_variant(BROKEN_VARIANT, pcid=pcid)
    assert rep.ok, rep.problems
    ld = rep.loaded
    # Phase 1, all native: the boot exit's first fetch after switching to the user CR3 faults.
    boot_exit = rep.outcome.fault
    assert boot_exit is not None and boot_exit.vector == PF_VECTOR and boot_exit.cpl == 0
    assert boot_exit.cr2 == boot_exit.rip and boot_exit.cr3 == ld.user_cr3
    # Phase 2: the user's first SYSCALL faults on fetching entry_SYSCALL_64 (values from Unicorn).
    assert ld.entry_va == ld.image.symbol("entry_SYSCALL_64")  # MSR_LSTAR
    entry = rep.entry_outcome
    assert entry is not None and entry.fault is not None
    assert entry.syscalls_entered == 1 and entry.sysrets == 0
    assert entry.fault.vector == PF_VECTOR
    assert entry.fault.cr2 == ld.entry_va == entry.fault.rip
    assert entry.fault.cr3 == ld.user_cr3


def test_unicorn_registers_for_broken_entry() -> None:
    """Read vector and CR2 straight from Unicorn after the run."""
    from unicorn.x86_const import UC_X86_REG_CR2, UC_X86_REG_RIP

    from kaiser.realcode.loader import boot

    ld = boot(BROKEN_VARIANT, pcid=False, seed=5)
    machine = RealMachine(ld, defer_boot_exit_cr3=True)
    out = machine.run()
    assert out.fault is not None and out.fault.vector == PF_VECTOR
    assert machine.uc.reg_read(UC_X86_REG_CR2) == ld.entry_va
    assert machine.uc.reg_read(UC_X86_REG_RIP) == ld.entry_va


@pytest.mark.parametrize("name", ["linux", "two-pgd", "fixed-trampoline"])
def test_five_level_and_nokaslr(name: str) -> None:
    assert run_variant(name, la57=True, seed=2).ok
    assert run_variant(name, kaslr=False).ok


def test_cli_run_all_json() -> None:
    import typer

    from kaiser.cli.run import run_command

    app = typer.Typer()
    app.command("run")(run_command)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(app, ["run", "--variant", "all", "--no-pcid", "--json"])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.output)["reports"]
    assert [r["variant"] for r in reports] == [*REAL, BROKEN_VARIANT]
    assert all(r["ok"] for r in reports)
    broken = reports[-1]
    assert broken["entry_fetch"]["fault"]["cr2"] == broken["entry_va"]
    result = CliRunner().invoke(app, ["run", "--variant", "nope"])
    assert result.exit_code == 2
