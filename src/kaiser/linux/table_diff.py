"""A process's user tables against its kernel tables: what the user view leaves out or changes.

`diff_tables` walks both trees once, as runs of equal printed flags (`table_runs`), and reports
the kernel-half regions only the kernel tables map, the kernel-half ranges whose flags differ,
and user-half ranges that differ beyond the NX that Linux sets on the kernel PGD's copy of user
entries (facts/linux-kpti.md §3.2). `global_unshared_runs` are the global kernel pages the user
tables do not map: their TLB entries survive the switch to the user CR3 (§2 notes, §7.3).
Kernel-half tables both trees reach are shared lower levels (§3.3), identical in both, and not
walked (ESPfix's 65,536 aliases). `kaiser.linux.audit` adds the diff to a model's audit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from kaiser.linux.audit_policy import model_class
from kaiser.linux.layout import Layout
from kaiser.linux.pgtable_types import level_names
from kaiser.linux.ptdump import flag_text
from kaiser.x86.bits import PTE, PTE_PAT_4K
from kaiser.x86.geometry import kernel_half_start
from kaiser.x86.hexrepr import hex_fields
from kaiser.x86.pagetable import PageTable

_NX: Final = int(PTE.NX)


@hex_fields("start", "end")
@dataclass(frozen=True)
class DiffEntry:
    """A range where the user and kernel tables differ (flags as ptdump prints them + level)."""

    kind: str  # "flags-differ" | "user-only" | "kernel-only-user-half" | "user-half-differs"
    start: int
    end: int
    region: str
    kernel: str
    user: str

    def describe(self) -> str:
        return (
            f"{self.kind} at 0x{self.start:016x}-0x{self.end:016x} ({self.region}): "
            f"kernel tables {self.kernel or '-'}, user tables {self.user or '-'}"
        )


@hex_fields("left_out", "nx_only")
@dataclass(frozen=True)
class TableDiff:
    """User vs kernel tables of one process."""

    left_out: tuple[tuple[str, int, int], ...]  # kernel-half (region, ranges, bytes) only the kernel maps
    entries: tuple[DiffEntry, ...]
    nx_only: tuple[int, int]  # user-half (ranges, bytes) differing only by the kernel copy's NX (§3.2)


@dataclass(frozen=True)
class _Run:
    """Consecutive present leaves with the same printed flags, level and effective NX."""

    start: int
    end: int
    level: str
    flags: frozenset[str]
    eff_nx: bool

    def text(self) -> str:
        return f"{flag_text(self.flags)} {self.level}{' (eff NX)' if self.eff_nx and 'NX' not in self.flags else ''}"


def _leaf_flags(value: int, level: str) -> frozenset[str]:
    """The flags ptdump prints for a leaf entry (PAT where the level keeps it, SDM Table 4-20)."""
    pat = value & PTE_PAT_4K if level == "pte" else value & PTE.PAT_LARGE
    names = {
        "USR": value & PTE.US, "RW": value & PTE.RW, "PWT": value & PTE.PWT, "PCD": value & PTE.PCD,
        "PSE": level != "pte" and value & PTE.PS, "PAT": pat, "GLB": value & PTE.G, "NX": value & PTE.NX,
    }  # fmt: skip
    return frozenset(n for n, on in names.items() if on)


def kernel_half_tables(pt: PageTable) -> set[int]:
    """Physical addresses of the tables below the kernel half's top-level entries, each once."""
    return {table for table, depth in pt.tables(start=kernel_half_start(pt.mode)) if depth > 0}


def shared_kernel_tables(a: PageTable, b: PageTable) -> frozenset[int]:
    """Kernel-half tables both trees reach: what is below them is the same in both (shared lower
    levels, §3.3), so a comparison of the two trees need not walk them (ESPfix's 65,536 aliases)."""
    if a.root == b.root:
        return frozenset(kernel_half_tables(a))
    return frozenset(kernel_half_tables(a) & kernel_half_tables(b))


def table_runs(pt: PageTable, prune: frozenset[int] = frozenset()) -> list[_Run]:
    """Present leaves of a tree (`PageTable.leaves`) as runs of equal printed flags, level and
    effective NX (the NX a walk ORs in from above, e.g. the kernel PGD's copy of a user entry,
    §3.2). Tables in `prune` are not descended into (see `shared_kernel_tables`)."""
    names = level_names(pt.mode)
    runs: list[_Run] = []
    for leaf in pt.leaves(prune=prune):
        level = names[leaf.depth]
        eff_nx = any(e & _NX for e in (*leaf.above, leaf.entry))
        run = _Run(leaf.va, leaf.va + leaf.size, level, _leaf_flags(leaf.entry, level), eff_nx)
        prev = runs[-1] if runs else None
        if prev and prev.end == run.start and (prev.level, prev.flags, prev.eff_nx) == (level, run.flags, eff_nx):
            runs[-1] = _Run(prev.start, run.end, level, prev.flags, eff_nx)
        else:
            runs.append(run)
    return runs


def _overlay(a: list[_Run], b: list[_Run]) -> Iterator[tuple[int, int, _Run | None, _Run | None]]:
    """The two run lists cut at every boundary of either: (lo, hi, run of a, run of b), None where
    that tree maps nothing."""
    points = sorted({x for r in a + b for x in (r.start, r.end)})
    ia = ib = 0
    for lo, hi in zip(points, points[1:], strict=False):
        while ia < len(a) and a[ia].end <= lo:
            ia += 1
        while ib < len(b) and b[ib].end <= lo:
            ib += 1
        ra = a[ia] if ia < len(a) and a[ia].start <= lo else None
        rb = b[ib] if ib < len(b) and b[ib].start <= lo else None
        if ra or rb:
            yield lo, hi, ra, rb


def diff_tables(kernel_pt: PageTable, user_pt: PageTable, layout: Layout) -> TableDiff:
    """Kernel-half regions the user tables leave out, kernel-half ranges whose flags differ,
    user-half ranges that differ (other than the kernel copy's NX, which is summarized). Shared
    kernel-half tables are identical in both trees and left out."""
    left: dict[str, list[int]] = {}
    entries: list[DiffEntry] = []
    nx_ranges = nx_bytes = 0
    user_end = layout.user_end
    shared = shared_kernel_tables(kernel_pt, user_pt)
    for lo, hi, k, u in _overlay(table_runs(kernel_pt, shared), table_runs(user_pt, shared)):
        region = "user" if lo < user_end else model_class(layout, lo)
        kt, ut = k.text() if k else "", u.text() if u else ""
        if lo >= user_end:
            if k and not u:
                acc = left.setdefault(region, [0, 0])
                acc[0] += 1
                acc[1] += hi - lo
            elif u and not k:
                entries.append(DiffEntry("user-only", lo, hi, region, kt, ut))
            elif k and u and (k.flags, k.level) != (u.flags, u.level):
                entries.append(DiffEntry("flags-differ", lo, hi, region, kt, ut))
        elif k and u and (k.flags, k.level) == (u.flags, u.level) and k.eff_nx and not u.eff_nx:
            nx_ranges += 1
            nx_bytes += hi - lo
        elif not (k and u and (k.flags, k.level, k.eff_nx) == (u.flags, u.level, u.eff_nx)):
            entries.append(DiffEntry("user-half-differs", lo, hi, region, kt, ut))
    return TableDiff(
        tuple((r, n, b) for r, (n, b) in sorted(left.items(), key=lambda kv: -kv[1][1])),
        tuple(_coalesce(entries)),
        (nx_ranges, nx_bytes),
    )


def _coalesce(entries: list[DiffEntry]) -> Iterator[DiffEntry]:
    """Adjacent entries that say the same thing, as one."""
    prev: DiffEntry | None = None
    for e in entries:
        if prev and prev.end == e.start and (prev.kind, prev.region, prev.kernel, prev.user) == (
            e.kind, e.region, e.kernel, e.user,
        ):  # fmt: skip
            prev = DiffEntry(prev.kind, prev.start, e.end, prev.region, prev.kernel, prev.user)
            continue
        if prev:
            yield prev
        prev = e
    if prev:
        yield prev


def global_unshared_runs(kernel_pt: PageTable, user_pt: PageTable, layout: Layout) -> Iterator[tuple[int, int, _Run]]:
    """Global kernel-half runs of the kernel tables that the user tables do not map, as (lo, hi,
    the kernel run); tables both reach are mapped alike in both, so never "unshared"."""
    shared = shared_kernel_tables(kernel_pt, user_pt)
    for lo, hi, k, u in _overlay(table_runs(kernel_pt, shared), table_runs(user_pt, shared)):
        if lo >= layout.user_end and k and "GLB" in k.flags and not u:
            yield lo, hi, k


__all__ = [
    "DiffEntry",
    "TableDiff",
    "diff_tables",
    "global_unshared_runs",
    "kernel_half_tables",
    "shared_kernel_tables",
    "table_runs",
]
