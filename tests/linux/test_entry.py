"""Entry/exit compiled to events: CR3 values per calling.h, nopti without CR3 writes, paranoid
entry, every variant's paths replaying without faults, KAISER-global vs RFC on entry."""

from __future__ import annotations

import numpy as np
import pytest

from kaiser.linux.asid import invalidate_user_asid
from kaiser.linux.entry import EntryModel
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.syscalls import SYSCALLS
from kaiser.linux.variants import VARIANTS
from kaiser.x86.events import Ev, replay_reference
from kaiser.x86.mmu import Mmu

BIT11, BIT12, NOFLUSH = 1 << 11, 1 << 12, 1 << 63


def _model(variant: str, pcid: bool) -> EntryModel:
    kernel = Kernel.boot(KernelConfig(variant, pcid=pcid, ncpus=1))
    em = EntryModel(kernel)
    em.start(kernel.spawn())
    em.return_to_user()
    return em


def _cr3s(em: EntryModel, since: int = 0) -> list[int]:
    ev = em.out.array()[since:]
    return [int(v) for v in ev["a"][ev["kind"] == Ev.MOV_CR3]]


def test_nopti_makes_no_cr3_writes() -> None:
    for pcid in (True, False):
        em = _model("nopti", pcid)
        em.syscall("getppid")
        em.interrupt()
        em.nmi()
        em.syscall_entry()
        em.nmi()  # from kernel: the paranoid macros are patched out too
        em.syscall_exit()
        assert _cr3s(em) == []


@pytest.mark.parametrize("variant", [n for n, v in VARIANTS.items() if v.isolating and not v.asi])  # PTI
def test_cr3_bits_with_pcid(variant: str) -> None:
    em = _model(variant, True)
    kcr3 = em.tlb.cr3 & ~(BIT11 | BIT12)
    n = len(em.out)
    em.syscall("getppid")
    entry, exit_ = _cr3s(em, n)
    assert entry == kcr3 | NOFLUSH  # SWITCH_TO_KERNEL_CR3: clear 11 and 12, set 63
    assert exit_ == kcr3 | BIT11 | BIT12 | NOFLUSH  # SWITCH_TO_USER_CR3, nothing pending
    invalidate_user_asid(em.tlb, 0)  # a deferred user flush is pending for kPCID 1
    n = len(em.out)
    em.syscall("getppid")
    entry, exit_ = _cr3s(em, n)
    assert exit_ == kcr3 | BIT11 | BIT12  # flushing write of the user PCID ...
    assert em.tlb.user_pcid_flush_mask == 0  # ... and the bit is cleared


@pytest.mark.parametrize("variant", [n for n, v in VARIANTS.items() if v.isolating and not v.asi])  # PTI
def test_cr3_bits_without_pcid(variant: str) -> None:
    em = _model(variant, False)
    kcr3 = em.tlb.cr3 & ~BIT12
    n = len(em.out)
    em.syscall("getppid")
    assert _cr3s(em, n) == [kcr3, kcr3 | BIT12]  # toggle bit 12, flushing writes, no PCID bits
    assert kcr3 & 0xFFF == 0


@pytest.mark.parametrize("pcid", [True, False])
def test_paranoid_nmi_from_kernel(pcid: bool) -> None:
    em = _model("linux", pcid)
    em.syscall_entry()
    kcr3 = em.tlb.cr3
    n = len(em.out)
    em.nmi()
    # SAVE_AND_SWITCH_TO_KERNEL_CR3 writes nothing (bit 12 clear); RESTORE_CR3 writes the saved
    # value back: flushing without PCID, NOFLUSH with it.
    assert _cr3s(em, n) == [kcr3 | (NOFLUSH if pcid else 0)]


def test_nmi_from_user_switches_like_an_interrupt() -> None:
    em = _model("linux", True)
    n = len(em.out)
    em.nmi()
    entry, exit_ = _cr3s(em, n)
    assert not entry & (BIT11 | BIT12) and exit_ & BIT12 and exit_ & BIT11


def _replay(em: EntryModel) -> Mmu:
    mmu = Mmu(em.kernel.mem, em.initial_state())
    replay_reference(mmu, em.out.array())
    return mmu


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("pcid", [True, False])
def test_every_path_replays_without_faults(variant: str, pcid: bool) -> None:
    em = _model(variant, pcid)
    other = em.kernel.spawn()
    first = em.current
    assert first is not None
    for name in ("getppid", "close", "lseek"):
        em.user(reads=[0x400000], fetch=0x400000)
        em.syscall(name)
    em.interrupt()
    em.nmi()
    em.syscall_entry()
    em.interrupt()
    em.nmi()
    em.context_switch(other)
    em.syscall_exit()
    em.syscall_entry()
    em.context_switch(first)
    em.syscall_exit()
    mmu = _replay(em)
    assert mmu.counters.faults == em.ops.asi_faults  # none but the ASI faults asi takes
    expected_cr3 = int(np.sum(em.out.array()["kind"] == Ev.MOV_CR3))
    assert mmu.counters.cr3_writes == expected_cr3


def _entry_itlb_misses(variant: str) -> int:
    em = _model(variant, False)
    for _ in range(10):  # warm
        em.syscall("getppid")
    start = len(em.out)
    for _ in range(20):
        em.syscall_entry()
        em.syscall_body(SYSCALLS["getppid"])
        em.syscall_exit()
    mmu = Mmu(em.kernel.mem, em.initial_state())
    ev = em.out.array()
    replay_reference(mmu, ev[:start])
    return replay_reference(mmu, ev[start:]).itlb_misses


def test_kaiser_global_takes_fewer_itlb_misses_on_entry_than_rfc() -> None:
    rfc, glob = _entry_itlb_misses("kaiser-rfc"), _entry_itlb_misses("kaiser-global")
    assert glob < rfc
    assert rfc - glob >= 20  # at least the entry-text fetch under the user CR3, every call
