"""Editing page tables that live in physical memory: map, unmap and protect ranges.

Pages are 4 KiB, 2 MiB or 1 GiB; by default the largest page that fits is used (as Linux builds
its direct map). A sub-range change splits a large page; tables emptied by an unmap are freed.
Every request is checked before a single entry is written, and each edit is a transaction (every
write journaled, frees deferred), so neither a bad request nor running out of frames midway
leaves a half-edited table behind.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from kaiser.x86.bits import (
    ADDR_MASK_52,
    PTE,
    PTE_PAT_4K,
    entry_phys,
    make_cr3,
    make_entry,
    pkey_of,
)
from kaiser.x86.geometry import FOUR_LEVEL, AddressError, Level, PagingMode, user_half_end
from kaiser.x86.hexrepr import hex_fields
from kaiser.x86.physmem import PAGE_SIZE, FrameKind, PhysicalMemory, PhysMemError

# Bits a caller may set on a leaf through map/protect; PS and the address are ours to manage.
LEAF_FLAG_MASK = int(
    PTE.P
    | PTE.RW
    | PTE.US
    | PTE.PWT
    | PTE.PCD
    | PTE.A
    | PTE.D
    | PTE.G
    | PTE.SW1
    | PTE.SW2
    | PTE.SW3
    | PTE.SW4
    | PTE.SW5
    | PTE.NX
)
# The non-leaf entries a table editor creates, (user half, kernel half), unless its caller gives its
# own (Linux: kaiser.linux.pgtable_types.TABLE_FLAGS). CHOSEN to restrict nothing, so that the leaf
# decides: rights are the AND over every entry of the walk (SDM Vol. 3A §4.6.1), so a present,
# writable, accessed entry, user-accessible in the user half only; D is ignored in a non-leaf
# entry (Tables 4-15, 4-17, 4-19) and set, as one template for every level would.
DEFAULT_TABLE_FLAGS = (int(PTE.P | PTE.RW | PTE.US | PTE.A | PTE.D), int(PTE.P | PTE.RW | PTE.A | PTE.D))
KEEP_ON_PROTECT = int(PTE.A | PTE.D)  # like Linux's pte_modify(), a protection change keeps A/D
_P = np.uint64(PTE.P)


class PagingError(ValueError):
    """A map/unmap/protect request that cannot be carried out; the tables are unchanged."""


@hex_fields("va", "size", "entry")
@dataclass(frozen=True)
class Leaf:
    """One leaf entry found by a table scan; `above`: the entries the walk passed to reach it,
    top level first (their XD bits are OR-ed into the leaf's rights, SDM Vol. 3A §4.6.1)."""

    va: int
    size: int
    entry: int
    depth: int
    above: tuple[int, ...] = ()

    @property
    def pa(self) -> int:
        return entry_phys(self.entry, self.size)

    def describe(self) -> str:
        return f"{_fmt_range(self.va, self.size)} -> {self.pa:#x}, entry {self.entry:#x} at depth {self.depth}"


def _fmt_range(va: int, size: int) -> str:
    return f"[{va:#018x}, {va + size:#018x})"


@dataclass
class _Journal:
    """What one edit did, so it can be undone: entries overwritten (slot, old value, depth),
    tables allocated, and tables to free once the edit has succeeded."""

    writes: list[tuple[int, int, int]] = field(default_factory=list)
    allocated: list[int] = field(default_factory=list)
    to_free: list[int] = field(default_factory=list)


class PageTable:
    """One tree of page tables rooted at a top-level table (PML4 or PML5).

    `tag` labels the frames it allocates in the memory's accounting.
    """

    def __init__(
        self,
        mem: PhysicalMemory,
        mode: PagingMode = FOUR_LEVEL,
        *,
        tag: str = "",
        root: int | None = None,
        gbpages: bool = True,
        table_flags: tuple[int, int] = DEFAULT_TABLE_FLAGS,
    ) -> None:
        self.mem = mem
        self.mode = mode
        self.tag = tag
        self.gbpages = gbpages
        self.table_flags = table_flags  # non-leaf entries it creates: (user half, kernel half)
        self.root = root if root is not None else mem.alloc(FrameKind.PAGE_TABLE, tag)
        # Called for every write to a top-level entry with (index, value); returns the value to
        # store. PTI uses it to mirror user-half writes into the user PGD (pti_set_user_pgtbl).
        self.root_hook: Callable[[int, int], int] | None = None
        self._journal: _Journal | None = None
        self._destroyed = False

    def _write(self, slot: int, value: int, depth: int) -> None:
        """Every entry write goes through here, so top-level writes can be mirrored (and undone).

        The one door: map/unmap/protect/split use it, and code outside this class (Linux's boot,
        PTI's clones, `pgd_alloc`'s copy of the kernel half) reaches it through `set_entry`. Only
        the MMU's own A/D updates (kaiser.x86.walker, SDM §4.8) write entries elsewhere."""
        if self._journal is not None:
            self._journal.writes.append((slot, self.mem.read_u64(slot), depth))
        if depth == 0 and self.root_hook is not None:
            value = self.root_hook((slot - self.root) // 8, value)
        self.mem.write_u64(slot, value)

    def set_entry(self, slot: int, value: int, depth: int) -> None:
        """Write `value` into the entry at physical address `slot`, a table at `depth` of this tree
        (0: the top level, where `root_hook` sees it). For callers that build tables by hand
        (espfix's aliases, PTI's clones); inside a map/unmap/protect the write is journaled too."""
        self._check_live()
        if not 0 <= depth < len(self.levels):
            raise PagingError(f"entry {slot:#x}: depth {depth} is not 0..{len(self.levels) - 1}")
        self._write(slot, value, depth)

    @contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """All or nothing: on any error undo every write (through the root hook, so a mirror is
        restored too) and free the tables allocated; tables emptied are freed only on success."""
        self._check_live()
        journal = self._journal = _Journal()
        try:
            yield
        except BaseException as exc:
            self._journal = None  # the undo itself is not journaled
            for slot, old, depth in reversed(journal.writes):
                self._write(slot, old, depth)
            for table in journal.allocated:
                self.mem.free(table)
            if isinstance(exc, PhysMemError):
                raise PhysMemError(f"{what}: {exc}") from exc
            raise
        finally:
            self._journal = None
        for table in journal.to_free:
            self.mem.free(table)

    def _check_live(self) -> None:
        if self._destroyed:
            raise PagingError(f"page table rooted at {self.root:#x} was destroyed")

    # ---- helpers ---------------------------------------------------------------------------
    @property
    def levels(self) -> tuple[Level, ...]:
        return self.mode.levels

    def cr3(self, **kw: int | bool) -> int:
        """A CR3 value naming this tree (keywords as `kaiser.x86.bits.make_cr3`)."""
        return make_cr3(self.root, **kw)  # type: ignore[arg-type]

    def _table_flags(self, va: int) -> int:
        """The flags of a new non-leaf entry on the way to `va` (`table_flags` of its half)."""
        user, kernel = self.table_flags
        return user if va < user_half_end(self.mode) else kernel

    def _is_leaf(self, depth: int, entry: int) -> bool:
        return depth == len(self.levels) - 1 or (self.levels[depth].leaf_ok and bool(entry & PTE.PS))

    def _check_range(self, va: int, size: int, align: int = PAGE_SIZE) -> None:
        if size <= 0:
            raise AddressError(f"range at {va:#018x} has size {size:#x}; it must be positive")
        self.mode.check_canonical(va, "start address")
        last = va + size - 1
        if (
            last >= 1 << 64
            or not self.mode.is_canonical(last)
            or (va < user_half_end(self.mode)) != (last < user_half_end(self.mode))
        ):
            raise AddressError(f"range {_fmt_range(va, size)} leaves the canonical half it starts in")
        if va % align or size % align:
            raise AddressError(f"range {_fmt_range(va, size)} is not aligned to {align:#x}")

    def _leaf_entry(self, pa: int, flags: int, size: int, pkey: int) -> int:
        large = size != PAGE_SIZE
        return make_entry(
            pa, flags | PTE.P | (PTE.PS if large else 0), maxphyaddr=self.mem.maxphyaddr, pkey=pkey, align=size
        )

    def _new_table(self) -> int:
        table = self.mem.alloc(FrameKind.PAGE_TABLE, self.tag)
        if self._journal is not None:
            self._journal.allocated.append(table)
        return table

    def _free_table(self, table: int) -> None:
        if self._journal is not None:
            self._journal.to_free.append(table)
        else:
            self.mem.free(table)

    def _check_pkey(self, what: str, va: int, pkey: int | None) -> None:
        if pkey is not None and not 0 <= pkey <= 15:
            raise PagingError(f"{what} at {va:#018x}: protection key {pkey} is not 0..15 (SDM §4.6.2)")

    # ---- scanning --------------------------------------------------------------------------
    def leaves(
        self, start: int = 0, end: int = 1 << 64, *, once: bool = False, prune: Collection[int] = ()
    ) -> Iterator[Leaf]:
        """Every present leaf overlapping [start, end), in address order (canonical addresses).
        With `once`, a table reached through several entries (aliases such as ESPfix's 65,536
        views of one page) is descended only the first time. Tables in `prune` are not
        descended into."""
        self._check_live()
        yield from self._leaves(self.root, 0, 0, (), start, end, set() if once else None, frozenset(prune))

    def _leaves(
        self,
        table: int,
        depth: int,
        base: int,
        above: tuple[int, ...],
        start: int,
        end: int,
        seen: set[int] | None,
        prune: frozenset[int],
    ) -> Iterator[Leaf]:
        level = self.levels[depth]
        words = self.mem.read_frame(table)
        for index in np.flatnonzero(words & _P).tolist():  # present entries only
            raw = base | (index << level.shift)
            # Top-level indexes 256..511 are the upper half: sign-extend (bit 47, or 56 with LA57).
            va = self.mode.canonicalize(raw) if depth == 0 else raw
            if va + level.span <= start or va >= end:
                continue
            entry = int(words[index])
            if self._is_leaf(depth, entry):
                yield Leaf(va, level.span, entry, depth, above)
                continue
            child = entry_phys(entry)
            if child in prune:
                continue
            if seen is not None:
                if child in seen:
                    continue
                seen.add(child)
            yield from self._leaves(child, depth + 1, va, (*above, entry), start, end, seen, prune)

    def tables(self, *, prune: Collection[int] = (), start: int = 0, end: int = 1 << 64) -> Iterator[tuple[int, int]]:
        """(physical address, depth) of every table in the tree, the root first, each once;
        below the root, only tables reached through entries overlapping [start, end) (canonical
        addresses: `kaiser.x86.geometry.user_half_end` for the user half's). Tables in `prune`
        (and everything below them) are skipped."""
        self._check_live()
        seen = set(prune)
        stack = [(self.root, 0, 0)]
        while stack:
            table, depth, base = stack.pop()
            if table in seen:
                continue
            seen.add(table)
            yield table, depth
            if depth == len(self.levels) - 1:
                continue
            level = self.levels[depth]
            words = self.mem.read_frame(table)
            for index in np.flatnonzero(words & _P).tolist():
                entry = int(words[index])
                va = base | (index << level.shift)
                if depth == 0:
                    va = self.mode.canonicalize(va)
                if not self._is_leaf(depth, entry) and va < end and va + level.span > start:
                    stack.append((entry_phys(entry), depth + 1, va))

    def lookup(self, va: int) -> Leaf | None:
        """The leaf mapping `va`, without rights checks or A/D updates, or None."""
        self.mode.check_canonical(va)
        found = next(self.leaves(va, va + 1), None)
        return found

    def entry_slot(self, va: int, depth: int, *, create: bool = False) -> int | None:
        """Physical address of the entry at `depth` on the path of `va`; intermediate tables are
        created (with Linux's default table flags) when `create`. None if the path is absent."""
        self.mode.check_canonical(va)
        self._check_live()
        if not 0 <= depth < len(self.levels):
            raise PagingError(f"{va:#018x}: depth {depth} is not 0..{len(self.levels) - 1}")
        table = self.root
        for d in range(depth):
            slot = table + 8 * self.levels[d].index(va)
            entry = self.mem.read_u64(slot)
            if not entry & PTE.P:
                if not create:
                    return None
                new = self._new_table()
                self._write(slot, new | self._table_flags(va), d)
                entry = self.mem.read_u64(slot)
            elif self._is_leaf(d, entry):
                raise PagingError(f"{va:#018x}: a {self.levels[d].span:#x}-byte page sits above depth {depth}")
            table = entry_phys(entry)
        return table + 8 * self.levels[depth].index(va)

    # ---- map ----------------------------------------------------------------------------
    def map(self, va: int, pa: int, size: int, flags: int, *, page_size: int | None = None, pkey: int = 0) -> None:
        """Map [va, va+size) to [pa, pa+size) with leaf `flags` (P is implied).

        `page_size` forces one page size; otherwise the largest that fits at each step is used.
        Raises PagingError/AddressError (tables unchanged) if anything in the range is mapped.
        """
        if flags & ~LEAF_FLAG_MASK:
            raise PagingError(f"map at {va:#018x}: flags {flags:#x} include bits map() manages (PS/PAT/address/key)")
        self._check_pkey("map", va, pkey)
        align = page_size or PAGE_SIZE
        if page_size is not None:
            if page_size not in self.mode.page_sizes():
                raise PagingError(f"map at {va:#018x}: page size {page_size:#x} is not 4 KiB, 2 MiB or 1 GiB")
            if page_size == 1 << 30 and not self.gbpages:
                raise PagingError(f"map at {va:#018x}: 1 GiB pages are not supported by this CPU")
        self._check_range(va, size, align)
        if pa % align:
            raise AddressError(f"map at {va:#018x}: physical address {pa:#x} is not aligned to {align:#x}")
        if pa < 0 or pa + size > self.mem.size:
            raise AddressError(
                f"map at {va:#018x}: physical range [{pa:#x}, {pa + size:#x}) is outside RAM (size {self.mem.size:#x})"
            )
        clash = next(self.leaves(va, va + size), None)
        if clash is not None:
            raise PagingError(f"map {_fmt_range(va, size)} overlaps the mapping at {clash.va:#018x}")
        with self._transaction(f"map {_fmt_range(va, size)}"):
            self._map(self.root, 0, va, va + size, pa, int(flags), page_size, pkey)

    def _fits(self, level: Level, va: int, end: int, pa: int, page_size: int | None) -> bool:
        span = level.span
        if page_size is not None:
            return span == page_size
        if span == 1 << 30 and not self.gbpages:
            return False
        return va % span == 0 and pa % span == 0 and end - va >= span

    def _map(
        self, table: int, depth: int, va: int, end: int, pa: int, flags: int, page_size: int | None, pkey: int
    ) -> None:
        level = self.levels[depth]
        while va < end:
            slot_end = min(end, (va & ~(level.span - 1)) + level.span)
            slot = table + 8 * level.index(va)
            entry = self.mem.read_u64(slot)
            last = depth == len(self.levels) - 1
            if level.leaf_ok and self._fits(level, va, end, pa, page_size):
                if entry & PTE.P:
                    # The slot lies inside the range, which holds no leaf (map checked): this is a
                    # table with no pages left below it (e.g. made by entry_slot); replace it.
                    assert not self._is_leaf(depth, entry), f"{va:#x} already mapped (overlap check missed it)"
                    self._free_subtree(entry_phys(entry), depth + 1)
                self._write(slot, self._leaf_entry(pa, flags, level.span, pkey), depth)
            elif last:
                raise AssertionError(f"{va:#x} already mapped (overlap check missed it)")
            else:
                if not entry & PTE.P:
                    new = self._new_table()
                    entry = new | self._table_flags(va)
                    self._write(slot, entry, depth)
                self._map(entry_phys(entry), depth + 1, va, slot_end, pa, flags, page_size, pkey)
            pa += slot_end - va
            va = slot_end

    def _free_subtree(self, table: int, depth: int) -> None:
        """Free a table and the tables below it (which must map nothing)."""
        if depth < len(self.levels) - 1:
            words = self.mem.read_frame(table)
            for index in np.flatnonzero(words & _P).tolist():
                entry = int(words[index])
                assert not self._is_leaf(depth, entry), f"table {table:#x} still maps a page"
                self._free_subtree(entry_phys(entry), depth + 1)
        self._free_table(table)

    # ---- unmap / protect ----------------------------------------------------------------
    def unmap(self, va: int, size: int) -> None:
        """Remove every mapping in [va, va+size), splitting large pages cut by the range and
        freeing tables left empty. Holes in the range are allowed (like munmap)."""
        self._check_range(va, size)
        with self._transaction(f"unmap {_fmt_range(va, size)}"):
            self._edit(self.root, 0, va, va + size, None, None)

    def protect(self, va: int, size: int, flags: int, *, pkey: int | None = None) -> None:
        """Replace the leaf flags of every page in [va, va+size) (A/D kept), splitting large pages
        cut by the range. Every page of the range must be mapped."""
        if flags & ~LEAF_FLAG_MASK:
            raise PagingError(f"protect at {va:#018x}: flags {flags:#x} include bits it manages (PS/PAT/address/key)")
        self._check_pkey("protect", va, pkey)
        self._check_range(va, size)
        covered = va
        for leaf in self.leaves(va, va + size):
            if leaf.va > covered:
                break
            covered = leaf.va + leaf.size
        if covered < va + size:
            raise PagingError(f"protect {_fmt_range(va, size)}: {covered:#018x} is not mapped")
        with self._transaction(f"protect {_fmt_range(va, size)}"):
            self._edit(self.root, 0, va, va + size, int(flags) | PTE.P, pkey)

    def _split(self, slot: int, depth: int, entry: int, va: int) -> int:
        """Replace the large leaf at `slot` with a table of 512 next-level leaves; return the
        new non-leaf entry. A 2 MiB leaf's PAT bit (12) becomes bit 7 in 4 KiB PTEs (SDM Table 4-20)."""
        child = self.levels[depth + 1]
        base_pa = entry_phys(entry, self.levels[depth].span)
        flags = entry & ~(int(PTE.PS) | ADDR_MASK_52)  # keeps A/D, G, NX, the key and software bits
        pat = bool(entry & PTE.PAT_LARGE)
        if depth + 1 < len(self.levels) - 1:
            child_flags = flags | int(PTE.PS) | (int(PTE.PAT_LARGE) if pat else 0)  # 1 GiB -> 2 MiB: PAT stays at 12
        else:
            child_flags = flags | (int(PTE_PAT_4K) if pat else 0)  # 2 MiB -> 4 KiB: PAT moves to bit 7
        new = self._new_table()
        for index in range(512):
            self._write(new + 8 * index, (base_pa + index * child.span) | child_flags, depth + 1)
        table_entry = new | self._table_flags(va)
        self._write(slot, table_entry, depth)
        return table_entry

    def _edit(self, table: int, depth: int, va: int, end: int, flags: int | None, pkey: int | None) -> bool:
        """Unmap (flags None) or re-protect [va, end) below `table`; return True if it is empty."""
        level = self.levels[depth]
        while va < end:
            slot_start = va & ~(level.span - 1)
            slot_end = min(end, slot_start + level.span)
            slot = table + 8 * level.index(va)
            entry = self.mem.read_u64(slot)
            if entry & PTE.P:
                whole = va == slot_start and slot_end - slot_start == level.span
                if self._is_leaf(depth, entry) and not whole:
                    entry = self._split(slot, depth, entry, va)
                if self._is_leaf(depth, entry):
                    if flags is None:
                        self._write(slot, 0, depth)
                    else:
                        key = pkey_of(entry) if pkey is None else pkey
                        large = level.span != PAGE_SIZE
                        new = make_entry(
                            entry_phys(entry, level.span),
                            (flags | (entry & KEEP_ON_PROTECT))
                            | (PTE.PS if large else 0)
                            | (entry & (PTE.PAT_LARGE if large else 0)),
                            maxphyaddr=52,
                            pkey=key,
                            align=level.span,
                        )
                        if not large:
                            new |= entry & PTE.PS  # a 4 KiB PTE's PAT bit stays
                        self._write(slot, new, depth)
                else:
                    child = entry_phys(entry)
                    if self._edit(child, depth + 1, va, slot_end, flags, pkey) and flags is None:
                        self._write(slot, 0, depth)
                        self._free_table(child)
            va = slot_end
        return not self.mem.table(table).any()

    # ---- teardown ----------------------------------------------------------------------------
    def destroy(self, *, shared: Collection[int] = ()) -> None:
        """Free every table of the tree, the root included (data frames are not touched); the
        object is unusable afterwards. Tables in `shared` (e.g. ones a PTI user PGD shares with
        the kernel PGD) and those below them are left alone. Each table is freed once, and only
        after all were checked to be page-table frames, so a bad tree is not half freed."""
        tables = [table for table, _ in self.tables(prune=shared)]
        for table in tables:
            if self.mem.kind_of(table) is not FrameKind.PAGE_TABLE:
                raise PagingError(f"destroy: table {table:#x} is not an allocated page-table frame")
        for table in tables:
            self.mem.free(table)
        self._destroyed = True
