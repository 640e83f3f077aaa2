"""The debugfs table views of a booted process: Linux's text of each `page_tables/` file, the
wide view (physical ranges, effective rights, both CR3 values), and the trees behind them. Which
tree each file shows is `kaiser.linux.debugfs.table_tree` (``current_user`` without PTI is the
kernel PGD, as in Linux)."""

from __future__ import annotations

from kaiser.linux.debugfs import TABLES, live_pgd, table_tree
from kaiser.linux.kernel import Kernel, Task
from kaiser.linux.ptdump import DIALECTS, Dialect, ptdump, ptdump_wide
from kaiser.x86.pagetable import PageTable


def dump_tree(kernel: Kernel, task: Task, table: str) -> PageTable:
    """The tree debugfs file `table` walks for `task` (`ValueError` for an unknown table)."""
    return table_tree(kernel, task, table)


def dump_text(kernel: Kernel, task: Task, table: str, *, wide: bool = False, dialect: Dialect = "generic") -> str:
    """The text of debugfs file `table` read by `task` (`kernel`: init_mm's PGD for ``kernel``),
    in `dialect`; `wide` adds the physical ranges, the effective user/kernel rights and a header
    naming the process's CR3 values (generic dialect only). `ValueError` for an unknown table or
    dialect."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; known: {', '.join(TABLES)}")
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; known: {', '.join(DIALECTS)}")
    pt = table_tree(kernel, task, table)
    markers = kernel.layout.markers
    if not wide:
        return ptdump(pt, markers, dialect=dialect)
    if dialect != "generic":
        raise ValueError("--wide prints the generic (5.6+) dialect only")
    kcr3, ucr3 = kernel.cr3_pair(task)
    cr3s = {"kernel": kcr3} if ucr3 is None else {"kernel": kcr3, "user": ucr3}
    return ptdump_wide(pt, markers, cr3s=cr3s, live=live_pgd(kernel, task, table))
