"""The audit of user page tables: model variants, a broken variant, real ptdump samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ptdump_support import SAMPLES, sample_blocks

from kaiser.api.process import boot_process
from kaiser.api.tables import dump_text
from kaiser.linux.audit import audit_dump, audit_model, audit_text, infer_layout
from kaiser.linux.audit_policy import CLASSES, policy_for
from kaiser.linux.kernel import Kernel, Task
from kaiser.linux.pgtable_types import PAGE_KERNEL
from kaiser.linux.ptdump import ptdump
from kaiser.linux.ptdump_parse import parse_ptdump, range_lines, render_records
from kaiser.linux.variants import VARIANTS
from kaiser.x86.bits import PTE

ISOLATING = [name for name, v in VARIANTS.items() if v.isolating]
MiB = 1 << 20


def boot(
    variant: str, *, pcid: bool = True, la57: bool = False, kaslr: bool = True, seed: int = 0, **machine: Any
) -> tuple[Kernel, Task]:
    return boot_process(variant, pcid=pcid, la57=la57, kaslr=kaslr, seed=seed, **machine)


@pytest.mark.parametrize("la57", [False, True], ids=["4level", "5level"])
@pytest.mark.parametrize("pcid", [True, False], ids=["pcid", "nopcid"])
@pytest.mark.parametrize("variant", ISOLATING)
def test_every_isolating_variant_passes_its_own_audit(variant: str, pcid: bool, la57: bool) -> None:
    kernel, task = boot(variant, pcid=pcid, la57=la57, seed=7)
    model = audit_model(kernel, task)
    assert model.exit_status == 0, [f.message for f in model.violations]
    assert model.mappings, "the user tables map some kernel pages"
    # The same tables as a file, classified only from the dump's own markers and addresses.
    text = dump_text(kernel, task, "current_user")
    from_file = audit_text(text, policy_for(variant, pcid=pcid))
    assert from_file.exit_status == 0, [f.message for f in from_file.violations]
    assert {m.klass for m in from_file.mappings} <= set(CLASSES) - {"hole"}


@pytest.mark.parametrize("la57", [False, True], ids=["4level", "5level"])
def test_nopti_fails_because_its_user_view_is_the_kernel_pgd(la57: bool) -> None:
    kernel, task = boot("nopti", la57=la57)
    model = audit_model(kernel, task)
    assert model.exit_status == 1
    direct = kernel.layout.page_offset_base
    assert any(f.kind == "not-allowed" and f.klass == "direct_map" and f.start == direct for f in model.violations)
    assert f"0x{direct:016x}" in " ".join(f.message for f in model.violations)
    # current_kernel as a file, judged as the user view by the default (linux) policy
    report = audit_text(dump_text(kernel, task, "current_kernel"), policy_for("linux"))
    assert report.exit_status == 1
    classes = {f.klass for f in report.violations}
    assert {"direct_map", "vmemmap", "kernel_text", "kernel_data", "modules", "fixmap"} <= classes


def test_a_leaked_direct_map_pmd_is_caught_and_named() -> None:
    """A broken variant: linux plus one direct-map 2 MiB PMD cloned into the process's user tables."""
    kernel, task = boot("linux", seed=3)
    upt = task.mm.pgd.user_pt
    assert upt is not None
    leak = kernel.layout.page_offset_base + 64 * MiB
    upt.map(leak, 64 * MiB, 2 * MiB, int(PAGE_KERNEL & ~PTE.G), page_size=2 * MiB)  # RW NX, like the kernel's
    model = audit_model(kernel, task)
    assert model.exit_status == 1
    (bad,) = model.violations
    assert (bad.kind, bad.klass, bad.start, bad.end) == ("not-allowed", "direct_map", leak, leak + 2 * MiB)
    assert f"0x{leak:016x}" in bad.message
    from_file = audit_text(dump_text(kernel, task, "current_user"), policy_for("linux"))
    assert [(f.klass, f.start) for f in from_file.violations] == [("direct_map", leak)]


def test_a_leaked_direct_map_page_in_the_init_user_tables_reaches_new_processes() -> None:
    kernel, _ = boot("linux", kaslr=False)
    upt = kernel.init.user_pt
    assert upt is not None
    leak = kernel.layout.page_offset_base + 0x1234000
    upt.map(leak, 0x1234000, 4096, int(PAGE_KERNEL & ~PTE.G), page_size=4096)
    task = kernel.spawn()
    report = audit_model(kernel, task)
    assert report.exit_status == 1
    assert [(f.klass, f.start) for f in report.violations] == [("direct_map", leak)]


def test_a_user_accessible_kernel_page_and_a_wx_page_are_called_out() -> None:
    kernel, task = boot("linux", kaslr=False)
    upt = task.mm.pgd.user_pt
    assert upt is not None
    # Inside the (allowed) cpu_entry_area, so only the flag rules can object.
    va = kernel.layout.cpu_entry_area_base + 0x100000
    upt.map(va, 0x200000, 4096, int(PTE.P | PTE.RW | PTE.US), page_size=4096)
    report = audit_model(kernel, task)
    kinds = {(f.kind, f.start) for f in report.violations}
    assert ("w+x", va) in kinds and ("user-accessible", va) in kinds
    assert report.exit_status == 1


def test_linux_without_kaslr_maps_the_documented_regions_at_the_documented_addresses() -> None:
    kernel, task = boot("linux", kaslr=False, vsyscall="emulate")  # emulate: the vsyscall page is mapped
    text = dump_text(kernel, task, "current_user")
    assert render_records(parse_ptdump(text)) == text
    present = [r for r in range_lines(parse_ptdump(text)) if r.present and r.start >= 1 << 63]
    by_start = {r.start: r for r in present}
    # §1.2 / §3.3 / sample 01: CEA from 0xfffffe0000000000, GLB, the RO IDT page first
    cea = by_start[0xFFFFFE0000000000]
    assert cea.flags == {"GLB", "NX"} and cea.level == "pte"
    assert all(r.start < 0xFFFFFE8000000000 for r in present if r.start >= 0xFFFFFE0000000000 and "GLB" in r.flags
               and r.start < 0xFFFFFF0000000000)  # fmt: skip
    espfix = [r for r in present if 0xFFFFFF0000000000 <= r.start < 0xFFFFFF8000000000]
    assert espfix and all(r.flags == {"GLB", "NX"} for r in espfix)  # ro NX, global
    entry = by_start[0xFFFFFFFF81C00000]
    assert (entry.end, entry.level, entry.flags) == (0xFFFFFFFF81E00000, "pmd", {"PSE", "GLB"})  # ro x
    vsyscall = by_start[0xFFFFFFFFFF600000]
    assert (vsyscall.size, vsyscall.flags, vsyscall.level) == (4096, {"USR", "NX"}, "pte")
    tss = [r for r in present if 0xFFFF888000000000 <= r.start < 0xFFFFC88000000000]
    assert [r.start for r in tss] == [cpu.tss_va for cpu in kernel.cpus]
    assert all((r.size, r.flags, r.level) == (4096, {"RW", "NX"}, "pte") for r in tss)
    # nothing else in the kernel half
    assert {r.start for r in present} <= {r.start for r in present if r in tss or r in espfix} | {
        r.start for r in present if r.start >= 0xFFFFFE0000000000 and r.start < 0xFFFFFE8000000000
    } | {0xFFFFFFFF81C00000, 0xFFFFFFFFFF600000}
    report = audit_model(kernel, task)
    assert {m.klass for m in report.mappings} == {"tss_percpu", "cpu_entry_area", "espfix", "entry_text", "vsyscall"}


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("la57", [False, True], ids=["4level", "5level"])
def test_inferred_layout_finds_the_randomized_bases_from_the_markers(seed: int, la57: bool) -> None:
    kernel, task = boot("linux", la57=la57, seed=seed)
    inferred = infer_layout(parse_ptdump(dump_text(kernel, task, "current_user")))
    assert inferred.la57 == la57
    starts = {name: lo for name, lo, _ in inferred.regions}
    # A marker is printed at the first entry the walk visits at or above its start, so where the
    # region begins inside an empty top-level entry the printed base is rounded up to that entry.
    top = 1 << (48 if la57 else 39)
    for name, real in (("vmalloc", kernel.layout.vmalloc_base), ("vmemmap", kernel.layout.vmemmap_base)):
        assert real <= starts[name] < real + top, name
    assert inferred.region_of(kernel.layout.page_offset_base) == "direct_map"
    assert inferred.region_of(kernel.layout.ldt_base) == "ldt"


def test_diff_user_vs_kernel_tables() -> None:
    kernel, task = boot("linux", kaslr=False)
    diff = audit_model(kernel, task).diff
    assert diff is not None
    left = {region for region, _, _ in diff.left_out}
    assert {"direct_map", "vmemmap", "kernel_text", "kernel_data", "modules", "vmalloc"} <= left
    assert not [e for e in diff.entries if e.kind in ("user-half-differs", "user-only")]
    ranges, size = diff.nx_only
    assert ranges >= 1 and size >= 256 << 10  # the executable text and vDSO: NX only in the kernel copy
    # the TSS pages: 4K in the user tree, part of a large direct-map page in the kernel tree
    tss = {e.start for e in diff.entries if e.kind == "flags-differ" and e.region == "direct_map"}
    assert tss == {cpu.tss_va for cpu in kernel.cpus}


def test_diff_shows_the_415_entry_text_copy_with_rw_and_glb_cleared() -> None:
    kernel, task = boot("linux-4.15", kaslr=False)
    kpt = task.mm.pgd.kernel_pt
    start = kernel.layout.entry_text[0] & ~(2 * MiB - 1)
    slot = kpt.entry_slot(start, len(kpt.levels) - 2)
    assert slot is not None
    # make the kernel's own entry PMD RW|G (as before mark_rodata_ro()); the user copy is what 4.15 cloned
    kernel.mem.write_u64(slot, kernel.mem.read_u64(slot) | int(PTE.RW | PTE.G))
    diff = audit_model(kernel, task).diff
    assert diff is not None
    (entry,) = [e for e in diff.entries if e.start == start]
    assert entry.kind == "flags-differ" and "RW" in entry.kernel and "GLB" in entry.kernel
    assert "RW" not in entry.user.split() and "GLB" not in entry.user


# ---- real dumps ----------------------------------------------------------------------------------
def test_sample01_current_user_glb_lines_classify_and_pass_linux() -> None:
    (block,) = sample_blocks(SAMPLES / "01-hansen-2018-current_user-GLB.txt")
    report = audit_text("\n".join(block.lines) + "\n", policy_for("linux"), "sample01")
    assert len(report.mappings) == len(block.lines)
    assert {m.klass for m in report.mappings} == {"cpu_entry_area", "entry_text"}
    entry = [m for m in report.mappings if m.klass == "entry_text"]
    assert [(m.start, m.end) for m in entry] == [(0xFFFFFFFF81C00000, 0xFFFFFFFF81E00000)]
    assert report.exit_status == 0
    # 4.15 had no global pages: the same lines break its policy (the GLB rework was 4.17, §3.6)
    strict = audit_text("\n".join(block.lines) + "\n", policy_for("linux-4.15"), "sample01")
    assert strict.exit_status == 1 and {f.kind for f in strict.violations} == {"global"}


def test_sample02_kernel_half_classifies_every_line_and_fails() -> None:
    lines = [
        line for b in sample_blocks(SAMPLES / "02-fedora-4.18-pti-boot-ptdump-kernel-half.txt") for line in b.lines
    ]
    records = parse_ptdump("\n".join(lines) + "\n", "sample02")
    report = audit_dump(records, policy_for("linux"), "sample02")
    present = [r for r in range_lines(records) if r.present]
    assert sum(m.end - m.start for m in report.mappings) == sum(r.size for r in present)
    assert "hole" not in {m.klass for m in report.mappings}
    # the early-boot markers of this dump are bogus, so direct map and vmalloc both read as direct_map
    assert any("ignored" in note for note in report.notes)
    assert {"direct_map", "cpu_entry_area", "espfix", "kernel_text", "fixmap", "vsyscall"} <= {
        m.klass for m in report.mappings
    }
    assert report.exit_status == 1
    wx = {f.start for f in report.violations if f.kind == "w+x"}
    assert 0xFFFFFFFFA0000000 in wx  # the high kernel mapping before mark_rodata_ro()
    assert not [f for f in report.findings if f.kind == "user-accessible"]  # vsyscall USR is fine


def test_sample03_kernel_text_lines_are_kernel_text() -> None:
    for block in sample_blocks(SAMPLES / "03-songliu-2019-pti-clone-pgtable-kernel-text.txt"):
        # grep over several files: lines of three dumps, so not in one dump's order
        report = audit_text("\n".join(block.lines) + "\n", policy_for("linux"), block.title, ordered=False)
        assert report.mappings
        assert {m.klass for m in report.mappings} <= {"kernel_text", "entry_text", "kernel_data"}


def test_policies_exist_for_every_variant_and_linux_allows_text_only_without_pcid() -> None:
    for name in VARIANTS:
        assert policy_for(name).allowed
    assert "kernel_text" not in policy_for("linux").allowed
    assert "kernel_text" in policy_for("linux", pcid=False).allowed
    assert policy_for("nopti").allowed == policy_for("linux").allowed


def test_legacy_dialect_dump_audits_the_same() -> None:
    kernel, task = boot("linux", seed=5)
    generic = audit_text(dump_text(kernel, task, "current_user"), policy_for("linux"))
    legacy = audit_text(dump_text(kernel, task, "current_user", dialect="legacy"), policy_for("linux"))
    assert [(m.start, m.end, m.klass) for m in generic.mappings] == [(m.start, m.end, m.klass) for m in legacy.mappings]
    assert legacy.exit_status == 0
    assert ptdump(task.mm.pgd.kernel_pt, kernel.layout.markers)  # sanity: the kernel PGD dumps too


# ---- what a dump is ------------------------------------------------------------------------------
REAL_DUMPS = sorted((Path(__file__).parent / "data" / "real").glob("*/*.txt"))


@pytest.mark.parametrize("path", REAL_DUMPS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_table_kind_of_every_real_dump_is_its_file_name(path: Path) -> None:
    report = audit_dump(parse_ptdump(path.read_text()), policy_for("linux"), str(path))
    expected = path.stem.removesuffix("-ldt")
    pti = json.loads((path.parent / "meta.json").read_text())["guest_cpu"]["flags_of_interest"]["pti"]
    if not pti and expected == "current_user":  # nopti, or an AMD CPU under pti=auto:
        expected = "current_kernel"  # the user view is the kernel tables (§1)
    assert report.table_kind == expected
    assert report.gaps == () and report.unseen == ()


@pytest.mark.parametrize("variant", ["nopti", "kaiser-rfc", "two-pgd", "linux", "fixed-trampoline"])
@pytest.mark.parametrize("la57", [False, True])
def test_the_table_kind_of_every_model_table(variant: str, la57: bool) -> None:
    kernel, task = boot(variant, la57=la57, seed=5)
    tables = ["kernel", "current_kernel"] + (["current_user"] if variant != "nopti" else [])
    for table in tables:
        assert audit_text(dump_text(kernel, task, table), policy_for(variant)).table_kind == table


def test_a_dump_cut_short_says_which_regions_it_never_reached() -> None:
    text = (REAL_DUMPS[0].parent.parent / "6.1.0-56-amd64-pti-nokaslr" / "current_user.txt").read_text()
    lines = text.split("\n")
    cut = next(i for i, line in enumerate(lines) if "ESPfix" in line)
    report = audit_text("\n".join(lines[:cut]), policy_for("linux"))
    assert report.unseen == ("espfix", "efi", "kernel_image", "modules", "fixmap", "vsyscall")
    assert report.exit_status == 0  # the findings are still honest; the CLI refuses it (exit 2)
    tail = audit_text("\n".join(lines[cut:]), policy_for("linux"))
    assert tail.unseen[0] == "user space" and "espfix" not in tail.unseen
