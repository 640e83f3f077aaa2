"""Page-table memory per variant: what isolation costs each process and the machine.

Answers the review's "completely duplicated?" question with numbers: top-level-only shadowing
costs one extra 4 KiB PGD per process (pti.rst: "order-1 PGD"), while duplicating every level of
the user half would cost as many frames again as the process's own user page tables.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.mm import populate_typical
from kaiser.x86.geometry import user_half_end
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import PAGE_SIZE


@dataclass(frozen=True)
class MemoryRow:
    """Page-table frames of one variant, for one process with a typical footprint."""

    variant: str
    pcid: bool
    la57: bool
    user_footprint: int  # bytes of user memory mapped by the process
    process_tables: int  # frames: the process's PGD (pair) and its user page tables
    process_pti_extra: int  # frames of those that exist only because of isolation (the user PGD)
    full_duplication_extra: int  # frames a shadow duplicating every user level would add instead
    shared_kernel_tables: int  # frames: init_mm's kernel tree, shared by every process
    shared_pti_tables: int  # frames: init_mm's user PGD and the private tables of its kernel half

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def user_half_tables(pt: PageTable) -> int:
    """Tables below the root reachable through the user half (entries 0..255)."""
    return sum(1 for _, depth in pt.tables(end=user_half_end(pt.mode)) if depth > 0)


def measure(variant: str, *, pcid: bool = True, la57: bool = False, seed: int = 0, **switches: Any) -> MemoryRow:
    """Boot `variant`, run one typical process, and count page-table frames by owner (`switches`:
    further `KernelConfig` switches -- pti, vendor, vsyscall, ncpus)."""
    kernel = Kernel.boot(KernelConfig(variant=variant, pcid=pcid, la57=la57, seed=seed, **switches))
    task = kernel.spawn()
    populate_typical(task.mm)
    by_tag = kernel.mem.stats().page_table_by_tag
    own = by_tag.get(f"pid{task.pid}", 0) + by_tag.get(f"pid{task.pid} pti", 0)
    isolating = task.mm.pgd.user_pt is not None
    return MemoryRow(
        variant=variant,
        pcid=pcid,
        la57=la57,
        user_footprint=task.mm.user_footprint(),
        process_tables=own,
        process_pti_extra=1 if isolating else 0,
        full_duplication_extra=(1 + user_half_tables(task.mm.pgd.kernel_pt)) if isolating else 0,
        shared_kernel_tables=by_tag.get("init_mm", 0) - (1 if isolating else 0),  # the pair's 2nd half is PTI's
        shared_pti_tables=by_tag.get("init_mm pti", 0) + (1 if isolating else 0),
    )


def frames_kib(frames: int) -> int:
    """A frame count in KiB."""
    return frames * PAGE_SIZE // 1024
