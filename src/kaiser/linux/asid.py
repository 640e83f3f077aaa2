"""Linux's per-CPU dynamic ASIDs and TLB-flush primitives (arch/x86/mm/tlb.c, asm/tlbflush.h).

A compile-time mirror of one CPU's `cpu_tlbstate`: the functions below take the same decisions
the kernel takes and append the instructions they execute (MOV to CR3, INVLPG, INVPCID, MOV to
CR4) to an `EventBuilder`, so the replay paths see exactly what the kernel would do. Rules and
names follow linux-kpti.md §5.3 (restating tlb.c / tlbflush.h); constants follow §5.1 and §4.1.

The mirror also holds the CPU's current CR3 value (`cr3`), which the entry macros in
`kaiser.linux.entry` read and rewrite (SWITCH_TO_KERNEL_CR3 and friends "read CR3").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from kaiser.x86.bits import CR3_NOFLUSH, CR4
from kaiser.x86.events import EventBuilder

TLB_NR_DYN_ASIDS: Final = 6  # asm/tlbflush.h: "so struct tlb_state fits in two cache lines" (§5.1)
X86_CR3_PTI_PCID_USER_BIT: Final = 11  # processor-flags.h (§4.1)
PTI_USER_PGTABLE_BIT: Final = 12  # calling.h: PAGE_SHIFT (§4.1)
PTI_USER_PCID_MASK: Final = 1 << X86_CR3_PTI_PCID_USER_BIT
PTI_USER_PGTABLE_MASK: Final = 1 << PTI_USER_PGTABLE_BIT
PTI_USER_PGTABLE_AND_PCID_MASK: Final = PTI_USER_PCID_MASK | PTI_USER_PGTABLE_MASK
KERN_PCID_MASK: Final = 0x7FF  # calling.h: `andq $(0x7FF), scratch` picks the kernel PCID out of CR3
TLB_SINGLE_PAGE_FLUSH_CEILING: Final = 33  # tlb.c `tlb_single_page_flush_ceiling`


def kern_pcid(asid: int) -> int:
    """kPCID = ASID + 1: PCID 0 is left to PCID-unaware code (tlbflush.h, §5.1)."""
    if not 0 <= asid < TLB_NR_DYN_ASIDS:
        raise ValueError(f"asid {asid} is not 0..{TLB_NR_DYN_ASIDS - 1}")
    return asid + 1


def user_pcid(asid: int) -> int:
    """uPCID = kPCID | bit 11 (tlbflush.h `user_pcid()`, §5.1)."""
    return kern_pcid(asid) | PTI_USER_PCID_MASK


@dataclass
class MmContext:
    """The parts of `mm->context` the ASID code reads: a unique `ctx_id` (never reused; 0 means
    "no mm") and `tlb_gen`, bumped by every flush request for the mm (`inc_mm_tlb_gen`)."""

    ctx_id: int
    tlb_gen: int = 0


class ContextIds:
    """Machine-wide `last_mm_ctx_id` counter (starts at 1) and each mm's context, keyed by pid."""

    def __init__(self) -> None:
        self._next = 1
        self._by_pid: dict[int, MmContext] = {}

    def of(self, pid: int) -> MmContext:
        """The context of process `pid`, made on first use (`init_new_context`)."""
        ctx = self._by_pid.get(pid)
        if ctx is None:
            ctx = self._by_pid[pid] = MmContext(self._next)
            self._next += 1
        return ctx


@dataclass
class AsidSlot:
    """`cpu_tlbstate.ctxs[asid]`: which mm's entries the slot may hold, and how fresh they are."""

    ctx_id: int = 0
    tlb_gen: int = 0


@dataclass
class CpuTlbState:
    """One CPU's `cpu_tlbstate` (§5.2) plus the CPU's CR3 value, as the kernel sees them.

    `pti`: X86_FEATURE_PTI (an isolating variant); `pcid`: CR4.PCIDE; `invpcid`: X86_FEATURE_INVPCID
    (INVPCID_SINGLE is synthesized only with PCIDE too, `setup_pcid()`, §4.4).
    """

    pti: bool
    pcid: bool
    invpcid: bool = True
    pge: bool = True
    cr3: int = 0
    cr4: int = 0
    loaded_ctx_id: int = 0
    loaded_pgd: int = 0
    loaded_mm_asid: int = 0
    next_asid: int = 1
    invalidate_other: bool = False
    user_pcid_flush_mask: int = 0  # TLB_NR_DYN_ASIDS+1 bits, indexed by kPCID (§5.2)
    ctxs: list[AsidSlot] = field(default_factory=lambda: [AsidSlot() for _ in range(TLB_NR_DYN_ASIDS)])

    @property
    def invpcid_single(self) -> bool:
        return self.invpcid and self.pcid


# ---- CR3 values -----------------------------------------------------------------------------------
def build_cr3(pgd: int, asid: int, s: CpuTlbState) -> int:
    """`build_cr3()`: the PGD plus the kernel PCID, or no PCID at all without PCID (§5.1)."""
    if not s.pcid:
        if asid:
            raise ValueError(f"asid {asid} without PCID (build_cr3 warns: it must be 0)")
        return pgd
    return pgd | kern_pcid(asid)


def build_cr3_noflush(pgd: int, asid: int, s: CpuTlbState) -> int:
    """`build_cr3_noflush()`: the same with bit 63 (only meaningful with PCID)."""
    if not s.pcid:
        raise ValueError("NOFLUSH needs PCID")
    return build_cr3(pgd, asid, s) | CR3_NOFLUSH


def write_cr3(s: CpuTlbState, out: EventBuilder, value: int) -> None:
    """MOV to CR3: emit it and remember the value (bit 63 is write-only, SDM; §4.1)."""
    out.mov_cr3(value)
    s.cr3 = value & ~CR3_NOFLUSH


# ---- ASID allocation --------------------------------------------------------------------------------
def initialize_tlbstate_and_flush(s: CpuTlbState, out: EventBuilder | None, ctx: MmContext, pgd: int) -> None:
    """Boot-time state: ASID 0 for the current mm, `next_asid` = 1, other slots invalid (§5.3).
    With `out`, the flushing CR3 write is emitted; without, the CR3 value is only recorded (the
    replay then starts from a CPU already in that state)."""
    s.loaded_ctx_id, s.loaded_pgd, s.loaded_mm_asid = ctx.ctx_id, pgd, 0
    s.next_asid = 1
    s.ctxs = [AsidSlot() for _ in range(TLB_NR_DYN_ASIDS)]
    s.ctxs[0] = AsidSlot(ctx.ctx_id, ctx.tlb_gen)
    s.invalidate_other = False
    s.user_pcid_flush_mask = 0
    value = build_cr3(pgd, 0, s)
    if out is not None:
        write_cr3(s, out, value)
    else:
        s.cr3 = value


def choose_new_asid(s: CpuTlbState, ctx: MmContext, next_tlb_gen: int) -> tuple[int, bool]:
    """`choose_new_asid()` (§5.3): (asid, need_flush)."""
    if not s.pcid:  # 1. no PCID: ASID 0, always flush
        return 0, True
    if s.invalidate_other:  # 2. drop every other slot (kernel entries there may be stale)
        for asid in range(TLB_NR_DYN_ASIDS):
            if asid != s.loaded_mm_asid:
                s.ctxs[asid].ctx_id = 0
        s.invalidate_other = False
    for asid, slot in enumerate(s.ctxs):  # 3. reuse the mm's slot; flush iff it is behind
        if slot.ctx_id == ctx.ctx_id:
            return asid, slot.tlb_gen < next_tlb_gen
    asid = s.next_asid  # 4. round-robin allocation
    s.next_asid += 1
    if asid >= TLB_NR_DYN_ASIDS:
        asid = 0
        s.next_asid = 1
    return asid, True


def invalidate_user_asid(s: CpuTlbState, asid: int) -> None:
    """The deferred user flush (§5.3): mark the user PCID of `asid` for a flushing CR3 write at the
    next SWITCH_TO_USER_CR3 / RESTORE_CR3. A no-op without PTI or without PCID."""
    if not (s.pti and s.pcid):
        return
    s.user_pcid_flush_mask |= 1 << kern_pcid(asid)


def invalidate_other_asid(s: CpuTlbState) -> None:
    """Kernel entries of other ASIDs are non-global under PTI: drop those slots at the next switch."""
    if s.pti and s.pcid:
        s.invalidate_other = True


def load_new_mm_cr3(s: CpuTlbState, out: EventBuilder, pgd: int, asid: int, need_flush: bool) -> int:
    """`load_new_mm_cr3()` (§5.3): flushing write of the kernel CR3 (and the user PCID marked for
    the deferred flush), or a NOFLUSH write. Returns the value written."""
    if need_flush:
        invalidate_user_asid(s, asid)
        value = build_cr3(pgd, asid, s)
    else:
        value = build_cr3_noflush(pgd, asid, s)
    write_cr3(s, out, value)
    return value


def switch_mm_irqs_off(s: CpuTlbState, out: EventBuilder, ctx: MmContext, pgd: int) -> bool:
    """`switch_mm_irqs_off()`: make `ctx`'s mm current on this CPU. Returns whether CR3 was written.

    Same mm: write CR3 only if this CPU's slot is behind the mm's `tlb_gen` (a flush it missed).
    Another mm: choose an ASID, record the slot, and load CR3 with or without NOFLUSH.
    """
    next_tlb_gen = ctx.tlb_gen
    if ctx.ctx_id == s.loaded_ctx_id:
        slot = s.ctxs[s.loaded_mm_asid]
        if slot.tlb_gen >= next_tlb_gen:
            return False
        slot.tlb_gen = next_tlb_gen
        flush_tlb_local(s, out)
        return True
    asid, need_flush = choose_new_asid(s, ctx, next_tlb_gen)
    s.ctxs[asid] = AsidSlot(ctx.ctx_id, next_tlb_gen)
    load_new_mm_cr3(s, out, pgd, asid, need_flush)
    s.loaded_ctx_id, s.loaded_pgd, s.loaded_mm_asid = ctx.ctx_id, pgd, asid
    return True


# ---- flush primitives (tlbflush.h 4.17-5.x; tlb.c later) ---------------------------------------------
def flush_tlb_one_user(s: CpuTlbState, out: EventBuilder, va: int) -> None:
    """`__flush_tlb_one_user()`: INVLPG (current = kernel PCID); under PTI the user PCID too,
    by INVPCID individual-address if INVPCID_SINGLE, else deferred (§5.3)."""
    out.invlpg(va)
    if not s.pti:
        return
    if s.invpcid_single:
        out.invpcid(0, user_pcid(s.loaded_mm_asid), va)
    else:
        invalidate_user_asid(s, s.loaded_mm_asid)


def flush_tlb_one_kernel(s: CpuTlbState, out: EventBuilder, va: int) -> None:
    """`flush_tlb_one_kernel()`: as above, then under PTI every other ASID's slot is invalidated."""
    flush_tlb_one_user(s, out, va)
    if s.pti:
        invalidate_other_asid(s)


def flush_tlb_local(s: CpuTlbState, out: EventBuilder) -> None:
    """`native_flush_tlb_local()`: deferred user flush + rewrite CR3 (flushes the kernel PCID)."""
    invalidate_user_asid(s, s.loaded_mm_asid)
    write_cr3(s, out, s.cr3)


def flush_tlb_global(s: CpuTlbState, out: EventBuilder) -> None:
    """`__flush_tlb_global()`: INVPCID all-including-globals if available, else toggle CR4.PGE."""
    if s.invpcid:
        out.invpcid(2)
        return
    out.mov_cr4(s.cr4 ^ CR4.PGE)
    out.mov_cr4(s.cr4)


def inc_mm_tlb_gen(ctx: MmContext) -> int:
    """`inc_mm_tlb_gen()`: a new flush generation for the mm."""
    ctx.tlb_gen += 1
    return ctx.tlb_gen


def flush_tlb_mm_range(s: CpuTlbState, out: EventBuilder, ctx: MmContext, start: int, end: int) -> None:
    """`flush_tlb_mm_range()` on one CPU: bump the mm's generation; if the mm is loaded here, flush
    page by page up to `tlb_single_page_flush_ceiling` pages, else the whole local TLB, and mark
    this CPU's slot current. Other CPUs catch up through the generation check at their next switch."""
    gen = inc_mm_tlb_gen(ctx)
    if ctx.ctx_id != s.loaded_ctx_id:
        return
    pages = (end - start + 4095) >> 12
    if pages <= TLB_SINGLE_PAGE_FLUSH_CEILING:
        for va in range(start, end, 4096):
            flush_tlb_one_user(s, out, va)
    else:
        flush_tlb_local(s, out)
    s.ctxs[s.loaded_mm_asid].tlb_gen = gen
