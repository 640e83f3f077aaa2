"""What Linux's `/sys/kernel/debug/page_tables/` shows, and the process that reads it.

Three files (arch/x86/mm/debug_pagetables.c; facts/linux-kpti.md §6.1), each one page-table tree:

* ``kernel`` -- init_mm's PGD (``ptdump_walk_pgd_level_debugfs(m, &init_mm, false)``);
* ``current_kernel`` -- the reading process's PGD, the one the kernel runs on;
* ``current_user`` -- the reading process's PGD walked with ``user=true``. The file exists
  whenever the kernel is built with ``CONFIG_PAGE_TABLE_ISOLATION`` (every kernel the variants
  model, and Debian's: tests/linux/data/real/6.1.0-56-amd64-nopti-nokaslr has one), and
  arch/x86/mm/dump_pagetables.c ``ptdump_walk_pgd_level_debugfs()`` swaps in the user PGD
  (``kernel_to_user_pgdp``) only ``if (user && boot_cpu_has(X86_FEATURE_PTI))``. So without PTI
  at run time (``pti=off``/``nopti``, or ``pti=auto`` on a CPU Meltdown does not affect) it is
  the same tree as ``current_kernel``: the one user mode runs on. That is the one meaning
  here (`table_tree`), for `kaiser dump`, `kaiser compare` and everything that reads them.

`spawn_reader()` starts the process that reads the file: `cat` of a booted system, with an
exec'd image (text, data, heap, stack, vDSO), an anonymous mapping, a read-only one, a grown
heap, and -- for a ``-ldt`` dump of tools/realdumps -- an LDT (``modify_ldt()``). Only the user
half depends on it; `kaiser compare` does not compare the user half (the processes differ).
"""

from __future__ import annotations

from typing import Final

from kaiser.linux.kernel import Kernel, Task
from kaiser.linux.mm import Prot
from kaiser.x86.pagetable import PageTable

TABLES: Final = ("kernel", "current_kernel", "current_user")  # the files of page_tables/ (facts §6.1)

# The reader's own mappings beyond its exec'd image. CHOSEN: a typical small process -- a 1 MiB
# anonymous read/write mapping (malloc's arena), a 64 KiB read-only one (a mapped file) and
# 132 KiB of heap (glibc's first brk step is 132 KiB: M_TOP_PAD 128 KiB + the request, rounded).
ANON_BYTES: Final = 1 << 20
RO_BYTES: Final = 64 << 10
HEAP_BYTES: Final = 132 << 10


def spawn_reader(kernel: Kernel, *, ldt: bool = False) -> Task:
    """Start the process that reads the debugfs file on `kernel` (see the module docstring)."""
    task = kernel.spawn()
    task.mm.mmap(ANON_BYTES, Prot.READ | Prot.WRITE, name="anon")
    task.mm.mmap(RO_BYTES, Prot.READ, name="ro data")
    task.mm.brk(task.mm.brk_start + HEAP_BYTES)
    if ldt:
        task.mm.modify_ldt()
    return task


def table_tree(kernel: Kernel, task: Task, table: str) -> PageTable:
    """The tree debugfs file `table` walks when `task` reads it (`ValueError` for a name that is
    not one of `TABLES`): ``current_user`` is the user PGD with PTI, else the kernel PGD."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; known: {', '.join(TABLES)}")
    if table == "kernel":
        return kernel.init.kernel_pt
    pair = task.mm.pgd
    if table == "current_user" and pair.user_pt is not None:
        return pair.user_pt
    return pair.kernel_pt


def live_pgd(kernel: Kernel, task: Task, table: str) -> str:
    """Which of `task`'s CR3 values is loaded while the CPU runs on `table`'s tree: ``user`` for
    ``current_user`` with PTI, else ``kernel``."""
    return "user" if table == "current_user" and task.mm.pgd.user_pt is not None else "kernel"
