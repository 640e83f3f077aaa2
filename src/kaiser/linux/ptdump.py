"""Linux's page-table dump text (`/sys/kernel/debug/page_tables/*`), written and read back.

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

Reader: `parse_ptdump()` turns that text (ours or a real machine's, either dialect, with or
without dmesg timestamps) into typed records; any malformed line raises `PtdumpParseError`
with a one-line ``source:line: reason`` message. `render_records()` prints records back.

Wide view: `ptdump_wide()` adds the physical range and the effective rights in user and kernel
mode (SDM §4.6.1 via `kaiser.x86.rights`) -- beyond Linux's format, for people asking "what can
user mode actually touch here".
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Literal

import numpy as np

from kaiser.inputs import InputError, read_bytes
from kaiser.linux.layout import TOP, Marker, make_layout
from kaiser.x86.bits import CR4, PTE, entry_phys
from kaiser.x86.cpu import CpuState
from kaiser.x86.geometry import FIVE_LEVEL, PagingMode
from kaiser.x86.hexrepr import hex_fields
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import PhysicalMemory
from kaiser.x86.rights import Op, Rights, check_access

Dialect = Literal["generic", "legacy"]
DIALECTS: Final = ("generic", "legacy")

MASK64: Final = TOP - 1
UNITS: Final = "BKMGTPE"  # §6.2
FLAG_FIELD_WIDTH: Final = 30  # §6.2
FLAG_NAMES: Final = ("USR", "RW", "PWT", "PCD", "PSE", "PAT", "GLB", "NX")  # print order (§2 notes)
LEVEL_NAMES: Final = ("pgd", "p4d", "pud", "pmd", "pte")
PTE_PFN_MASK: Final = ((1 << 52) - 1) & ~0xFFF  # bits 51:12 (pgtable_types.h PTE_PFN_MASK)
PTE_FLAGS_MASK: Final = MASK64 & ~PTE_PFN_MASK  # ~PTE_PFN_MASK: what ptdump compares (§6.2)
PAT_4K: Final = 1 << 7  # PAT bit of a 4 KiB PTE
PAT_LARGE: Final = 1 << 12  # PAT bit of a 2 MiB / 1 GiB leaf
GUARD_HOLE_SLOTS: Final = range(256, 272)  # top-level slots skipped (§6.3)
NO_MARKER_END: Final = MASK64  # the marker list's terminator start (-1 in Linux)
_BLANK_FLAGS: Final = " " * FLAG_FIELD_WIDTH
_PA_WIDTH: Final = 2 * 18 + 1  # "0x%016x-0x%016x"


# ---------------------------------------------------------------------------------------------
# formatting helpers (shared by writer and reader)


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
        return _BLANK_FLAGS
    pat = raw & PAT_4K if level == "pte" else raw & PAT_LARGE if level in ("pmd", "pud") else 0
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


def range_text(start: int, end: int, size_and_flags: str) -> str:
    return f"0x{start:016x}-0x{end & MASK64:016x}   {size_and_flags}"


def _size_text(start: int, end: int) -> str:
    num, unit = size_parts(end - start)
    return f"{num:9d}{unit} "


def marker_text(name: str) -> str:
    return f"---[ {name} ]---"


def skipped_text(count: int) -> str:
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
        name = level.linux
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
        tail = _size_text(self.start, end) + flag_field(cur.raw, cur.level) + cur.level
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


# ---------------------------------------------------------------------------------------------
# the reader


class PtdumpParseError(InputError):
    """Malformed ptdump text. `str()` is one line: ``source:line: reason`` (an `InputError`, so the
    CLI prints it and exits 2)."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(source, reason, line=line)
        self.source = source


@hex_fields("start", "end", "size")
@dataclass(frozen=True)
class RangeLine:
    """One range line. `end` is exclusive (2**64 where Linux prints the wrapped 0x0000000000000000);
    `flags` holds the printed names (USR RW PWT PCD PSE PAT GLB NX; `ro`/`x` are their absence)."""

    start: int
    end: int
    size: int
    present: bool
    flags: frozenset[str]
    level: str
    section: str | None  # the marker this line is printed under
    lineno: int = field(default=0, compare=False)

    def describe(self) -> str:
        """The line as Linux prints it, with its section: ``[CPU entry Area] 0x...``."""
        return f"[{self.section}] {self.render()}" if self.section else self.render()

    def render(self) -> str:
        if self.present:
            field_ = "".join((
                "USR " if "USR" in self.flags else "    ",
                "RW " if "RW" in self.flags else "ro ",
                *(f"{name} " if name in self.flags else "    " for name in ("PWT", "PCD", "PSE", "PAT", "GLB")),
                "NX " if "NX" in self.flags else "x  ",
            ))  # fmt: skip
        else:
            field_ = _BLANK_FLAGS
        return range_text(self.start, self.end, _size_text(self.start, self.end) + field_ + self.level)


@dataclass(frozen=True)
class MarkerLine:
    name: str
    lineno: int = field(default=0, compare=False)

    def render(self) -> str:
        return marker_text(self.name)


@dataclass(frozen=True)
class SkipLine:
    count: int
    lineno: int = field(default=0, compare=False)

    def render(self) -> str:
        return skipped_text(self.count)


Record = RangeLine | MarkerLine | SkipLine

_DMESG_PREFIX = re.compile(r"\[\s*\d+\.\d+\] ")
_MARKER = re.compile(r"---\[ (.+) \]---")
_SKIP = re.compile(r"\.\.\. (\d{1,20}) entr(?:y|ies) skipped \.\.\. ?")  # digit runs bounded: a u64 at most
_HEX16 = re.compile(r"[0-9a-f]{16}")
_SIZE = re.compile(r"( *)(\d{1,20})([A-Za-z])")
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]")
_FLAG_SLOTS: Final = (  # (column in the field, printed if set, printed if clear, name)
    (0, "USR ", "    ", "USR"),
    (4, "RW ", "ro ", "RW"),
    (7, "PWT ", "    ", "PWT"),
    (11, "PCD ", "    ", "PCD"),
    (15, "PSE ", "    ", "PSE"),
    (19, "PAT ", "    ", "PAT"),
    (23, "GLB ", "    ", "GLB"),
    (27, "NX ", "x  ", "NX"),
)
_RANGE_HEAD = 40  # "0x" + 16 + "-0x" + 16 + 3 spaces


def _show(text: str, limit: int = 24) -> str:
    """A short, printable quote of `text` for an error message."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _parse_range(line: str, section: str | None, err: _Err) -> RangeLine:
    if len(line) < _RANGE_HEAD:
        if not _HEX16.fullmatch(line[2:18].ljust(16, "0")) or (len(line) > 18 and line[18] != "-"):
            raise err(f"bad hex start address {_show(line[:18])}")
        raise err(f"truncated range line ({len(line)} characters)")
    if not _HEX16.fullmatch(line[2:18]):
        raise err(f"bad hex start address {_show(line[:18])}")
    if line[18:21] != "-0x":
        raise err(f"expected '-0x' after the start address, found {_show(line[18:21])}")
    if not _HEX16.fullmatch(line[21:37]):
        raise err(f"bad hex end address {_show(line[19:37])}")
    if line[37:40] != "   ":
        raise err(f"expected 3 spaces after the address range, found {_show(line[37:40])}")
    start, end = int(line[2:18], 16), int(line[21:37], 16)
    rest = line[_RANGE_HEAD:]
    m = _SIZE.match(rest)
    if not m:
        raise err("truncated range line (no size)" if not rest.strip() else f"bad size field {_show(rest[:12])}")
    pad, digits, unit = m.groups()
    if unit not in UNITS:
        raise err(f"unknown size unit {unit!r} in {_show(digits + unit)}")
    if len(pad) + len(digits) != max(9, len(digits)):
        raise err(f"size field {_show(pad + digits + unit)} is not 9 columns wide")
    rest = rest[m.end() :]
    if not rest:
        raise err("truncated range line (no flags)")
    if rest[0] != " ":
        raise err(f"expected a space after the size, found {_show(rest[:1])}")
    flags_text, level = rest[1 : 1 + FLAG_FIELD_WIDTH], rest[1 + FLAG_FIELD_WIDTH :]
    if len(flags_text) < FLAG_FIELD_WIDTH:
        raise err(f"truncated range line (flag field has {len(flags_text)} of {FLAG_FIELD_WIDTH} columns)")
    present, flags = _parse_flags(flags_text, err)
    if not level:
        raise err("truncated range line (no level name)")
    if level not in LEVEL_NAMES:
        raise err(f"unknown level {_show(level)} (expected one of {' '.join(LEVEL_NAMES)})")
    if "PSE" in flags and level == "pte":
        raise err("PSE is never printed at pte level")
    if start % 4096 or end % 4096:
        raise err(f"address range 0x{start:016x}-0x{end:016x} is not 4 KiB aligned")
    if end != 0 and end <= start:
        raise err(f"end address 0x{end:016x} is not above the start 0x{start:016x}")
    stop = end if end != 0 else TOP  # Linux prints the wrapped end of the address space as 0
    want = size_parts(stop - start)
    if (int(digits), unit) != want:
        raise err(f"size {digits}{unit} does not match the range (expected {want[0]}{want[1]})")
    return RangeLine(start, stop, stop - start, present, flags, level, section, err.lineno)


def _parse_flags(text: str, err: _Err) -> tuple[bool, frozenset[str]]:
    if text == _BLANK_FLAGS:
        return False, frozenset()
    names = set()
    for col, on, off, name in _FLAG_SLOTS:
        piece = text[col : col + len(on)]
        if piece == on:
            names.add(name)
        elif piece != off:
            raise err(f"unknown flag {_show(piece.strip() or piece)} at flag column {col + 1}")
    return True, frozenset(names)


class _Err:
    def __init__(self, source: str, lineno: int) -> None:
        self.source = source
        self.lineno = lineno

    def __call__(self, reason: str) -> PtdumpParseError:
        return PtdumpParseError(self.source, self.lineno, reason)


def _decode(data: str | bytes, source: str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        raise PtdumpParseError(source, lineno, f"binary data (byte {data[exc.start]:#04x} is not text)") from None


def parse_ptdump(data: str | bytes, source: str = "<input>", *, ordered: bool = True) -> list[Record]:
    """Records of a ptdump text, in order. Accepts either dialect, dmesg timestamp prefixes
    (``[    0.007740] ``) and blank lines; anything else malformed raises `PtdumpParseError`, as
    does a range line below the previous one's end (duplicated, overlapping or reordered) unless
    `ordered` is False (lines gathered from several dumps, e.g. a grep over several files)."""
    text = _decode(data, source)
    records: list[Record] = []
    section: str | None = None
    prev: RangeLine | None = None
    for lineno, raw_line in enumerate(text.split("\n"), start=1):
        err = _Err(source, lineno)
        line = raw_line.removesuffix("\r")
        bad = _BAD_CHARS.search(line)
        if bad:
            raise err(f"binary data (character {ord(bad.group()):#04x} at column {bad.start() + 1})")
        m = _DMESG_PREFIX.match(line)
        if m:
            line = line[m.end() :]
        if not line.strip():
            continue
        if line.startswith("0x"):
            rec = _parse_range(line, section, err)
            if ordered and prev is not None and rec.start < prev.end:
                # Linux walks in address order and prints each address once (§6.3): a range below
                # the previous line's end is a duplicated, overlapping or reordered line.
                how = "repeats or overlaps" if rec.start >= prev.start else "goes backwards from"
                raise err(
                    f"range 0x{rec.start:016x}-0x{rec.end & MASK64:016x} {how} line {prev.lineno} "
                    f"(ends 0x{prev.end & MASK64:016x}): a dump's ranges only ascend"
                )
            records.append(rec)
            prev = rec
        elif line.startswith("---["):
            mm = _MARKER.fullmatch(line)
            if not mm:
                raise err(f"malformed marker line {_show(line, 40)}")
            section = mm.group(1)
            records.append(MarkerLine(section, lineno))
        elif line.startswith("..."):
            ms = _SKIP.fullmatch(line)
            if not ms:
                raise err(f"malformed 'entries skipped' line {_show(line, 40)}")
            records.append(SkipLine(int(ms.group(1)), lineno))
        else:
            raise err(f"not a ptdump line: {_show(line, 40)}")
    if not records:
        raise PtdumpParseError(source, 1, "empty input: no ptdump lines")
    return records


def parse_ptdump_file(path: str | Path) -> list[Record]:
    """`parse_ptdump` of a file read through `kaiser.inputs` (regular files only, bounded), with the
    file name in error messages."""
    return parse_ptdump(read_bytes(path, "ptdump"), str(path))


def dump_gaps(records: Sequence[Record]) -> list[tuple[int, int, int]]:
    """Address ranges a whole dump would print but these records do not, as (start, end, line of
    the record after the gap; 0 at the end). A whole dump covers the address space from 0 to the
    wrap at 2**64 without a hole (empty entries are printed too, §6.3), except right after a
    ``... N entries skipped ...`` line that more lines follow; an excerpt (grep, head, a mail
    quote) has gaps."""
    out: list[tuple[int, int, int]] = []
    cursor, skipped = 0, False
    for rec in records:
        if isinstance(rec, SkipLine):
            skipped = True
        elif isinstance(rec, RangeLine):
            if rec.start > cursor and not skipped:
                out.append((cursor, rec.start, rec.lineno))
            cursor, skipped = max(cursor, rec.end), False
    if cursor < TOP:  # Linux prints skipped-line counts only on the way into the next marker (§6.3)
        out.append((cursor, TOP, 0))
    return out


def render_records(records: Sequence[Record]) -> str:
    """Text of records, one line each; `render_records(parse_ptdump(t)) == t` for any text the
    writer produced."""
    return "".join(rec.render() + "\n" for rec in records)


def range_lines(records: Sequence[Record]) -> list[RangeLine]:
    """Only the range lines."""
    return [rec for rec in records if isinstance(rec, RangeLine)]
