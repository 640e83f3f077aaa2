"""The real dumps in data/ptdump-samples: every one parses, and tables built to match them print
them back byte for byte (facts/linux-kpti.md §6; samples README for provenance)."""

from __future__ import annotations

import re

import pytest
from ptdump_support import SAMPLES, build_from_records, sample_blocks

from kaiser.linux.layout import Marker
from kaiser.linux.ptdump import ptdump
from kaiser.linux.ptdump_parse import MarkerLine, RangeLine, SkipLine, parse_ptdump, range_lines, render_records

SAMPLE_FILES = sorted(SAMPLES.glob("0*.txt"))
_TS = re.compile(r"^\[\s*\d+\.\d+\] ")


def _strip_ts(lines: list[str]) -> list[str]:
    return [_TS.sub("", line) for line in lines]


def test_sample_files_are_present() -> None:
    assert [p.name[:2] for p in SAMPLE_FILES] == ["01", "02", "03"]


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name[:2])
def test_every_sample_block_parses_and_rerenders(path) -> None:  # type: ignore[no-untyped-def]
    blocks = sample_blocks(path)
    assert blocks
    for block in blocks:
        # sample 03 quotes a grep over several files, whose lines need not ascend
        records = parse_ptdump("\n".join(block.lines), path.name, ordered=not path.name.startswith("03"))
        assert len(records) == len(block.lines)
        # Re-rendering gives the same text (minus the dmesg timestamps the parser drops).
        assert render_records(records).splitlines() == _strip_ts(block.lines)


def test_sample02_records_are_typed() -> None:
    a, b = sample_blocks(SAMPLES / "02-fedora-4.18-pti-boot-ptdump-kernel-half.txt")
    recs = parse_ptdump("\n".join(a.lines), "sample02")
    assert recs[0] == MarkerLine("Kernel Space")
    first = recs[1]
    assert isinstance(first, RangeLine)
    assert (first.start, first.end, first.size, first.present, first.level) == (
        0xFFFF800000000000, 0xFFFF808000000000, 512 << 30, False, "pgd")  # fmt: skip
    assert first.section == "Kernel Space" and first.lineno == 2
    glb = [r for r in range_lines(recs) if "GLB" in r.flags]
    assert all(r.section in ("CPU entry Area", "LDT remap", "ESPfix Area") for r in glb)
    direct = next(r for r in range_lines(recs) if r.start == 0xFFFF8DC340000000)
    assert direct.flags == frozenset({"RW", "PSE", "NX"}) and direct.level == "pud" and direct.size == 1 << 30
    tail = range_lines(parse_ptdump("\n".join(b.lines)))
    assert tail[-1].end == 1 << 64  # printed as 0x0000000000000000: the wrapped end of the space
    vsyscall = next(r for r in tail if r.start == 0xFFFFFFFFFF600000)
    assert vsyscall.flags == frozenset({"USR", "NX"}) and vsyscall.section == "Fixmap Area"
    assert not any(isinstance(r, SkipLine) for r in recs)


# The 4.18 boot-time dump of sample 02 ran before pt_dump_init() filled the runtime marker
# addresses, so "Low Kernel Mapping", "vmalloc() Area", "Vmemmap" and "LDT remap" still start
# at 0 (dump_pagetables.c; facts §1.5, §6.3). With one marker per break that gives exactly the
# sample's odd marker placement. 4.18 order: LDT after "CPU entry Area" (4-level, §6.4).
BOOT_MARKERS_418 = (
    Marker("User Space", 0),
    Marker("Kernel Space", 1 << 63),
    Marker("Low Kernel Mapping", 0),
    Marker("vmalloc() Area", 0),
    Marker("Vmemmap", 0),
    Marker("CPU entry Area", 0xFFFFFE0000000000),
    Marker("LDT remap", 0),
    Marker("ESPfix Area", 0xFFFFFF0000000000, 16),
    Marker("EFI Runtime Services", 0xFFFFFFEF00000000),
    Marker("High Kernel Mapping", 0xFFFFFFFF80000000),
    Marker("Modules", 0xFFFFFFFFC0000000),  # KASLR kernel: 1 GiB image window
    Marker("End Modules", 0xFFFFFFFFFF000000),
    Marker("Fixmap Area", 0xFFFFFFFFFF576000),
)


def test_sample02_is_reproduced_byte_for_byte_by_the_legacy_writer() -> None:
    a, b = sample_blocks(SAMPLES / "02-fedora-4.18-pti-boot-ptdump-kernel-half.txt")
    recs = parse_ptdump("\n".join(a.lines + b.lines), "sample02")
    table = build_from_records(recs)
    out = ptdump(table, BOOT_MARKERS_418, dialect="legacy").splitlines()
    want_a, want_b = _strip_ts(a.lines), _strip_ts(b.lines)
    i = out.index("---[ Kernel Space ]---")
    assert out[i : i + len(want_a)] == want_a
    j = next(k for k, line in enumerate(out) if line.startswith("0xfffffffeff000000-"))
    assert out[j:] == want_b


def test_sample02_guard_hole_line_needs_the_legacy_dialect() -> None:
    """Post-5.6 kernels don't walk the guard hole: the first kernel line starts at its end."""
    a, _ = sample_blocks(SAMPLES / "02-fedora-4.18-pti-boot-ptdump-kernel-half.txt")
    table = build_from_records(parse_ptdump("\n".join(a.lines)))
    out = ptdump(table, BOOT_MARKERS_418, dialect="generic").splitlines()
    i = out.index("---[ Kernel Space ]---")
    assert out[i + 1].startswith("0xffff880000000000-0xffff888000000000")
    assert not any(line.startswith("0xffff800000000000-") for line in out)


@pytest.mark.parametrize("dialect", ["generic", "legacy"])
def test_sample01_glb_lines_are_reproduced(dialect: str) -> None:
    """Sample 01 is `grep GLB current_user`: the cpu_entry_area of two CPUs and the entry-text PMD."""
    (block,) = sample_blocks(SAMPLES / "01-hansen-2018-current_user-GLB.txt")
    table = build_from_records(parse_ptdump("\n".join(block.lines)))
    out = ptdump(table, dialect=dialect)
    assert [line for line in out.splitlines() if "GLB" in line] == block.lines


@pytest.mark.parametrize("dialect", ["generic", "legacy"])
def test_sample03_kernel_text_lines_are_reproduced(dialect: str) -> None:
    """Sample 03: 14352K of 4K `GLB x pte` text vs the same text as 2M `PSE GLB x pmd` leaves,
    and a user 8M huge-page text mapping."""
    (block,) = sample_blocks(SAMPLES / "03-songliu-2019-pti-clone-pgtable-kernel-text.txt")
    lines = list(dict.fromkeys(block.lines))  # the three debugfs files print the same line
    for line in lines:
        table = build_from_records(parse_ptdump(line))
        out = ptdump(table, dialect=dialect)
        assert line in out.splitlines()
    assert "0x0000000000600000-0x0000000000e00000           8M USR ro         PSE         x  pmd" in lines
