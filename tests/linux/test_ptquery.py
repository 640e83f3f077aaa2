"""linux/ptquery.py: rights filters, aliases and diffs of ptdumps, against brute force.

* aliases: random 4 KiB mappings of a small frame pool into a real `PageTable`, against a
  page-by-page inventory of the same mappings, and every listed alias translated by the walker;
* diffs: random synthetic dumps (rendered by `RangeLine.render`, parsed back), against a per-page
  comparison of the two dumps; and the real 6.1 dumps;
* rights: every spelling of a filter against the flags it names.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser.linux.ptdump_parse import RangeLine, parse_ptdump, parse_ptdump_file, render_records
from kaiser.linux.ptquery import (
    QueryError,
    RightsFilter,
    diff_dumps,
    find_aliases,
    line_rights,
    parse_range,
    select_ranges,
)
from kaiser.x86.bits import CR4, PTE
from kaiser.x86.cpu import CpuState
from kaiser.x86.geometry import FOUR_LEVEL
from kaiser.x86.pagetable import PageTable
from kaiser.x86.physmem import FrameKind, PhysicalMemory
from kaiser.x86.walker import Translation, translate

PAGE = 4096
REAL = Path(__file__).parent / "data" / "real"

# ---------------------------------------------------------------------------------------------
# aliases


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 1023), st.integers(0, 7)),  # (top slot, page, frame)
        min_size=1,
        max_size=24,
        unique_by=lambda t: (t[0], t[1]),
    )
)
def test_aliases_equal_a_page_by_page_inventory(maps: list[tuple[int, int, int]]) -> None:
    mem = PhysicalMemory(64 << 20)
    pool = mem.alloc(FrameKind.DATA, "pool", count=8)
    pt = PageTable(mem, FOUR_LEVEL, tag="t")
    where: dict[int, list[int]] = {}
    for slot, page, frame in maps:
        va = (slot << 39) | (page * PAGE)
        pt.map(va, pool + frame * PAGE, PAGE, int(PTE.RW))
        where.setdefault(pool + frame * PAGE, []).append(va)
    want = {pa: sorted(vas) for pa, vas in where.items() if len(vas) > 1}
    got: dict[int, list[int]] = {}
    for alias in find_aliases(pt, keep=10_000):
        assert alias.count == len(alias.vas) >= 2 and alias.size % PAGE == 0
        for off in range(0, alias.size, PAGE):
            got[alias.pa + off] = sorted(va + off for va in alias.vas)
    assert got == want


def test_every_alias_of_the_booted_kernel_translates_to_its_frame() -> None:
    """The walker agrees: each listed virtual address of each alias maps that physical memory;
    the entry area's views (IDT's read-only alias of the kernel image, GDT/TSS of per-CPU data
    in the direct map) are among them."""
    from kaiser.api.process import boot_process

    kernel, task = boot_process("linux", pcid=False, la57=False, kaslr=True, seed=5)
    pt = task.mm.pgd.kernel_pt
    state = CpuState(cr3=pt.cr3(), cr4=int(CR4.PAE | CR4.PGE), cpl=0)
    found = find_aliases(pt)
    for alias in found:
        for va in alias.vas:
            for off in (0, alias.size - 1):
                t = translate(mem := kernel.mem, state, va + off, set_ad=False)
                assert isinstance(t, Translation) and t.pa == alias.pa + off, (alias, hex(va), mem)
    lay = kernel.layout
    cea, direct, image = lay.cpu_entry_area_base, lay.page_offset_base, lay.kernel_base
    with_cea = [a for a in found if any(cea <= va < cea + (1 << 39) for va in a.vas)]
    assert any(any(image <= va for va in a.vas) for a in with_cea), "no CEA view of the kernel image (IDT)"
    in_direct_map = [a for a in with_cea if any(direct <= va < direct + lay.direct_map_size for va in a.vas)]
    assert in_direct_map, "no CEA view of per-CPU data"


# ---------------------------------------------------------------------------------------------
# diffs

FLAG_SETS = [
    frozenset({"RW", "NX"}),
    frozenset({"NX"}),
    frozenset({"GLB", "NX"}),
    frozenset({"USR", "RW", "NX"}),
    frozenset({"PSE", "GLB"}),
]


@st.composite
def dumps(draw: st.DrawFn) -> list[RangeLine]:
    """A synthetic dump over a 64-page window: runs of present or empty lines, two sections."""
    lines: list[RangeLine] = []
    addr = 0xFFFF888000000000
    for _ in range(draw(st.integers(1, 10))):
        size = draw(st.integers(1, 6)) * PAGE
        present = draw(st.booleans())
        flags = draw(st.sampled_from(FLAG_SETS)) if present else frozenset()
        level = draw(st.sampled_from(["pte", "pmd"])) if present else "pte"
        if "PSE" in flags:
            level = "pmd"
        section = "Low Kernel Mapping" if addr < 0xFFFF888000020000 else "vmalloc() Area"
        lines.append(RangeLine(addr, addr + size, size, present, flags, level, section))
        addr += size
    return lines


def _at(lines: list[RangeLine], va: int) -> RangeLine | None:
    for ln in lines:
        if ln.present and ln.start <= va < ln.end:
            return ln
    return None


@settings(max_examples=150, deadline=None)
@given(dumps(), dumps())
def test_diff_equals_a_page_by_page_comparison(a: list[RangeLine], b: list[RangeLine]) -> None:
    ra = parse_ptdump(render_records(a))  # through the text, as a file would be
    rb = parse_ptdump(render_records(b))
    diff = diff_dumps(ra, rb)
    starts = [c.start for c in diff.changes]
    assert starts == sorted(starts)
    for prev, nxt in zip(diff.changes, diff.changes[1:], strict=False):
        assert prev.end <= nxt.start
        assert (prev.end, prev.kind, prev.before, prev.after, prev.region) != (
            nxt.start,
            nxt.kind,
            nxt.before,
            nxt.after,
            nxt.region,
        ), "adjacent equal changes were not merged"
    end = max(ln.end for ln in (*a, *b))
    for va in range(0xFFFF888000000000, end, PAGE):
        la, lb = _at(a, va), _at(b, va)
        if la is None and lb is None:
            want = None
        elif la is None:
            want = "appeared"
        elif lb is None:
            want = "vanished"
        elif la.flags != lb.flags:
            want = "rights"
        elif la.level != lb.level:
            want = "page size"
        else:
            want = None
        i = bisect.bisect_right(starts, va) - 1
        change = diff.changes[i] if i >= 0 and diff.changes[i].end > va else None
        assert (change.kind if change else None) == want, hex(va)
        if change:
            assert change.before == (line_rights(la) if la else "")
            assert change.after == (line_rights(lb) if lb else "")
    assert diff.exit_status == (1 if diff.changes else 0)
    assert diff_dumps(ra, ra).equal


@pytest.mark.parametrize("name", sorted(p.name for p in REAL.iterdir() if (p / "current_user-ldt.txt").exists()))
def test_real_dumps_equal_themselves_and_the_ldt_shows_up(name: str) -> None:
    plain = parse_ptdump_file(REAL / name / "current_user.txt")
    ldt = parse_ptdump_file(REAL / name / "current_user-ldt.txt")
    assert diff_dumps(plain, plain).exit_status == 0
    d = diff_dumps(plain, ldt)
    assert d.exit_status == 1
    # LDT_BASE_ADDR = LDT_PGD_ENTRY << PGDIR_SHIFT (arch/x86/include/asm/pgtable_64_types.h,
    # LDT_PGD_ENTRY = -240): 0xffff880000000000 with 4-level paging, 0xff10000000000000 with
    # 5-level (as the la57 dump's "LDT remap" marker shows). The LDT remap of a process with an
    # LDT is mapped in the -ldt dump only, and only when PTI runs (arch/x86/kernel/ldt.c
    # map_ldt_struct() returns at once without X86_FEATURE_PTI).
    cpu = json.loads((REAL / name / "meta.json").read_text())["guest_cpu"]["flags_of_interest"]
    ldt_base = (-240 << (48 if cpu["la57"] else 39)) & ((1 << 64) - 1)
    remapped = any(c.kind == "appeared" and c.start <= ldt_base < c.end for c in d.changes)
    assert remapped == cpu["pti"]


# ---------------------------------------------------------------------------------------------
# rights and ranges


def _line(flags: set[str], present: bool = True) -> RangeLine:
    return RangeLine(0x1000, 0x2000, PAGE, present, frozenset(flags), "pte", "x")


@given(
    st.sets(st.sampled_from(["RW", "NX", "USR", "GLB"])),
    st.dictionaries(st.sampled_from("wxug"), st.booleans(), min_size=1),
    st.sampled_from([",", "", " "]),
)
def test_rights_filter_means_what_its_letters_say(flags: set[str], terms: dict[str, bool], sep: str) -> None:
    spec = sep.join(("" if on else "-") + letter for letter, on in terms.items())
    f = RightsFilter.parse(spec)
    have = {"w": "RW" in flags, "x": "NX" not in flags, "u": "USR" in flags, "g": "GLB" in flags}
    assert f.matches(_line(flags)) == all(have[k] == on for k, on in terms.items())
    assert not f.matches(_line(flags, present=False))
    assert RightsFilter.parse(f.describe()) == f


@pytest.mark.parametrize("spec", ["", "q", "w,w-", "+w-w", "wx!", "rwx"])
def test_bad_rights_are_query_errors(spec: str) -> None:
    with pytest.raises(QueryError, match="--rights"):
        RightsFilter.parse(spec)


@pytest.mark.parametrize("spec", ["5-3", "0x1000", "a-b", "0-0", f"0-{(1 << 64) + 1}"])
def test_bad_ranges_are_query_errors(spec: str) -> None:
    with pytest.raises(QueryError, match="--range"):
        parse_range(spec)


def test_select_by_region_is_case_insensitive_and_names_the_choices() -> None:
    records = parse_ptdump_file(REAL / "6.1.0-56-amd64-pti-nokaslr" / "current_user.txt")
    cea = select_ranges(records, region="cpu ENTRY area")
    assert cea and {ln.section for ln in cea} == {"CPU entry Area"}
    with pytest.raises(QueryError, match="CPU entry Area"):
        select_ranges(records, region="nowhere")
