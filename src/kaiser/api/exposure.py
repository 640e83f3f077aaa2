"""What a process's user-mode page tables hold of the kernel: the figures `kaiser demo` prints and
docs/variants.md quotes (through `kaiser.docgen`), the present kernel ranges of `current_user`,
and each variant's audit outcome by class under both policies.

The user-mode tables are debugfs's ``current_user`` (`kaiser.linux.debugfs.table_tree`): the user
PGD with PTI, the kernel PGD without (nopti's user view is the whole kernel)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Final

from kaiser.linux.audit import audit_model
from kaiser.linux.debugfs import table_tree
from kaiser.linux.kernel import Kernel, Task
from kaiser.linux.memory import frames_kib, measure
from kaiser.linux.ptdump import ptdump
from kaiser.linux.ptdump_parse import MarkerLine, RangeLine, Record, parse_ptdump
from kaiser.x86.bits import PTE
from kaiser.x86.geometry import human_size
from kaiser.x86.pagetable import Leaf

USER_VIEW_HEADERS: Final = ("kernel leaves in user tables", "memory mapped", "global", "of which executable")
MEMORY_HEADERS: Final = ("per process", "PTI part", "full shadow instead", "PTI tables (shared)")
_SPACE_MARKERS: Final = ("User Space", "Kernel Space")  # the halves' markers: no region of their own


@dataclass(frozen=True)
class UserView:
    """What one process's user page tables hold of the kernel: each shared table and each frame
    counted once (ESPfix's 65,536 aliases of one page are one 4 KiB leaf)."""

    variant: str
    leaves: int
    mapped: int
    global_bytes: int
    executable: int

    def cells(self) -> list[str]:
        """The row `kaiser demo` and docs/variants.md print, under `USER_VIEW_HEADERS`."""
        return [
            str(self.leaves),
            human_size(self.mapped),
            human_size(self.global_bytes) if self.global_bytes else "0",
            human_size(self.executable) if self.executable else "0",
        ]


def user_view(kernel: Kernel) -> UserView:
    """The kernel half of the first task's user-mode tables (spawning one if there is none)."""
    task = next(iter(kernel.tasks.values())) if kernel.tasks else kernel.spawn()
    view = table_tree(kernel, task, "current_user")
    # one leaf per (frame, size): ESPfix's aliases count once, while a 4 KiB alias of a 2 MiB page's
    # first frame (the emulated vsyscall page is rodata's first page) does not hide the 2 MiB page
    leaves = list({(leaf.pa, leaf.size): leaf for leaf in view.leaves(kernel.layout.kernel_start, once=True)}.values())
    return UserView(
        variant=kernel.config.variant,
        leaves=len(leaves),
        mapped=physical_bytes(leaves),
        global_bytes=physical_bytes([leaf for leaf in leaves if leaf.entry & PTE.G]),
        executable=physical_bytes([leaf for leaf in leaves if not leaf.entry & PTE.NX]),
    )


def physical_bytes(leaves: list[Leaf]) -> int:
    """Bytes of physical memory the leaves map, each byte once however many leaves alias it."""
    total, end = 0, -1
    for start, stop in sorted((leaf.pa, leaf.pa + leaf.size) for leaf in leaves):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def memory_cells(variant: str) -> list[str]:
    """The page-table memory row of one variant (one typical process, 4-level, PCID), under
    `MEMORY_HEADERS`."""
    r = measure(variant)
    return [
        f"{frames_kib(r.process_tables)} KiB",
        f"+{frames_kib(r.process_pti_extra)} KiB",
        f"+{frames_kib(r.full_duplication_extra)} KiB",
        f"{frames_kib(r.shared_pti_tables)} KiB",
    ]


def exposed_kernel_lines(kernel: Kernel, task: Task) -> list[Record]:
    """`current_user`'s present kernel-half range lines under their region markers, in Linux's
    ptdump records: every kernel mapping user mode's tables hold."""
    text = ptdump(table_tree(kernel, task, "current_user"), kernel.layout.markers)
    start = kernel.layout.kernel_start
    records = parse_ptdump(text, f"{kernel.variant.name} current_user")
    return [r for r in records if _region_marker(r) or (isinstance(r, RangeLine) and r.present and r.start >= start)]


def _region_marker(record: Record) -> bool:
    return isinstance(record, MarkerLine) and record.name not in _SPACE_MARKERS


@dataclass(frozen=True)
class AuditSummary:
    """One process's audit under the variant's own policy and under `strict` (today's Linux)."""

    variant: str
    classes: dict[str, int]  # the strict audit's kernel mappings per class
    own_findings: int
    strict_findings: int
    exit_status: int  # the strict audit's (what `kaiser audit` exits with)


def audit_summary(kernel: Kernel, task: Task) -> AuditSummary:
    """`task`'s user-mode tables audited against both policies (`kaiser.linux.audit.audit_model`)."""
    own, strict = audit_model(kernel, task), audit_model(kernel, task, mode="strict")
    return AuditSummary(
        variant=kernel.variant.name,
        classes=dict(sorted(Counter(m.klass for m in strict.mappings).items())),
        own_findings=len(own.violations),
        strict_findings=len(strict.violations),
        exit_status=strict.exit_status,
    )
