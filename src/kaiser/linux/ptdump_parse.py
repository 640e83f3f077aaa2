"""Linux's page-table dump text (`/sys/kernel/debug/page_tables/*`) read back into records.

`parse_ptdump()` turns the text `kaiser.linux.ptdump` writes, or a real machine's (either dialect,
with or without dmesg timestamps), into typed records (`RangeLine`, `MarkerLine`, `SkipLine`);
any malformed line raises `PtdumpParseError` with a one-line ``source:line: reason`` message.
`render_records()` prints records back in the writer's format (facts/linux-kpti.md §6.2), so
`render_records(parse_ptdump(t)) == t` for any text the writer produced.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from kaiser.inputs import InputError, read_bytes
from kaiser.linux.layout import TOP
from kaiser.linux.pgtable_types import LEVEL_NAMES
from kaiser.linux.ptdump import (
    BLANK_FLAGS,
    FLAG_FIELD_WIDTH,
    UNITS,
    marker_text,
    range_text,
    size_field,
    size_parts,
    skipped_text,
)
from kaiser.x86.bits import MASK64
from kaiser.x86.hexrepr import hex_fields


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
            field_ = BLANK_FLAGS
        return range_text(self.start, self.end, size_field(self.start, self.end) + field_ + self.level)


@dataclass(frozen=True)
class MarkerLine:
    """A ``---[ name ]---`` line: the range lines after it are in that section."""

    name: str
    lineno: int = field(default=0, compare=False)

    def render(self) -> str:
        return marker_text(self.name)


@dataclass(frozen=True)
class SkipLine:
    """A ``... N entries skipped ...`` line: Linux's cap on a marker's lines (ESPfix, §6.3)."""

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
    if text == BLANK_FLAGS:
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
