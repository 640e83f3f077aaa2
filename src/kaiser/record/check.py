"""The recording checks the model: for a `pti=on` recording, per syscall (and the interrupt, the
page fault and a syscall that blocks and switches to another process), the CR3 writes and what
runs under the user CR3 -- before the first CR3 write and after the last -- against what
`linux/entry.py` emits for `linux --no-pcid` (QEMU's TCG has no PCID, facts/recording.md, so the
recorded path is the no-PCID one).

What runs under the user CR3 is compared as the set of (op, region) pairs, without counts: the
model emits one event per distinct location a step touches, not one per instruction
(entry.py's docstring). Implicit accesses of event delivery (the hardware frame push, IDT and
TSS reads) are left out of the model side: a TCG plugin does not see them (docs/recording.md).
`KERNEL_ONLY` lists what the real kernel does under the user CR3 that the model does not, each
with the reason: a difference outside it is a finding.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from kaiser.linux.cea import PERCPU_PAGES
from kaiser.linux.entry import EntryModel
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.syscalls import SYSCALLS
from kaiser.record.format import CR3, FETCH, LOAD, OPS, REGIONS, STORE, RecordingReader, Transition
from kaiser.record.regions import CPU_ENTRY_AREA, Layout
from kaiser.record.stats import kind_of
from kaiser.x86.events import IMPLICIT, Ev
from kaiser.x86.physmem import PAGE_SIZE

Pair = tuple[str, str]  # (op, region)

# What the real kernel does under the user CR3 that the model does not (kernel behaviour the
# model leaves out, documented in docs/recording.md):
_VERW = "VERW (CLEAR_CPU_BUFFERS) reads x86_verw_sel in .entry.text"
_PUSH = (
    "error_entry's PUSH_AND_CLEAR_REGS on the entry stack; the model has only the CPU's implicit "
    "frame push there, on the same page"
)
KERNEL_ONLY: Final[dict[tuple[str, str], dict[Pair, str]]] = {
    # CLEAR_CPU_BUFFERS before sysretq/iretq: `verw x86_verw_sel` (arch/x86/include/asm/
    # nospec-branch.h, the MDS mitigation) reads its operand, which lives in .entry.text, and the
    # selector's descriptor from the GDT in the entry area, after SWITCH_TO_USER_CR3.
    ("syscall", "exit"): {("load", "entry_text"): _VERW},
    ("exception", "exit"): {("load", "entry_text"): _VERW},
    ("syscall", "entry"): {},
    # idtentry -> error_entry (arch/x86/entry/entry_64.S) saves the registers onto the entry
    # stack in the CPU entry area and reads its return address there before SWITCH_TO_KERNEL_CR3.
    ("exception", "entry"): {("store", "cpu_entry_area"): _PUSH, ("load", "cpu_entry_area"): _PUSH},
}
# Pages of the entry area the real kernel touches under the user CR3 that the model does not
# (offset from CPU_ENTRY_AREA_BASE): the GDT, read by VERW's selector check (see above).
CEA_KERNEL_ONLY: Final = {0x1000: "the GDT page (VERW's descriptor read)"}
CHECKED_KINDS: Final = (
    "getppid",
    "close",
    "lseek",
    "read",
    "write",
    "sched_yield",
    "interrupt",
    "page_fault",
    "context_switch",
)


@dataclass(frozen=True)
class UserCr3Side:
    """One transition as the CR3 check sees it."""

    cr3_writes: int
    entry: frozenset[Pair]  # references before the first CR3 write (under the user CR3)
    exit: frozenset[Pair]  # references after the last CR3 write (under the user CR3 again)
    entry_fetches: int
    exit_fetches: int
    cea_pages: frozenset[int]  # entry-area pages touched under the user CR3 (offset from its base)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cr3_writes": self.cr3_writes,
            "entry": sorted(f"{op} {region}" for op, region in self.entry),
            "exit": sorted(f"{op} {region}" for op, region in self.exit),
            "entry_fetches": self.entry_fetches,
            "exit_fetches": self.exit_fetches,
            "cea_pages": [hex(p) for p in sorted(self.cea_pages)],
        }


def _side(ops: list[str], regions: list[str], vaddrs: list[int], implicit: list[bool] | None = None) -> UserCr3Side:
    """`implicit`: references only the page check counts (the CPU's own, which a plugin cannot see)."""
    hidden = implicit or [False] * len(ops)
    cr3 = [i for i, op in enumerate(ops) if op == "cr3"]
    if not cr3:
        return UserCr3Side(0, frozenset(), frozenset(), 0, 0, frozenset())
    first, last = cr3[0], cr3[-1]
    under_user = [*range(first), *range(last + 1, len(ops))]
    entry = [(ops[i], regions[i]) for i in range(first) if not hidden[i]]
    exit_ = [(ops[i], regions[i]) for i in range(last + 1, len(ops)) if not hidden[i]]
    base = CPU_ENTRY_AREA[0]
    cea = {(vaddrs[i] - base) & ~0xFFF for i in under_user if regions[i] == "cpu_entry_area"}
    return UserCr3Side(
        len(cr3),
        frozenset(entry),
        frozenset(exit_),
        sum(1 for o, _ in entry if o == "fetch"),
        sum(1 for o, _ in exit_ if o == "fetch"),
        frozenset(cea),
    )


def real_side(refs: np.ndarray) -> UserCr3Side:
    """The recorded transition's CR3 writes and user-CR3 references."""
    ops = [OPS[o] for o in refs["op"].tolist()]
    return _side(ops, [REGIONS[r] for r in refs["region"].tolist()], refs["vaddr"].tolist())


def _model_layout(em: EntryModel) -> Layout:
    lay = em.lay
    rodata = lay.section("rodata").start
    percpu = (em.cpu.percpu_va, em.cpu.percpu_va + PERCPU_PAGES * PAGE_SIZE)
    return Layout(
        {
            "entry_text": [lay.entry_text],
            "kernel_text": [(lay.kernel_base, lay.entry_text[0]), (lay.entry_text[1], rodata)],
            "kernel_data": [(rodata, lay.kernel_end)],
            "direct_map": [(lay.page_offset_base, lay.page_offset_base + lay.direct_map_size)],
            "task_stack": [(lay.vmalloc_base, lay.vmalloc_base + lay.vmalloc_size)],
            "cpu_entry_area": [CPU_ENTRY_AREA],
            "percpu": [percpu],
        }
    )


_EV_OPS: Final = {int(Ev.READ): "load", int(Ev.WRITE): "store", int(Ev.FETCH): "fetch", int(Ev.MOV_CR3): "cr3"}


def model_side(kind: str) -> UserCr3Side:
    """What entry.py emits for one `kind` from user mode under `linux --no-pcid`, 4-level, no KASLR."""
    kernel = Kernel.boot(KernelConfig("linux", pcid=False, kaslr=False, ncpus=1))
    em = EntryModel(kernel)
    task = kernel.spawn()
    em.start(task)
    em.return_to_user()
    n = len(em.out)
    if kind == "interrupt":
        em.interrupt()
    elif kind == "context_switch":
        # a syscall that blocks: schedule() switches to another process's mm, which returns to user
        other = kernel.spawn()
        em.syscall_entry()
        em.context_switch(other)
        em.syscall_exit()
    elif kind == "page_fault":
        # any not-present user page and the PTE that would map it: the CR3 side does not depend on them
        em.page_fault(0x400000, 0, 0)
    else:
        em.syscall(kind)
    ev = em.out.array()[n:]
    ev = ev[np.isin(ev["kind"], list(_EV_OPS))]
    # the user's own accesses (the page fault's faulting and retried store) are not the kernel's
    ev = ev[(ev["cpl"] == 0) | (ev["kind"] == Ev.MOV_CR3)]
    layout = _model_layout(em)
    regions = [REGIONS[r] for r in layout.classify(ev["a"]).tolist()]
    ops = [_EV_OPS[int(k)] for k in ev["kind"].tolist()]
    regions = [r if o != "cr3" else "-" for o, r in zip(ops, regions, strict=True)]
    implicit = ((ev["aux"] & IMPLICIT) != 0).tolist()
    return _side(ops, regions, ev["a"].tolist(), implicit)


@dataclass(frozen=True)
class Comparison:
    """One transition kind's CR3 writes and user-CR3 references, real against the model's."""

    kind: str
    calls: int
    real: UserCr3Side
    model: UserCr3Side

    @property
    def cr3_match(self) -> bool:
        return self.real.cr3_writes == self.model.cr3_writes

    def only(self, where: str, side: str) -> set[Pair]:
        real, model = getattr(self.real, where), getattr(self.model, where)
        return set(real - model) if side == "real" else set(model - real)

    @property
    def group(self) -> str:
        return "exception" if self.kind in ("interrupt", "page_fault") else "syscall"

    def unexplained(self) -> dict[str, list[str]]:
        """Differences KERNEL_ONLY does not account for (empty: the model agrees)."""
        out: dict[str, list[str]] = {}
        for where in ("entry", "exit"):
            known = KERNEL_ONLY[(self.group, where)]
            extra = [f"{o} {r} (real only)" for o, r in self.only(where, "real") if (o, r) not in known]
            missing = [f"{o} {r} (model only)" for o, r in self.only(where, "model")]
            if extra or missing:
                out[where] = sorted(extra + missing)
        pages = [hex(p) for p in sorted(self.real.cea_pages - self.model.cea_pages) if p not in CEA_KERNEL_ONLY]
        if pages:
            out["cea_pages"] = [f"real only: {', '.join(pages)}"]
        if not self.cr3_match:
            out["cr3_writes"] = [f"real {self.real.cr3_writes}, model {self.model.cr3_writes}"]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "calls": self.calls,
            "real": self.real.as_dict(),
            "model": self.model.as_dict(),
            "cr3_match": self.cr3_match,
            "kernel_only": {
                where: sorted(
                    f"{o} {r}: {KERNEL_ONLY[(self.group, where)][(o, r)]}"
                    for o, r in self.only(where, "real")
                    if (o, r) in KERNEL_ONLY[(self.group, where)]
                )
                for where in ("entry", "exit")
            },
            "unexplained": self.unexplained(),
        }


def check_recording(path: str | os.PathLike[str]) -> list[Comparison]:
    """Each checked kind in a pti=on recording: its most common path against the model's."""
    paths: dict[str, Counter[bytes]] = {}
    example: dict[bytes, np.ndarray] = {}
    with RecordingReader(path) as r:
        if not r.header["pti"]:
            raise ValueError(f"{path}: a nopti recording; the CR3 check needs pti=on")
        for rec in r.records():
            if isinstance(rec, Transition):
                kind = kind_of(rec)
                # entry.py's context_switch is between two processes' mms (the pipe ping-pong);
                # elsewhere the few recorded switches mostly go to a kernel thread and back, which
                # borrows the mm (lazy TLB, arch/x86/mm/tlb.c: no CR3 write of its own)
                if kind == "context_switch" and r.header["workload"] != "pipe":
                    continue
                if kind in CHECKED_KINDS:
                    key = real_side(rec.refs).as_dict().__repr__().encode()
                    paths.setdefault(kind, Counter())[key] += 1
                    example.setdefault(key, rec.refs)
    out = []
    for kind in CHECKED_KINDS:
        if kind not in paths:
            continue
        key, _ = paths[kind].most_common(1)[0]
        calls = sum(paths[kind].values())
        if kind not in SYSCALLS and kind not in ("interrupt", "page_fault", "context_switch"):
            continue
        out.append(Comparison(kind, calls, real_side(example[key]), model_side(kind)))
    return out


__all__ = ["CR3", "FETCH", "LOAD", "STORE", "Comparison", "check_recording", "model_side", "real_side"]
