"""The designs after KPTI in the registry: `lass` and `fred` (facts/successors.md), and the boot-time
rules that tie them to PTI (arch/x86/mm/pti.c pti_check_boottime_disable()).

What user mode can reach is measured on the booted tables with the reference walker at CPL 3 (no
isolation: the kernel PGD stays loaded): under `lass` every upper-half access faults before paging
(#GP(0), no entry read), with `vsyscall=emulate` LASS is off and the walk decides again. `fred`
boots without user tables, its entry model enters at IA32_FRED_CONFIG's two entry points, reads
no IDT and writes no CR3; with pti=on Linux turns FRED off and isolates (`linux`). The audit of
each passes or fails as its design says, by class. INVLPGB is used only without PTI.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser.linux.audit import audit_model
from kaiser.linux.audit_policy import CLASSES, policy_for
from kaiser.linux.entry import FRED_KERNEL_ENTRY, EntryModel
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.syscalls import TEXT_OFFSETS
from kaiser.linux.variants import VARIANTS, Delivery, get_variant
from kaiser.x86.bits import CR4
from kaiser.x86.cpu import CpuState
from kaiser.x86.events import Ev
from kaiser.x86.rights import Op
from kaiser.x86.walker import Fault, translate

GP = 13  # #GP (SDM Vol. 3A §6.15), restated


@pytest.fixture(scope="module")
def lass() -> Kernel:
    return Kernel.boot(KernelConfig(variant="lass", seed=4))


@pytest.fixture(scope="module")
def fred() -> Kernel:
    return Kernel.boot(KernelConfig(variant="fred", seed=4))


def _kernel_leaf_vas(kernel: Kernel) -> list[int]:
    kpt = kernel.init.kernel_pt
    return [leaf.va for leaf in kpt.leaves(kernel.layout.kernel_start, once=True)]


def test_both_are_registered_non_isolating_designs_on_meltdown_immune_hardware() -> None:
    for name in ("lass", "fred"):
        v = get_variant(name)
        assert VARIANTS[name] is v and not v.isolating and not v.clones and v.meltdown_immune
    assert get_variant("lass").lass_cpu and get_variant("fred").delivery is Delivery.FRED


def test_lass_sets_cr4_lass_with_smap_and_keeps_no_user_tables(lass: Kernel) -> None:
    assert lass.init.user_pt is None and lass.variant.name == "lass"
    cr4 = lass.cr4()
    assert cr4 & CR4.LASS and cr4 & CR4.SMAP
    off = Kernel.boot(KernelConfig(variant="lass", seed=4, vsyscall="emulate"))  # Linux clears LASS
    assert not off.cr4() & CR4.LASS and not off.config.lass_active


@settings(max_examples=60, deadline=None)
@given(pick=st.integers(0, 10**9), op=st.sampled_from([Op.READ, Op.WRITE, Op.FETCH]))
def test_lass_user_mode_reaches_no_kernel_mapping(lass: Kernel, pick: int, op: Op) -> None:
    vas = _kernel_leaf_vas(lass)
    va = vas[pick % len(vas)]
    task = next(iter(lass.tasks.values())) if lass.tasks else lass.spawn()
    kcr3, ucr3 = lass.cr3_pair(task)
    assert ucr3 is None
    got = translate(lass.mem, CpuState(cr3=kcr3, cr4=lass.cr4(), cpl=3), va, op, set_ad=False)
    # LASS faults before paging: #GP(0), no CR2, no entry read
    assert isinstance(got, Fault) and (got.vector, got.cr2, got.entries) == (GP, None, ())
    off = CpuState(cr3=kcr3, cr4=lass.cr4() & ~int(CR4.LASS), cpl=3)
    plain = translate(lass.mem, off, va, op, set_ad=False)  # without LASS the walk reaches the leaf
    assert isinstance(plain, Fault) and plain.vector == 14 and plain.entries


def test_lass_audit_passes_and_fails_once_vsyscall_emulate_turns_lass_off(lass: Kernel) -> None:
    task = lass.spawn()
    for mode in ("strict", "variant"):
        report = audit_model(lass, task, mode=mode)
        assert report.exit_status == 0, report.describe()
        assert report.policy.allowed == frozenset(CLASSES) and "LASS" in report.policy.note
        assert {m.klass for m in report.mappings} >= {"direct_map", "kernel_text"}  # mapped, not reachable
    lass.exit(task)
    off = Kernel.boot(KernelConfig(variant="lass", seed=4, vsyscall="emulate"))
    report = audit_model(off, off.spawn(), mode="strict")
    assert report.exit_status == 1 and "turned LASS off" in report.policy.note


def test_fred_is_audited_as_the_kernel_pgd_it_leaves_mapped(fred: Kernel) -> None:
    task = fred.spawn()
    report = audit_model(fred, task)
    assert report.exit_status == 1 and report.view.startswith("current_kernel (fred")
    assert policy_for("fred").allowed == policy_for("linux").allowed
    fred.exit(task)


@given(name=st.sampled_from(["lass", "fred"]), vendor=st.sampled_from(["intel", "amd"]))
def test_pti_on_forces_isolation_and_turns_fred_off(name: str, vendor: str) -> None:
    """pti=on sets X86_FEATURE_PTI whatever the CPU, and then clears X86_FEATURE_FRED
    (932d922285ef); pti=auto on Meltdown-immune hardware leaves PTI off."""
    on = KernelConfig(variant=name, pti="on", vendor=vendor, seed=2)
    auto = KernelConfig(variant=name, pti="auto", vendor=vendor, seed=2)
    assert on.isolates and not on.fred_active
    assert not auto.isolates and auto.fred_active == (name == "fred")
    assert Kernel.boot(on).variant is VARIANTS["linux"]


def test_pti_on_keeps_lass_on_the_lass_cpu() -> None:
    kernel = Kernel.boot(KernelConfig(variant="lass", pti="on", seed=2))
    assert kernel.variant.name == "linux" and kernel.init.user_pt is not None
    assert kernel.cr4() & CR4.LASS  # the CPU still has LASS; PTI runs on top of it


def _accesses(model: EntryModel) -> list[tuple[int, int, int]]:
    """(kind, cpl, va) of every event the model emitted."""
    return [(kind, cpl, va) for kind, cpl, _, va, _ in model.out.array().tolist()]


def test_fred_entry_points_no_idt_no_cr3_switch(fred: Kernel) -> None:
    task = fred.spawn()
    model = EntryModel(fred)
    model.start(task)
    model.return_to_user()
    model.syscall("getppid")
    model.interrupt()  # from user
    model.nmi()  # from user
    model.syscall_entry()
    model.interrupt()  # from the kernel
    model.nmi()
    events = _accesses(model)
    base = fred.layout.kernel_base + TEXT_OFFSETS["asm_fred_entrypoint_user"]
    fetches = {va for kind, _, va in events if kind == int(Ev.FETCH)}
    assert base % 4096 == 0 and {base, base + FRED_KERNEL_ENTRY} <= fetches
    idt = fred.layout.cpu_entry_area_base
    assert not any(idt <= va < idt + 4096 for kind, _, va in events if kind != int(Ev.MOV_CR3))
    assert not any(kind == int(Ev.MOV_CR3) for kind, _, _ in events)
    lstar = fred.layout.entry_text[0]  # entry_SYSCALL_64 is never fetched: SYSCALL is a FRED event
    assert lstar not in fetches
    nmi_stack = model.ist_stack_top
    assert any(kind == int(Ev.WRITE) and va == nmi_stack - 8 for kind, _, va in events)  # level 2


def test_invlpgb_only_without_pti_and_with_pcid() -> None:
    assert KernelConfig(variant="nopti", invlpgb=True).invlpgb_active
    assert not KernelConfig(variant="nopti", invlpgb=True, pcid=False).invlpgb_active
    assert not KernelConfig(variant="linux", invlpgb=True).invlpgb_active  # 94a17f2dc90b
    assert KernelConfig(variant="linux", invlpgb=True, pti="auto", vendor="amd").invlpgb_active
    assert not KernelConfig(variant="linux", invlpgb=True, pti="on", vendor="amd").invlpgb_active
    assert not KernelConfig(variant="nopti").invlpgb_active
