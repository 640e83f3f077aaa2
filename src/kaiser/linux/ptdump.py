"""Linux's page-table dump text (`/sys/kernel/debug/page_tables/*`), written from a table tree.

Writer: walks a page-table tree in physical memory exactly as `arch/x86/mm/dump_pagetables.c`
does and prints its text byte for byte (facts/linux-kpti.md §6; rules restated, no kernel code):

* one note per entry visited, in address order; an empty entry is a note with flags 0 at the
  level where it was found; a leaf (or a present-less, non-empty entry) is a note with its raw
  flags; a present table is descended into (§6.3);
* a run of notes becomes one line until a *break*: different raw flags, different effective
  protection (USR and RW AND-ed down the levels, NX OR-ed), a different level, or the address
  reaching the next marker's start. Only one marker advances per break (§6.3);
* line: ``0x%016lx-0x%016lx`` + 3 spaces + ``%9lu`` size + unit + space + 30-column flag field +
  level name (§6.2); the ESPfix marker shows at most 16 lines, then ``... N entries skipped ... ``;
* the hypervisor guard hole (top-level slots 256..271) is not walked; the final flush note is at
  address 0, so the last line ends at ``0x0000000000000000`` (§6.3, "address normalization").

Two dialects, chosen by `dialect`:

* ``"generic"`` (default) -- Linux 5.6 and later, the generic `mm/ptdump.c` walker, i.e. what
  every current kernel prints. The guard hole produces no notes at all, so the last user-half
  run ends where the walk resumes (``GUARD_HOLE_END_ADDR``). Raw flags are `val & PTE_FLAGS_MASK`,
  which drops bit 12, so ``PAT`` is never printed on a 2 MiB / 1 GiB leaf. Empty top-level
  entries of a 4-level table say ``pgd`` (mm/pagewalk.c `real_depth()` folds the P4D depth back;
  this corrects the facts' unverified guess of ``p4d``).
* ``"legacy"`` -- 4.x up to 5.5 (the era of samples 01-03): the guard-hole slots are noted as
  empty ``pgd`` entries, and a large leaf's flags keep the bits below its page size, so bit 12
  (PAT) shows as ``PAT`` on ``pmd``/``pud`` lines.

KASAN's shared-shadow shortcut and the W+X checker are not modelled.

Reading the text back (ours or a real machine's) is `kaiser.linux.ptdump_parse`.

Wide view: `ptdump_wide()` adds the physical range and the effective rights in user and kernel
mode (SDM §4.6.1 via `kaiser.x86.rights`) -- beyond Linux's format, for people asking "what can
user mode actually touch here".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal

import numpy as np

from kaiser.linux.layout import Marker, make_layout
from kaiser.linux.pgtable_types import PTE_FLAGS_MASK, level_names
from kaiser.x86.bits import CR4, MASK64, PTE, PTE_PAT_4K, entry_phys
from kaiser.x86.cpu import CpuState
from kaiser.x86.geometry import FIVE_LEVEL, PagingMode
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import PhysicalMemory
from kaiser.x86.rights import Op, Rights, check_access

Dialect = Literal["generic", "legacy"]
DIALECTS: Final = ("generic", "legacy")

UNITS: Final = "BKMGTPE"  # §6.2
FLAG_FIELD_WIDTH: Final = 30  # §6.2
FLAG_NAMES: Final = ("USR", "RW", "PWT", "PCD", "PSE", "PAT", "GLB", "NX")  # print order (§2 notes)
GUARD_HOLE_SLOTS: Final = range(256, 272)  # top-level slots skipped (§6.3)
NO_MARKER_END: Final = MASK64  # the marker list's terminator start (-1 in Linux)
BLANK_FLAGS: Final = " " * FLAG_FIELD_WIDTH
_PA_WIDTH: Final = 2 * 18 + 1  # "0x%016x-0x%016x"


# ---------------------------------------------------------------------------------------------
# formatting helpers (the reader, kaiser.linux.ptdump_parse, renders its records with them)


def size_parts(delta: int) -> tuple[int, str]:
    """Linux's size reduction (§6.2): divide by 1024 while exact and a bigger unit exists."""
    delta &= MASK64
    unit = 0
    while delta % 1024 == 0 and unit < len(UNITS) - 1:
        delta //= 1024
        unit += 1
    return delta, UNITS[unit]


def flag_field(raw: int, level: str) -> str:
    """The 30-column flag field for the raw flags of a run at `level` (§6.2)."""
    if not raw & PTE.P:
        return BLANK_FLAGS
    pat = raw & PTE_PAT_4K if level == "pte" else raw & PTE.PAT_LARGE if level in ("pmd", "pud") else 0
    return "".join((
        "USR " if raw & PTE.US else "    ",
        "RW " if raw & PTE.RW else "ro ",
        "PWT " if raw & PTE.PWT else "    ",
        "PCD " if raw & PTE.PCD else "    ",
        "PSE " if level != "pte" and raw & PTE.PS else "    ",
        "PAT " if pat else "    ",
        "GLB " if raw & PTE.G else "    ",
        "NX " if raw & PTE.NX else "x  ",
    ))  # fmt: skip


def flag_text(flags: Iterable[str]) -> str:
    """Flag names as one short string, `USR RW PSE GLB NX`, in the order ptdump prints them
    (`FLAG_NAMES`); `ro`/`x` where RW/NX are absent."""
    names = set(flags)
    out = ["USR"] if "USR" in names else []
    out.append("RW" if "RW" in names else "ro")
    out += [n for n in FLAG_NAMES[2:-1] if n in names]  # PWT PCD PSE PAT GLB
    out.append("NX" if "NX" in names else "x")
    return " ".join(out)


def range_text(start: int, end: int, size_and_flags: str) -> str:
    """One range line: the address range, 3 spaces, then the size and flag fields (§6.2)."""
    return f"0x{start:016x}-0x{end & MASK64:016x}   {size_and_flags}"


def size_field(start: int, end: int) -> str:
    """The ``%9lu`` size, its unit and one space (§6.2)."""
    num, unit = size_parts(end - start)
    return f"{num:9d}{unit} "


def marker_text(name: str) -> str:
    """A marker line: ``---[ name ]---`` (§6.2)."""
    return f"---[ {name} ]---"


def skipped_text(count: int) -> str:
    """Linux's line for a marker's capped lines: ``... N entries skipped ... `` (§6.3)."""
    return f"... {count} entr{'y' if count == 1 else 'ies'} skipped ... "


def default_markers(mode: PagingMode) -> tuple[Marker, ...]:
    """Markers of the modern, non-KASLR layout for `mode`."""
    return make_layout(la57=mode is FIVE_LEVEL, kaslr=False).markers


# ---------------------------------------------------------------------------------------------
# the walk: one note per entry (§6.3)


@dataclass(frozen=True)
class _Note:
    addr: int
    level: str | None  # None for the final flush
    raw: int  # flags as compared for breaks
    eff: int  # effective USR/RW/NX
    pa: int | None = None  # physical address at `addr` (wide view, present leaves)
    rights: Rights | None = None  # combined rights (wide view, present leaves)


_US_RW: Final = int(PTE.US | PTE.RW)
_NX: Final = int(PTE.NX)
_P: Final = int(PTE.P)
_PS: Final = int(PTE.PS)


def _effective(parent: int | None, raw: int) -> int:
    """USR and RW AND-ed, NX OR-ed down the levels; the top level is its own (§6.3)."""
    if parent is None:
        return raw
    return (parent & raw & _US_RW) | ((parent | raw) & _NX)


@dataclass(frozen=True)
class _Repeat:
    """The subtree just walked (`items`, at the addresses of its first copy) appears `count` more
    times, `stride` apart: a run of identical table entries (ESPfix's 65,536 aliases, §6.3). The
    walk emits it only where no marker starts inside the copies."""

    items: tuple[_Note | _Repeat, ...]
    stride: int
    count: int


@dataclass(frozen=True)
class _Summary:
    """What feeding a sequence of notes does to a run: its first and last (raw, eff, level), the
    breaks inside it, where its last break starts, its last note and its first address."""

    first: tuple[int, int, str | None]
    last: tuple[int, int, str | None]
    breaks: int
    last_break: int | None
    last_note: _Note
    first_addr: int


def _key(note: _Note) -> tuple[int, int, str | None]:
    return note.raw, note.eff, note.level


def _summary(items: Sequence[_Note | _Repeat], cache: dict[int, _Summary]) -> _Summary:
    """The `_Summary` of `items` (nested repeats expanded arithmetically, once each)."""
    first = last = None
    breaks, last_break = 0, None
    last_note: _Note | None = None
    first_addr = 0
    for item in items:
        if isinstance(item, _Note):
            k = _key(item)
            if last is None:
                first, first_addr = k, item.addr
            elif k != last:
                breaks, last_break = breaks + 1, item.addr
            last, last_note = k, item
            continue
        inner = cache.get(id(item))
        if inner is None:
            inner = cache[id(item)] = _summary(item.items, cache)
        for r in range(1, item.count + 1):
            shift = r * item.stride
            if inner.first != last:
                breaks, last_break = breaks + 1, inner.first_addr + shift
            if inner.breaks:
                breaks += inner.breaks
                last_break = (inner.last_break or 0) + shift
            last = inner.last
        last_note = replace(inner.last_note, addr=inner.last_note.addr + item.count * item.stride)
    assert first is not None and last is not None and last_note is not None
    return _Summary(first, last, breaks, last_break, last_note, first_addr)


def _noted(words: np.ndarray, base: int, span: int, bounds: Sequence[int]) -> list[int]:
    """Indexes whose notes the writer needs: all but the empty entries that follow an empty
    entry and start no marker (those cannot break a run; without leaving them out, aliased
    tables such as ESPfix's 2,048 views of one PTE page would cost a million notes)."""
    empty = words == 0
    quiet = empty.copy()
    quiet[0] = False
    quiet[1:] &= empty[:-1]
    for start in bounds:  # keep the first entry at or above every marker start in this table,
        # and the next few: one marker advances per break, so a marker that lags behind (several
        # starts passed by one entry) is printed at the next entry, which Linux notes (§6.3)
        i = -(-(start - base) // span)
        for j in range(max(i, 1), min(i + len(bounds) + 1, len(words))):
            quiet[j] = False
    return np.flatnonzero(~quiet).tolist()


def _walk(
    mem: PhysicalMemory,
    root: int,
    mode: PagingMode,
    dialect: Dialect,
    wide: bool,
    bounds: Sequence[int] = (),
    compress: bool = True,
) -> Iterator[_Note | _Repeat]:
    levels = mode.levels
    names = level_names(mode)
    last = len(levels) - 1

    def repeats(words: list[int], index: int, va: int, span: int) -> int:
        """How many entries after `index` repeat its table pointer with no marker inside (the
        wide view, which breaks on physical addresses, never compresses)."""
        if wide or not compress:
            return 0
        n = index + 1
        while n < len(words) and words[n] == words[index]:
            n += 1
        end = va + (n - index) * span
        if any(va + span <= b < end for b in bounds):
            return 0
        return n - index - 1

    def table(phys: int, depth: int, base: int, parent: int | None, rights: Rights) -> Iterator[_Note | _Repeat]:
        level = levels[depth]
        name = names[depth]
        frame = mem.read_frame(phys)
        indexes = _noted(frame, base, level.span, bounds) if depth else range(len(frame))
        words = frame.tolist()
        skip_to = -1
        for index in indexes:
            if index < skip_to:
                continue
            value = words[index]
            va = base | (index << level.shift)
            if depth == 0:
                va = mode.canonicalize(va)
                if index in GUARD_HOLE_SLOTS:
                    if dialect == "legacy":
                        yield _Note(va, name, 0, 0)  # pre-5.6: the hole reads as empty slots
                    continue  # 5.6+: not walked at all
            if value == 0:
                yield _Note(va, name, 0, 0)
                continue
            leaf = depth == last or (level.leaf_ok and bool(value & _PS))
            mask = PTE_FLAGS_MASK
            if dialect == "legacy" and leaf and depth != last:
                mask |= level.span - 1  # pmd_flags()/pud_flags() of a large entry keep bits 12+
            raw = value & mask
            eff = _effective(parent, value & PTE_FLAGS_MASK)
            through = rights.through(value, True) if wide else rights
            if leaf or not value & _P:
                present = bool(value & _P)
                yield _Note(va, name, raw, eff,
                            entry_phys(value, level.span) if wide and present else None,
                            through if wide and present else None)  # fmt: skip
                continue
            again = repeats(words, index, va, level.span) if depth else 0
            if not again:
                yield from table(entry_phys(value), depth + 1, va, eff, through)
                continue
            sub = tuple(table(entry_phys(value), depth + 1, va, eff, through))
            yield from sub
            yield _Repeat(sub, level.span, again)
            skip_to = index + again + 1

    yield from table(root, 0, 0, None, Rights())
    yield _Note(0, None, 0, 0)  # final flush at the normalized end of the space (§6.3)


# ---------------------------------------------------------------------------------------------
# the writer: runs, breaks and markers (§6.3)


class _Writer:
    def __init__(self, markers: Sequence[Marker], *, cap: bool, wide: bool, smep: bool, smap: bool) -> None:
        if not markers:
            raise ValueError("ptdump needs at least one marker (the first header)")
        self.markers = list(markers)
        self.cap = cap
        self.wide = wide
        self.out: list[str] = []
        self.index = -1  # current marker; -1 before the first note
        self.lines = 0
        self.start = 0
        self.cur: _Note | None = None
        self._summaries: dict[int, _Summary] = {}
        cr4 = CR4.PAE | CR4.PGE | (CR4.SMEP if smep else 0) | (CR4.SMAP if smap else 0)
        self.user_state = CpuState(cr3=0, cr4=cr4, cpl=3)
        self.kernel_state = CpuState(cr3=0, cr4=cr4, cpl=0)

    def bounds(self) -> list[int]:
        """Where the markers after the first start: a run always breaks there."""
        return [m.start for m in self.markers[1:]]

    def _next_start(self) -> int:
        nxt = self.index + 1
        return self.markers[nxt].start if nxt < len(self.markers) else NO_MARKER_END

    def _continues(self, note: _Note) -> bool:
        cur = self.cur
        assert cur is not None
        if note.raw != cur.raw or note.eff != cur.eff or note.level != cur.level:
            return False
        if note.addr >= self._next_start():
            return False
        if self.wide and cur.pa is not None:  # wide view: one physical range per line
            return note.pa == cur.pa + (note.addr - self.start) and note.rights == cur.rights
        return True

    def feed(self, item: _Note | _Repeat, shift: int = 0) -> None:
        """A note, or a repeat: copy by copy until the marker's line cap is reached, then every
        remaining copy at once, by counting its breaks (nothing more is printed until the next
        marker, which the walk guarantees is not inside the copies)."""
        if isinstance(item, _Note):
            self.note(replace(item, addr=item.addr + shift) if shift else item)
            return
        for r in range(1, item.count + 1):
            offset = shift + r * item.stride
            cap = self.markers[self.index].max_lines if self.cap and self.index >= 0 else 0
            if cap and self.lines >= cap and self.cur is not None:
                self._skip(item, offset, item.count - r + 1)
                return
            for sub in item.items:
                self.feed(sub, offset)

    def _skip(self, item: _Repeat, offset: int, copies: int) -> None:
        inner = self._summaries.get(id(item))
        if inner is None:
            inner = self._summaries[id(item)] = _summary(item.items, self._summaries)
        assert self.cur is not None
        head = int(inner.first != _key(self.cur))
        turn = int(inner.first != inner.last)
        self.lines += head + inner.breaks + (copies - 1) * (turn + inner.breaks)
        final = offset + (copies - 1) * item.stride
        if inner.breaks:
            self.start = (inner.last_break or 0) + final
        elif head if copies == 1 else turn:
            self.start = inner.first_addr + final
        self.cur = replace(inner.last_note, addr=inner.last_note.addr + final)

    def note(self, note: _Note) -> None:
        if self.cur is None:
            self.index = 0
            self.out.append(marker_text(self.markers[0].name))
        elif not self._continues(note):
            cap = self.markers[self.index].max_lines if self.cap else 0
            if not cap or self.lines < cap:
                self.out.append(self._line(note.addr))
            self.lines += 1
            if note.addr >= self._next_start():
                if cap and self.lines > cap:
                    self.out.append(skipped_text(self.lines - cap))
                self.index += 1
                self.lines = 0
                self.out.append(marker_text(self.markers[self.index].name))
        else:
            return
        self.start = note.addr
        self.cur = note

    def _line(self, end: int) -> str:
        cur = self.cur
        assert cur is not None and cur.level is not None
        tail = size_field(self.start, end) + flag_field(cur.raw, cur.level) + cur.level
        if not self.wide:
            return range_text(self.start, end, tail)
        if cur.pa is None or cur.rights is None:
            pa = " " * _PA_WIDTH
            rights = "user:--- kernel:---"
        else:
            pa = f"0x{cur.pa:016x}-0x{cur.pa + ((end - self.start) & MASK64):016x}"
            rights = f"user:{self._rwx(cur, self.user_state)} kernel:{self._rwx(cur, self.kernel_state)}"
        return f"0x{self.start:016x}-0x{end & MASK64:016x}  {pa}   {tail}  {rights}"

    @staticmethod
    def _rwx(note: _Note, state: CpuState) -> str:
        assert note.rights is not None
        return "".join(
            ch if check_access(note.rights, note.raw, op, state, False).allowed else "-"
            for ch, op in (("r", Op.READ), ("w", Op.WRITE), ("x", Op.FETCH))
        )

    def text(self) -> str:
        return "".join(line + "\n" for line in self.out)


def _check_dialect(dialect: str) -> None:
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}, not {dialect!r}")


def ptdump_root(
    mem: PhysicalMemory,
    root: int,
    mode: PagingMode,
    markers: Sequence[Marker] | None = None,
    *,
    dialect: Dialect = "generic",
    compress: bool = True,
) -> str:
    """The dump of the tree at physical address `root`, as Linux prints it. `compress=False`
    walks every alias of a repeated table entry by entry (same text, slower: for tests)."""
    _check_dialect(dialect)
    writer = _Writer(
        markers if markers is not None else default_markers(mode), cap=True, wide=False, smep=True, smap=True
    )
    for item in _walk(mem, root, mode, dialect, wide=False, bounds=writer.bounds(), compress=compress):
        writer.feed(item)
    return writer.text()


def ptdump(table: PageTable, markers: Sequence[Marker] | None = None, *, dialect: Dialect = "generic") -> str:
    """`ptdump_root` for a `PageTable`."""
    return ptdump_root(table.mem, table.root, table.mode, markers, dialect=dialect)


def ptdump_wide_root(
    mem: PhysicalMemory,
    root: int,
    mode: PagingMode,
    markers: Sequence[Marker] | None = None,
    *,
    smep: bool = True,
    smap: bool = True,
    cr3s: Mapping[str, int] | None = None,
    live: str | None = None,
) -> str:
    """The wide view: Linux's line with the physical range inserted after the virtual one and
    `user:rwx kernel:rwx` appended (effective rights across all levels, CR0.WP=1, EFER.NXE=1,
    SMEP/SMAP as given). A run also breaks where the physical range stops being contiguous; the
    markers' line caps apply as in Linux (ESPfix's 65,536 aliases would be 131,072 lines).
    `cr3s` (e.g. {"kernel": .., "user": ..}) and `live` add a
    header line naming the process's CR3 values and which one is loaded."""
    writer = _Writer(
        markers if markers is not None else default_markers(mode), cap=True, wide=True, smep=smep, smap=smap
    )
    for item in _walk(mem, root, mode, "generic", wide=True, bounds=writer.bounds()):
        writer.feed(item)
    header = ""
    if cr3s:
        parts = " ".join(f"{name}=0x{value:016x}{' (live)' if name == live else ''}" for name, value in cr3s.items())
        header = f"# CR3 {parts}\n"
    return header + writer.text()


def ptdump_wide(table: PageTable, markers: Sequence[Marker] | None = None, **kw: object) -> str:
    """`ptdump_wide_root` for a `PageTable`."""
    return ptdump_wide_root(table.mem, table.root, table.mode, markers, **kw)  # type: ignore[arg-type]
