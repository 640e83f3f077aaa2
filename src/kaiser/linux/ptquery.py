"""Questions asked of page-table dumps, as gdb-pt-dump and pwndbg users ask them.

* `RightsFilter` / `select_ranges`: the range lines of a parsed ptdump (`kaiser.linux.ptdump`)
  that have given rights, lie in a named region (a ``---[ marker ]---`` section), overlap an
  address range or contain an address.
* `find_aliases`: physical memory mapped at more than one virtual address of one tree (the
  cpu_entry_area's read-only GDT and the TSS that alias per-CPU data, the IDT's read-only alias
  made by idt_map_in_cea(), ESPfix's 65,536 views of its stack pages, the direct map's alias of
  every kernel frame), from the tree itself -- a ptdump does not print physical addresses.
* `diff_dumps`: region by region, what appeared, vanished, changed rights or changed page size
  between two ptdumps (ours or a real machine's).

The rights are the flags a ptdump prints on a line (arch/x86/mm/dump_pagetables.c, facts
§6.2): ``w`` is RW, ``x`` is the absence of NX, ``u`` is USR, ``g`` is GLB.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from kaiser.linux.layout import TOP
from kaiser.linux.ptdump import size_parts
from kaiser.linux.ptdump_parse import RangeLine, Record, SkipLine
from kaiser.x86.pagetable import PageTable

RIGHT_FLAGS: Final = {"w": "RW", "u": "USR", "g": "GLB"}  # x is "not NX"
_RIGHTS_TERM = re.compile(r"([+-]?)([wxug])")


class QueryError(ValueError):
    """A malformed filter (rights, range or region): `str()` is one line naming the option."""


def _hex(value: int) -> str:
    return f"0x{value & (TOP - 1):016x}"


def size_text(size: int) -> str:
    """Linux's size reduction as one token (``4K``, ``2M``, ``131072K``)."""
    if not size:
        return "0"
    num, unit = size_parts(size)
    return f"{num}{unit}"


@dataclass(frozen=True)
class RightsFilter:
    """Rights a line must have (`need`) and must not have (`refuse`), letters of ``wxug``."""

    need: frozenset[str] = frozenset()
    refuse: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, spec: str) -> RightsFilter:
        """``w,x`` or ``+w+x``: writable and executable; ``-g``: not global; ``u,-x``: user and
        NX. Letters are w, x, u, g; a term without a sign means ``+``; commas and spaces are
        optional separators. `QueryError` for anything else."""
        text = spec.replace(",", "").replace(" ", "")
        if not text:
            raise QueryError(f"--rights {spec!r}: empty (use letters w, x, u, g, each optionally + or -)")
        need: set[str] = set()
        refuse: set[str] = set()
        pos = 0
        while pos < len(text):
            m = _RIGHTS_TERM.match(text, pos)
            if not m:
                raise QueryError(
                    f"--rights {spec!r}: {text[pos:]!r} is not a right (use w, x, u, g, each optionally + or -)"
                )
            (refuse if m.group(1) == "-" else need).add(m.group(2))
            pos = m.end()
        both = need & refuse
        if both:
            raise QueryError(f"--rights {spec!r}: {''.join(sorted(both))} both required and refused")
        return cls(frozenset(need), frozenset(refuse))

    def matches(self, line: RangeLine) -> bool:
        """A present line with every needed right and none of the refused ones."""
        if not line.present:
            return False
        have = {letter for letter, flag in RIGHT_FLAGS.items() if flag in line.flags}
        if "NX" not in line.flags:
            have.add("x")
        return self.need <= have and not self.refuse & have

    def describe(self) -> str:
        return "".join([*(f"+{r}" for r in sorted(self.need)), *(f"-{r}" for r in sorted(self.refuse))])


def parse_range(spec: str) -> tuple[int, int]:
    """``LO-HI`` (hex or decimal, HI exclusive) as (lo, hi); `QueryError` when malformed or empty."""
    lo_text, sep, hi_text = spec.partition("-")
    try:
        if not sep:
            raise ValueError
        lo, hi = int(lo_text.replace("_", ""), 0), int(hi_text.replace("_", ""), 0)
    except ValueError:
        raise QueryError(f"--range {spec!r} is not LO-HI (two numbers, decimal or 0x-hex)") from None
    if not 0 <= lo < hi <= TOP:
        raise QueryError(f"--range {spec!r}: need 0 <= LO < HI <= 2**64")
    return lo, hi


def sections(records: Iterable[Record]) -> list[str]:
    """The marker names of a dump, in order, once each."""
    seen: dict[str, None] = {}
    for rec in records:
        if isinstance(rec, RangeLine) and rec.section is not None:
            seen.setdefault(rec.section)
    return list(seen)


def select_ranges(
    records: Sequence[Record],
    *,
    rights: RightsFilter | None = None,
    region: str | None = None,
    span: tuple[int, int] | None = None,
    has: int | None = None,
) -> list[RangeLine]:
    """The range lines passing every given filter. `region` names a marker section
    (case-insensitive); `span` keeps lines overlapping [lo, hi); `has` the line containing the
    address. `QueryError` for a region the dump does not have."""
    lines = [rec for rec in records if isinstance(rec, RangeLine)]
    if region is not None:
        names = {name.lower(): name for name in sections(lines)}
        if region.lower() not in names:
            raise QueryError(f"--region {region!r} is not a region of this dump; regions: {', '.join(names.values())}")
        wanted = names[region.lower()]
        lines = [ln for ln in lines if ln.section == wanted]
    if rights is not None:
        lines = [ln for ln in lines if rights.matches(ln)]
    if span is not None:
        lo, hi = span
        lines = [ln for ln in lines if ln.start < hi and ln.end > lo]
    if has is not None:
        lines = [ln for ln in lines if ln.start <= has < ln.end]
    return lines


# ---------------------------------------------------------------------------------------------
# aliases


@dataclass(frozen=True)
class Alias:
    """Physical memory [pa, pa + size) mapped at `count` virtual addresses; `vas` holds the
    first of them in address order (all of them when `count` is small)."""

    pa: int
    size: int
    count: int
    vas: tuple[int, ...]

    def describe(self) -> str:
        shown = ", ".join(_hex(va) for va in self.vas)
        more = f", ... ({self.count - len(self.vas)} more)" if self.count > len(self.vas) else ""
        return f"physical {_hex(self.pa)}+{size_text(self.size)} at {self.count} virtual addresses: {shown}{more}"

    def __repr__(self) -> str:
        return f"Alias(pa={self.pa:#x}, size={self.size:#x}, count={self.count}, vas=({', '.join(map(hex, self.vas))}))"


def find_aliases(pt: PageTable, *, keep: int = 4) -> list[Alias]:
    """Every piece of physical memory that `pt` maps at more than one virtual address, in
    physical order; adjacent pieces whose virtual addresses all continue are merged. `keep`
    bounds the virtual addresses listed per piece (the count is exact)."""
    leaves = sorted(((leaf.pa, leaf.pa + leaf.size, leaf.va) for leaf in pt.leaves()), key=lambda t: t[0])
    bounds = sorted({p for lo, hi, _ in leaves for p in (lo, hi)})
    # sweep: at each physical boundary, the leaves covering [b, next b)
    active: list[tuple[int, int, int]] = []
    nxt = 0
    raw: list[tuple[int, int, list[int]]] = []
    for i, b in enumerate(bounds[:-1]):
        end = bounds[i + 1]
        active = [t for t in active if t[1] > b]
        while nxt < len(leaves) and leaves[nxt][0] <= b:
            if leaves[nxt][1] > b:
                active.append(leaves[nxt])
            nxt += 1
        if len(active) > 1:
            raw.append((b, end, sorted(va + (b - lo) for lo, _, va in active)))
    merged: list[tuple[int, int, list[int]]] = []
    for lo, hi, vas in raw:
        if merged:
            plo, phi, pvas = merged[-1]
            if phi == lo and len(pvas) == len(vas) and all(p + (lo - plo) == v for p, v in zip(pvas, vas, strict=True)):
                merged[-1] = (plo, hi, pvas)
                continue
        merged.append((lo, hi, vas))
    return [Alias(lo, hi - lo, len(vas), tuple(vas[:keep])) for lo, hi, vas in merged]


# ---------------------------------------------------------------------------------------------
# diff

ChangeKind = Literal["appeared", "vanished", "rights", "page size"]


@dataclass(frozen=True)
class Change:
    """[start, end) in `region`: `kind` says what differs; `before`/`after` are the printed
    flags and level on each side ("" where nothing is mapped)."""

    kind: ChangeKind
    region: str
    start: int
    end: int
    before: str
    after: str

    @property
    def size(self) -> int:
        return self.end - self.start

    def describe(self) -> str:
        what = {"appeared": f"appeared: {self.after}", "vanished": f"vanished: {self.before}"}.get(
            self.kind, f"{self.kind}: {self.before} -> {self.after}"
        )
        return f"{self.region}: {_hex(self.start)}-{_hex(self.end)} ({size_text(self.size)}) {what}"

    def __repr__(self) -> str:
        return (
            f"Change({self.kind!r}, {self.region!r}, start={self.start:#x}, end={self.end:#x}, "
            f"before={self.before!r}, after={self.after!r})"
        )


@dataclass(frozen=True)
class DumpDiff:
    """`diff_dumps`' result: the changes in address order and the ``... N entries skipped``
    counts of each side (lines neither dump printed are not compared)."""

    a: str
    b: str
    changes: tuple[Change, ...]
    skipped: tuple[int, int] = (0, 0)
    regions: tuple[str, ...] = field(default=())

    @property
    def equal(self) -> bool:
        return not self.changes

    @property
    def exit_status(self) -> int:
        """0 when the dumps map the same ranges with the same rights, 1 when they differ."""
        return 0 if self.equal else 1

    def by_region(self) -> dict[str, list[Change]]:
        out: dict[str, list[Change]] = {}
        for change in self.changes:
            out.setdefault(change.region, []).append(change)
        return out

    def describe(self) -> str:
        if self.equal:
            return f"{self.a} and {self.b}: the same mappings"
        counts: dict[str, int] = {}
        for change in self.changes:
            counts[change.kind] = counts.get(change.kind, 0) + 1
        parts = ", ".join(f"{n} {kind}" for kind, n in counts.items())
        return f"{self.a} -> {self.b}: {len(self.changes)} change(s) in {len(self.by_region())} region(s) ({parts})"


def line_rights(line: RangeLine) -> str:
    """A present line's flags as printed (``USR RW NX``, ``ro``/``x`` spelled out) and level."""
    names = ["USR" if "USR" in line.flags else "", "RW" if "RW" in line.flags else "ro"]
    names += [n for n in ("PWT", "PCD", "PSE", "PAT", "GLB") if n in line.flags]
    names.append("NX" if "NX" in line.flags else "x")
    return " ".join(n for n in names if n) + f" {line.level}"


def _present(records: Sequence[Record]) -> list[RangeLine]:
    return [r for r in records if isinstance(r, RangeLine) and r.present]


def diff_dumps(a: Sequence[Record], b: Sequence[Record], *, a_name: str = "A", b_name: str = "B") -> DumpDiff:
    """What changed from dump `a` to dump `b`: every address range mapped in only one of them
    (appeared in b / vanished from a), or in both with other flags (rights) or only another
    page level (page size). Pieces are merged while kind, flags and region stay the same; the
    region is the marker section of the side that maps the range (b's when both do)."""
    la, lb = _present(a), _present(b)
    cuts = sorted({p for ln in (*la, *lb) for p in (ln.start, ln.end)})
    ia = ib = 0
    changes: list[Change] = []
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        while ia < len(la) and la[ia].end <= lo:
            ia += 1
        while ib < len(lb) and lb[ib].end <= lo:
            ib += 1
        ra = la[ia] if ia < len(la) and la[ia].start <= lo else None
        rb = lb[ib] if ib < len(lb) and lb[ib].start <= lo else None
        if ra is None and rb is None:
            continue
        before, after = (line_rights(ra) if ra else ""), (line_rights(rb) if rb else "")
        kind: ChangeKind
        if ra is None:
            kind = "appeared"
        elif rb is None:
            kind = "vanished"
        elif ra.flags != rb.flags:
            kind = "rights"
        elif ra.level != rb.level:
            kind = "page size"
        else:
            continue
        side = rb if rb is not None else ra
        region = (side.section if side is not None else None) or "?"
        last = changes[-1] if changes else None
        if last and (last.kind, last.region, last.before, last.after, last.end) == (kind, region, before, after, lo):
            changes[-1] = Change(kind, region, last.start, hi, before, after)
        else:
            changes.append(Change(kind, region, lo, hi, before, after))
    skips = tuple(sum(r.count for r in recs if isinstance(r, SkipLine)) for recs in (a, b))
    order = list(dict.fromkeys([*sections(a), *sections(b)]))
    return DumpDiff(a_name, b_name, tuple(changes), (skips[0], skips[1]), tuple(order))
