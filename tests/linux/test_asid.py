"""Linux's per-CPU dynamic ASIDs and flush primitives: each rule of linux-kpti.md §5.3."""

from __future__ import annotations

import numpy as np

from kaiser.linux.asid import (
    TLB_NR_DYN_ASIDS,
    ContextIds,
    CpuTlbState,
    choose_new_asid,
    flush_tlb_mm_range,
    flush_tlb_one_kernel,
    flush_tlb_one_user,
    initialize_tlbstate_and_flush,
    invalidate_user_asid,
    kern_pcid,
    load_new_mm_cr3,
    switch_mm_irqs_off,
    user_pcid,
)
from kaiser.x86.events import Ev, EventBuilder

PGD = 0x1234000
NOFLUSH = 1 << 63


def _state(pcid: bool = True, pti: bool = True, invpcid: bool = True) -> tuple[CpuTlbState, ContextIds]:
    s = CpuTlbState(pti=pti, pcid=pcid, invpcid=invpcid)
    ids = ContextIds()
    initialize_tlbstate_and_flush(s, None, ids.of(1), PGD)
    return s, ids


def _events(out: EventBuilder) -> np.ndarray:
    return out.array()


def test_pcid_names() -> None:
    assert [kern_pcid(a) for a in range(TLB_NR_DYN_ASIDS)] == [1, 2, 3, 4, 5, 6]
    assert user_pcid(0) == 1 | 2048 and user_pcid(5) == 6 | 2048


def test_initialize_puts_current_mm_in_slot_zero() -> None:
    s, ids = _state()
    assert s.loaded_mm_asid == 0 and s.next_asid == 1 and s.ctxs[0].ctx_id == ids.of(1).ctx_id
    assert s.cr3 == PGD | 1  # kPCID 1


def test_no_pcid_always_asid_zero_and_flush() -> None:
    s, ids = _state(pcid=False)
    assert choose_new_asid(s, ids.of(2), 0) == (0, True)
    assert choose_new_asid(s, ids.of(1), 0) == (0, True)


def test_reuse_slot_flush_only_when_behind() -> None:
    s, ids = _state()
    ctx = ids.of(1)
    assert choose_new_asid(s, ctx, ctx.tlb_gen) == (0, False)
    assert choose_new_asid(s, ctx, ctx.tlb_gen + 1) == (0, True)


def test_round_robin_allocation_wraps_to_zero() -> None:
    s, ids = _state()
    got = []
    for pid in range(2, 2 + TLB_NR_DYN_ASIDS):
        asid, flush = choose_new_asid(s, ids.of(pid), 0)
        assert flush
        s.ctxs[asid].ctx_id = ids.of(pid).ctx_id
        got.append(asid)
    assert got == [1, 2, 3, 4, 5, 0]
    assert s.next_asid == 1


def test_invalidate_other_drops_every_slot_but_the_loaded_one() -> None:
    s, ids = _state()
    out = EventBuilder()
    switch_mm_irqs_off(s, out, ids.of(2), PGD + 0x2000)  # asid 1
    switch_mm_irqs_off(s, out, ids.of(1), PGD)  # back to asid 0
    flush_tlb_one_kernel(s, out, 0xFFFF_8880_0000_0000)
    assert s.invalidate_other
    asid, flush = choose_new_asid(s, ids.of(2), ids.of(2).tlb_gen)
    assert not s.invalidate_other and s.ctxs[1].ctx_id == 0 and s.ctxs[0].ctx_id == ids.of(1).ctx_id
    assert flush and asid == 2  # its old slot was forgotten: a fresh round-robin allocation


def test_load_new_mm_cr3_flush_defers_user_flush() -> None:
    s, _ = _state()
    out = EventBuilder()
    assert load_new_mm_cr3(s, out, PGD, 2, True) == PGD | 3
    assert s.user_pcid_flush_mask == 1 << 3  # indexed by kPCID
    assert load_new_mm_cr3(s, out, PGD, 2, False) == PGD | 3 | NOFLUSH
    ev = _events(out)
    assert list(ev["kind"]) == [Ev.MOV_CR3, Ev.MOV_CR3]


def test_invalidate_user_asid_noop_without_pti_or_pcid() -> None:
    for pti, pcid in ((False, True), (True, False)):
        s, _ = _state(pcid=pcid, pti=pti)
        invalidate_user_asid(s, 0)
        assert s.user_pcid_flush_mask == 0


def test_flush_one_user_uses_invpcid_or_defers() -> None:
    s, _ = _state(invpcid=True)
    out = EventBuilder()
    flush_tlb_one_user(s, out, 0x7000)
    ev = _events(out)
    assert list(ev["kind"]) == [Ev.INVLPG, Ev.INVPCID]
    assert ev["aux"][1] == 0 and ev["b"][1] == user_pcid(0) and ev["a"][1] == 0x7000
    s, _ = _state(invpcid=False)
    out = EventBuilder()
    flush_tlb_one_user(s, out, 0x7000)
    assert list(_events(out)["kind"]) == [Ev.INVLPG] and s.user_pcid_flush_mask == 1 << 1
    s, _ = _state(pti=False)
    out = EventBuilder()
    flush_tlb_one_user(s, out, 0x7000)
    assert list(_events(out)["kind"]) == [Ev.INVLPG] and s.user_pcid_flush_mask == 0


def test_context_switch_cr3_with_and_without_noflush() -> None:
    s, ids = _state()
    out = EventBuilder()
    assert switch_mm_irqs_off(s, out, ids.of(2), PGD + 0x2000)  # new slot: flushing write
    assert switch_mm_irqs_off(s, out, ids.of(1), PGD)  # its slot is current: NOFLUSH
    assert not switch_mm_irqs_off(s, out, ids.of(1), PGD)  # same mm, up to date: nothing
    ev = _events(out)
    assert [int(v) for v in ev["a"]] == [PGD + 0x2000 | 2, PGD | 1 | NOFLUSH]


def test_flush_range_bumps_generation_and_other_cpu_catches_up() -> None:
    s, ids = _state()
    out = EventBuilder()
    switch_mm_irqs_off(s, out, ids.of(2), PGD + 0x2000)
    flush_tlb_mm_range(s, out, ids.of(1), 0, 0x1000)  # mm 1 is not loaded here: only its generation moves
    switch_mm_irqs_off(s, out, ids.of(1), PGD)
    assert int(out.array()["a"][-1]) == PGD | 1  # behind → flushing write, no NOFLUSH
    assert s.user_pcid_flush_mask & (1 << 1)


def test_large_range_flush_is_a_local_full_flush() -> None:
    s, ids = _state()
    out = EventBuilder()
    flush_tlb_mm_range(s, out, ids.of(1), 0, 64 * 4096)
    ev = out.array()
    assert list(ev["kind"]) == [Ev.MOV_CR3] and int(ev["a"][0]) == PGD | 1
    assert s.user_pcid_flush_mask == 1 << 1 and s.ctxs[0].tlb_gen == ids.of(1).tlb_gen
