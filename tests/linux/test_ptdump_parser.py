"""The ptdump reader: round trip (hypothesis), and one-line, line-numbered errors for every kind of
malformed input."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaiser.inputs import InputError
from kaiser.linux.layout import make_layout
from kaiser.linux.ptdump import ptdump
from kaiser.linux.ptdump_parse import (
    MarkerLine,
    PtdumpParseError,
    RangeLine,
    SkipLine,
    dump_gaps,
    parse_ptdump,
    parse_ptdump_file,
    range_lines,
    render_records,
)
from kaiser.x86.bits import PTE
from kaiser.x86.geometry import FIVE_LEVEL, FOUR_LEVEL, PagingMode
from kaiser.x86.pagetable import PageTable, PagingError
from kaiser.x86.physmem import PhysicalMemory

GOOD = "0xfffffe0000002000-0xfffffe0000003000           4K     RW                 GLB NX pte"

# ---- round trip ----------------------------------------------------------------------------

# Places where leaves land: user space, LDT, direct map, vmalloc, CEA, ESPfix (to hit its line
# cap), kernel image, modules, fixmap/vsyscall.
BASES_4 = (0x0, 0x7FFFFFE00000, 0xFFFF880000000000, 0xFFFF888000000000, 0xFFFFC90000000000,
           0xFFFFFE0000000000, 0xFFFFFF0000000000, 0xFFFFFFFF80000000, 0xFFFFFFFFC0000000,
           0xFFFFFFFFFF400000)  # fmt: skip
BASES_5 = (0x0, 0xFF10000000000000, 0xFF11000000000000, 0xFFA0000000000000, *BASES_4[5:])
FLAG_BITS = (PTE.RW, PTE.US, PTE.PWT, PTE.PCD, PTE.G, PTE.NX, PTE.A, PTE.D)

leaf = st.tuples(
    st.integers(0, len(BASES_5) - 1),  # base
    st.integers(0, 1023),  # offset in units of the page size
    st.sampled_from((0x1000, 0x1000, 0x1000, 0x200000, 1 << 30)),
    st.integers(1, 24),  # pages
    st.lists(st.sampled_from(FLAG_BITS), max_size=5),
)


def build(mode: PagingMode, leaves: list[tuple[int, int, int, int, list[PTE]]]) -> PageTable:
    t = PageTable(PhysicalMemory(1 << 40, maxphyaddr=46), mode)
    bases = BASES_5 if mode is FIVE_LEVEL else BASES_4
    for base_i, offset, size, pages, bits in leaves:
        base = bases[base_i % len(bases)]
        va = base + offset * size
        if size == 1 << 30 and base in (0xFFFFFFFFC0000000, 0xFFFFFFFFFF400000):
            continue  # would run off the top of the address space
        flags = 0
        for bit in bits:
            flags |= int(bit)
        with contextlib.suppress(PagingError, ValueError):  # overlaps or leaves its half: skip
            t.map(va, 0, size * pages, flags, page_size=size)
    return t


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    la57=st.booleans(),
    leaves=st.lists(leaf, max_size=12),
    dialect=st.sampled_from(("generic", "legacy")),
    seed=st.integers(0, 2**32),
)
def test_dump_parse_render_round_trip(la57: bool, leaves: list, dialect: str, seed: int) -> None:
    mode = FIVE_LEVEL if la57 else FOUR_LEVEL
    table = build(mode, leaves)
    markers = make_layout(la57=la57, kaslr=True, seed=seed).markers
    text = ptdump(table, markers, dialect=dialect)
    records = parse_ptdump(text, "roundtrip")
    assert render_records(records) == text
    # The lines tile the address space, except where the ESPfix cap hides some.
    ranges = range_lines(records)
    capped = any(isinstance(r, SkipLine) for r in records)
    if not capped:
        for a, b in zip(ranges, ranges[1:], strict=False):
            assert a.end == b.start
    # Every present leaf is inside a present line with its flags (ESPfix lines may be hidden).
    for lf in table.leaves():
        line = next((r for r in ranges if r.start <= lf.va < r.end), None)
        if line is None:
            espfix = next(m for m in markers if m.name == "ESPfix Area")
            assert capped and espfix.start <= lf.va
            continue
        assert line.present
        assert ("RW" in line.flags) == bool(lf.entry & PTE.RW)
        assert ("USR" in line.flags) == bool(lf.entry & PTE.US)
        assert ("GLB" in line.flags) == bool(lf.entry & PTE.G)
        assert ("NX" in line.flags) == bool(lf.entry & PTE.NX)


def test_round_trip_keeps_sections_and_line_numbers() -> None:
    t = PageTable(PhysicalMemory(1 << 36, maxphyaddr=46))
    t.map(0xFFFFFE0000000000, 0, 0x1000, PTE.G | PTE.NX)
    recs = parse_ptdump(ptdump(t), "t")
    cea = next(r for r in range_lines(recs) if r.start == 0xFFFFFE0000000000)
    assert cea.section == "CPU entry Area"
    assert cea.flags == frozenset({"GLB", "NX"}) and cea.present
    assert cea.lineno == recs.index(cea) + 1


def test_dmesg_prefixes_and_blank_lines_are_accepted() -> None:
    text = f"[    0.008233] ---[ CPU entry Area ]---\n\n[    0.008234] {GOOD}\n"
    recs = parse_ptdump(text)
    assert isinstance(recs[1], RangeLine) and recs[1].lineno == 3


def test_wide_sizes_and_wrapped_end() -> None:
    line = "0x0000008000000000-0xffff880000000000   17179745792G                               pgd"
    (rec,) = parse_ptdump(line)
    assert isinstance(rec, RangeLine) and rec.size == 0xFFFF878000000000
    (rec,) = parse_ptdump("0xffffffffff800000-0x0000000000000000           8M                               pmd")
    assert isinstance(rec, RangeLine) and rec.end == 1 << 64


# ---- malformed input -----------------------------------------------------------------------


def _error(data: str | bytes, source: str = "dump.txt") -> PtdumpParseError:
    with pytest.raises(PtdumpParseError) as info:
        parse_ptdump(data, source)
    message = str(info.value)
    assert "\n" not in message
    return info.value


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        (GOOD[:50], "truncated"),  # cut in the size/flag field
        (GOOD[:30], "truncated"),  # cut in the end address
        (GOOD[:-3], "truncated"),  # no level name
        (GOOD.replace("0xfffffe0000002000-", "0xfffffe00000g2000-"), "bad hex start address"),
        (GOOD.replace("-0xfffffe0000003000", "-0xFFFFFE0000003000"), "bad hex end address"),
        (GOOD.replace("-0xfffffe0000003000", "+0xfffffe0000003000"), "expected '-0x'"),
        (GOOD.replace("GLB", "GBL"), "unknown flag 'GBL'"),
        (GOOD.replace("RW ", "rw "), "unknown flag 'rw'"),
        (GOOD.replace("NX pte", "NX pgx"), "unknown level"),
        (GOOD.replace("RW                 GLB", "RW         PSE     GLB"), "PSE is never printed at pte"),
        (GOOD.replace("          4K", "          8K"), "size 8K does not match the range (expected 4K)"),
        (GOOD.replace("          4K", "       4096B"), "size 4096B does not match the range (expected 4K)"),
        (GOOD.replace("          4K", "          4Q"), "unknown size unit 'Q'"),
        (GOOD.replace("          4K", "         4K"), "not 9 columns wide"),
        (GOOD.replace("0xfffffe0000003000", "0xfffffe0000002800"), "not 4 KiB aligned"),
        (GOOD.replace("0xfffffe0000003000", "0xfffffe0000001000"), "is not above the start"),
        ("---[ CPU entry Area ]--", "malformed marker line"),
        ("... many entries skipped ...", "malformed 'entries skipped' line"),
        ("x86/mm: Checked W+X mappings: passed, no W+X pages found.", "not a ptdump line"),
        (GOOD.replace("GLB", "G\x00B"), "binary data"),
    ],
)
def test_each_error_names_source_and_line(bad_line: str, reason: str) -> None:
    text = f"---[ CPU entry Area ]---\n{GOOD}\n{bad_line}\n{GOOD}\n"
    err = _error(text)
    assert err.source == "dump.txt" and err.line == 3
    assert str(err).startswith("dump.txt:3: ")
    assert reason in err.reason, err.reason


def test_binary_junk_bytes() -> None:
    err = _error(b"---[ User Space ]---\n" + GOOD.encode() + b"\n\xff\xfe\x00junk\n", "junk.bin")
    assert str(err).startswith("junk.bin:3: binary data")


def test_empty_inputs() -> None:
    assert str(_error("")) == "dump.txt:1: empty input: no ptdump lines"
    assert str(_error(b"")) == "dump.txt:1: empty input: no ptdump lines"
    assert _error("\n   \n\n").reason.startswith("empty input")


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "current_user"
    path.write_text(f"---[ User Space ]---\n{GOOD[:40]}\n")
    with pytest.raises(PtdumpParseError, match=r"current_user:2: truncated range line"):
        parse_ptdump_file(path)
    with pytest.raises(InputError, match=r"missing: ptdump: no such file"):
        parse_ptdump_file(tmp_path / "missing")
    with pytest.raises(InputError, match=r": ptdump: is a directory"):
        parse_ptdump_file(tmp_path)
    path.write_text(f"{GOOD}\n")
    assert len(parse_ptdump_file(path)) == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_fuzz_never_raises_anything_but_parse_errors(data: bytes | str) -> None:
    try:
        records = parse_ptdump(data, "fuzz")
    except PtdumpParseError as exc:
        assert str(exc).startswith("fuzz:") and "\n" not in str(exc)
    else:
        assert records


# ---- order and wholeness -------------------------------------------------------------------------
REAL = sorted((Path(__file__).parent / "data" / "real").glob("*/*.txt"))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(REAL), st.data())
def test_duplicated_or_reordered_range_lines_are_errors_at_the_later_line(path: Path, data: st.DataObject) -> None:
    lines = path.read_text().split("\n")
    ranges = [i for i, line in enumerate(lines) if line.startswith("0x")]
    i, j = sorted(data.draw(st.lists(st.sampled_from(ranges), min_size=2, max_size=2, unique=True)))
    swapped = list(lines)
    swapped[i], swapped[j] = lines[j], lines[i]
    err = _error("\n".join(swapped), "swapped")
    # 0-based line i now holds line j; the next range line starts below it
    after_i = ranges[ranges.index(i) + 1]
    assert err.line == after_i + 1 and "goes backwards" in err.reason
    duplicated = lines[: i + 1] + [lines[i]] + lines[i + 1 :]
    err = _error("\n".join(duplicated), "dup")
    assert err.line == i + 2 and "repeats or overlaps" in err.reason


def test_overlapping_range_is_an_error() -> None:
    first = "0xfffffe0000000000-0xfffffe0000002000           8K     ro                 GLB NX pte"
    inside = "0xfffffe0000001000-0xfffffe0000003000           8K     ro                 GLB NX pte"
    assert "overlaps line 1" in _error(f"{first}\n{inside}\n").reason


@pytest.mark.parametrize("path", REAL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_dumps_are_whole_and_lose_it_with_any_line(path: Path) -> None:
    records = [r for r in parse_ptdump(path.read_text()) if not isinstance(r, MarkerLine)]
    assert dump_gaps(records) == []
    for i, rec in enumerate(records):
        # a line next to "... N entries skipped ..." can go unnoticed: the skipped lines carry no addresses
        beside_skip = any(isinstance(r, SkipLine) for r in records[max(i - 1, 0) : i + 2])
        if not isinstance(rec, RangeLine) or beside_skip:
            continue
        assert [g[:2] for g in dump_gaps(records[:i] + records[i + 1 :])] == [(rec.start, rec.end)], rec


@pytest.mark.parametrize("variant", ["linux", "kaiser-rfc", "two-pgd"])
@pytest.mark.parametrize("la57", [False, True])
@pytest.mark.parametrize("dialect", ["generic", "legacy"])
def test_model_dumps_are_whole(variant: str, la57: bool, dialect: str) -> None:
    from kaiser.api.process import boot_process
    from kaiser.api.tables import dump_text

    kernel, task = boot_process(variant, pcid=True, la57=la57, kaslr=True, seed=3)
    for table in ("kernel", "current_kernel", "current_user"):
        assert dump_gaps(parse_ptdump(dump_text(kernel, task, table, dialect=dialect))) == [], table
