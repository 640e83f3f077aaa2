"""Result types print addresses in hex (repr) and say what they are (describe()).

For every result type of the API a user meets in a REPL -- walker translations, faults and the
entries they read, page-table leaves, TLB entries and MMU accesses, ptdump lines, audit mappings,
findings and diffs, compare summaries and reports, aliases and dump diffs -- each address-valued
field appears in the repr as ``0x...`` and never as a decimal number, and describe() names it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser.sample import build_sample
from kaiser.x86.cpu import CpuState
from kaiser.x86.tlb import entry_from_walk
from kaiser.x86.walker import Fault, Translation, translate

MEM, PT, REGIONS = build_sample()
KERNEL_DECIMAL = re.compile(r"(?<!\w)1844\d{16}(?!\w)")  # 0xffff8000_00000000 and up, in decimal


def _check(obj: object, *addresses: int) -> None:
    """Each address is in the repr in hex and nowhere in decimal (nor is any other number the
    size of a kernel address)."""
    text = repr(obj)
    assert not KERNEL_DECIMAL.search(text), f"a kernel address in decimal in {text[:200]}"
    for a in addresses:
        assert f"{a:#x}" in text, (hex(a), text[:200])
        assert a < 10 or not re.search(rf"(?<!\w){a}(?!\w)", text), (a, text[:200])
    described = obj.describe()  # type: ignore[attr-defined]
    assert isinstance(described, str) and described


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(REGIONS), st.integers(0, 1 << 30), st.booleans())
def test_walk_results_print_hex(region: object, offset: int, user: bool) -> None:
    va = region.va + offset % region.size  # type: ignore[attr-defined]
    state = CpuState(cr3=PT.cr3(), cpl=3 if user else 0)
    result = translate(MEM, state, va, set_ad=False)
    if isinstance(result, Translation):
        _check(result, va, result.pa)
        assert f"{va:#x}" in result.describe()
        entry = entry_from_walk(result, state)
        _check(entry, entry.vpn, entry.pfn)
    else:
        assert isinstance(result, Fault)
        _check(result, va)
    for ref in result.entries:
        _check(ref, ref.table, ref.value)


def test_page_table_leaves_print_hex() -> None:
    for leaf in PT.leaves():
        _check(leaf, leaf.va, leaf.entry)


def linux_results() -> Iterator[tuple[object, tuple[int, ...]]]:
    from kaiser.api.process import boot_process
    from kaiser.api.tables import dump_text
    from kaiser.linux.audit import audit_model
    from kaiser.linux.ptdump_parse import parse_ptdump, range_lines
    from kaiser.linux.ptquery import diff_dumps, find_aliases

    kernel, task = boot_process("kaiser-rfc", pcid=True, la57=False, kaslr=True, seed=3)
    report = audit_model(kernel, task)
    yield report, tuple(start for _, start, _ in report.regions[:4])
    for m in report.mappings:
        yield m, (m.start, m.end)
    for f in report.findings:
        yield f, (f.start, f.end)
    assert report.diff is not None
    for e in report.diff.entries:
        yield e, (e.start, e.end)
    user = parse_ptdump(dump_text(kernel, task, "current_user"))
    kern = parse_ptdump(dump_text(kernel, task, "current_kernel"))
    for line in range_lines(user)[:40]:
        yield line, (line.start,)
    d = diff_dumps(user, kern)
    yield d, tuple(c.start for c in d.changes[:4])
    for c in d.changes[:20]:
        yield c, (c.start, c.end)
    assert task.mm.pgd.user_pt is not None
    for alias in find_aliases(task.mm.pgd.user_pt):
        yield alias, (alias.pa, *alias.vas)


@pytest.mark.parametrize("index", range(3))
def test_linux_results_print_hex(index: int) -> None:
    results = list(linux_results())
    for obj, addresses in results[index::3]:
        _check(obj, *addresses)


def test_compare_results_print_hex() -> None:
    from pathlib import Path

    from kaiser.linux.compare import compare_dump
    from kaiser.linux.ptdump_parse import parse_ptdump_file

    path = Path(__file__).parents[1] / "linux" / "data" / "real" / "6.1.0-56-amd64-pti-kaslr" / "current_user.txt"
    report = compare_dump(parse_ptdump_file(path), path, "linux")
    assert "model_dump" not in repr(report)  # the whole model dump is not part of the repr
    assert report.describe().startswith(str(path))
    for summary in (*report.real.values(), *report.model.values()):
        _check(summary, *(s for s, _, _, _ in summary.ranges[:3]))
    for diff in report.differences:
        assert diff.describe().startswith(diff.klass)
