"""Real page-table dumps of Debian's 6.1 kernel (tests/linux/data/real, made by
tools/realdumps/regenerate.sh under QEMU/TCG, -cpu Haswell): parser, audit and compare on them.
No QEMU needed here: the fixtures are plain text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kaiser.cli.app import app
from kaiser.cli.compare import compare_command
from kaiser.linux.audit import audit_dump, audit_text
from kaiser.linux.audit_policy import CLASSES, policy_for
from kaiser.linux.compare import (
    EXPLANATIONS,
    ClassSummary,
    boot_model,
    compare_file,
    diff_summaries,
    summarize,
    table_of,
)
from kaiser.linux.ptdump_parse import SkipLine, parse_ptdump, range_lines, render_records

REPO = Path(__file__).resolve().parents[2]
REAL = Path(__file__).parent / "data" / "real"
DOCS = REPO / "docs" / "real-kernel.md"
KVER = "6.1.0-56-amd64"
CONFIGS = ("pti-nokaslr", "nopti-nokaslr", "pti-kaslr", "pti-nokaslr-smp2")
PTI = [c for c in CONFIGS if c.startswith("pti")]
VIEWS = ("kernel", "current_kernel", "current_user", "current_kernel-ldt", "current_user-ldt")
FILES = sorted(REAL.glob(f"{KVER}-*/*.txt"))  # the first four boots; test_dump_alone.py covers all
runner = CliRunner()


def fixture(config: str, view: str) -> Path:
    return REAL / f"{KVER}-{config}" / f"{view}.txt"


def test_every_configuration_and_view_is_there_with_its_meta() -> None:
    assert {p.parent.name for p in FILES} == {f"{KVER}-{c}" for c in CONFIGS}
    for config in CONFIGS:
        meta = json.loads((REAL / f"{KVER}-{config}" / "meta.json").read_text())
        assert meta["kernel_version"] == KVER and meta["config"] == config
        assert meta["qemu_cpu_model"] == "Haswell" and "qemu-system-x86_64" in meta["qemu_command"]
        assert meta["guest_cpu"]["vendor"] == "GenuineIntel" and not meta["guest_cpu"]["flags_of_interest"]["pcid"]
        assert ("nopti" in meta["kernel_cmdline"]) == (config == "nopti-nokaslr")
        assert meta["guest_cpu"]["nproc"] == (2 if config.endswith("smp2") else 1)
        for view in VIEWS:
            data = fixture(config, view).read_bytes()
            assert meta["files"][f"{view}.txt"]["bytes"] == len(data)
    pti_on = json.loads((REAL / f"{KVER}-pti-nokaslr" / "meta.json").read_text())
    assert pti_on["guest_cpu"]["meltdown"] == "Mitigation: PTI"
    assert "Kernel/User page tables isolation: enabled" in " ".join(pti_on["dmesg_excerpt"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name.removeprefix(KVER + '-')}/{p.name}")
def test_real_dumps_parse_and_round_trip(path: Path) -> None:
    text = path.read_text()
    records = parse_ptdump(text, str(path))
    assert render_records(records) == text
    assert path.stat().st_size < 2 << 20
    # ESPfix's 65536 clones exceed its 16-line cap in every table that maps it
    assert any(isinstance(r, SkipLine) and r.count > 100_000 for r in records)


@pytest.mark.parametrize("view", ["current_user", "current_user-ldt"])
@pytest.mark.parametrize("config", PTI)
def test_audit_of_real_pti_user_tables_classifies_everything_and_passes(config: str, view: str) -> None:
    path = fixture(config, view)
    # pti=on: no kernel-image clone whatever the CPU (pti_kernel_image_global_ok() wants pti=auto),
    # so the strict policy (--pcid, kernel_text not allowed) is the right one even though TCG has no PCID.
    report = audit_dump(parse_ptdump(path.read_text()), policy_for("linux", pcid=True), str(path))
    assert report.exit_status == 0, [f.message for f in report.violations]
    classes = {m.klass for m in report.mappings}
    assert classes <= set(CLASSES) - {"hole"}
    expected = {"cpu_entry_area", "espfix", "entry_text", "tss_percpu"} | ({"ldt"} if view.endswith("-ldt") else set())
    assert classes == expected
    ncpus = 2 if config.endswith("smp2") else 1
    assert sum(m.klass == "tss_percpu" for m in report.mappings) == ncpus
    (entry,) = [m for m in report.mappings if m.klass == "entry_text"]
    assert (entry.end - entry.start, entry.level, entry.flag_text) == (2 << 20, "pmd", "ro PSE GLB x")
    if config != "pti-kaslr":
        assert entry.start == 0xFFFFFFFF81C00000
    assert any("espfix line(s) not printed" in note for note in report.notes)
    # every present kernel-half line is accounted for
    present = [r for r in range_lines(parse_ptdump(path.read_text())) if r.present and r.start >= 1 << 63]
    assert sum(r.end - r.start for r in present) == sum(m.end - m.start for m in report.mappings)


def test_audit_cli_exit_status_on_real_dumps() -> None:
    good = runner.invoke(app, ["audit", str(fixture("pti-nokaslr", "current_user")), "--pcid"])
    assert good.exit_code == 0, good.output
    assert "PASS" in good.output
    # nopti: the kernel PGD stays loaded in user mode, so it is the user view -- and it fails
    bad = runner.invoke(app, ["audit", str(fixture("nopti-nokaslr", "current_kernel")), "--json"])
    assert bad.exit_code == 1
    data = json.loads(bad.output)
    assert {"direct_map", "kernel_text", "kernel_data", "modules", "vmemmap"} <= {
        f["class"] for f in data["findings"] if f["breaks_policy"]
    }
    assert "hole" not in {m["class"] for m in data["mappings"]}


@pytest.mark.parametrize("view", ["current_kernel", "current_user"])
def test_nopti_user_view_fails_and_equals_the_kernel_view(view: str) -> None:
    text = fixture("nopti-nokaslr", view).read_text()
    assert audit_text(text, policy_for("linux")).exit_status == 1
    # the walker falls back to the kernel PGD when PTI is off at run time: same kernel half
    kernel_half = [r for r in range_lines(parse_ptdump(text)) if r.start >= 1 << 63]
    other = fixture("nopti-nokaslr", "current_user" if view == "current_kernel" else "current_kernel")
    assert kernel_half == [r for r in range_lines(parse_ptdump(other.read_text())) if r.start >= 1 << 63]


# ---- compare: the differences are exactly the documented ones ------------------------------------
# The model is booted aligned to each dump (bases, espfix index, entry-area slots, CPU count, per-CPU
# TSS pages read off the dump), so what PTI maps into the user tables matches range for range and
# what remains is the running kernel's own contents (kernel_data, direct_map, vmalloc, ... below).
_LOW = "marker:Low_Kernel_Mapping/placement"  # the real 4K page 0 of the direct map (contents)
_KVIEW = (
    "direct_map/count direct_map/flags direct_map/levels direct_map/size kernel_data/count kernel_data/size "
    "modules/count modules/flags modules/size task_stack/count task_stack/placement task_stack/size vmalloc/only-real"
)
_KVIEW_KASLR = f"{_KVIEW} kernel_text/count kernel_text/size modules/placement"
EXPECTED: dict[str, str] = {
    **{f"{c}/{v}.txt": "" for c in PTI for v in ("current_user", "current_user-ldt")},
    **{f"{c}/{v}.txt": f"{_KVIEW} {_LOW}" for c in ("pti-nokaslr", "pti-nokaslr-smp2")
       for v in ("kernel", "current_kernel")},
    **{f"{c}/current_kernel-ldt.txt": _KVIEW for c in ("pti-nokaslr", "pti-nokaslr-smp2")},
    **{f"pti-kaslr/{v}.txt": _KVIEW_KASLR for v in ("kernel", "current_kernel", "current_kernel-ldt")},
    # nopti: current_user is the kernel PGD; no LDT alias without PTI (map_ldt_struct())
    **{f"nopti-nokaslr/{v}.txt": f"{_KVIEW} {_LOW} kernel_data/placement"
       for v in ("kernel", "current_user", "current_kernel", "current_kernel-ldt", "current_user-ldt")},
}  # fmt: skip


def _keys(text: str) -> set[tuple[str, str]]:
    out = set()
    for item in text.split():
        klass, _, kind = item.replace("_", " ").rpartition("/")
        out.add((klass if klass.startswith("marker:") else klass.replace(" ", "_"), kind))
    return out


def test_expectations_cover_every_fixture() -> None:
    assert set(EXPECTED) == {f"{p.parent.name.removeprefix(KVER + '-')}/{p.name}" for p in FILES}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_compare_differences_are_exactly_the_explained_set(name: str) -> None:
    config, view = name.split("/")
    path = fixture(config, view.removesuffix(".txt"))
    report = compare_file(path)
    assert (report.table, report.ldt) == table_of(path)
    assert report.switches.kaslr == (config == "pti-kaslr")
    assert report.switches.ncpus == (2 if config.endswith("smp2") else 1)
    assert report.switches.variant == ("nopti" if config.startswith("nopti") else "linux")
    assert not report.switches.pcid and report.switches.ram == 512 << 20
    unexplained = [(d.klass, d.kind, d.real, d.model) for d in report.unexplained]
    assert not unexplained, unexplained
    assert report.keys == _keys(EXPECTED[name])
    assert report.exit_status == 0


def test_explanations_are_documented() -> None:
    doc = DOCS.read_text()
    for klass, kind in EXPLANATIONS:
        assert f"`{klass}/{kind}`" in doc, f"docs/real-kernel.md does not list {klass}/{kind}"
    # and the docs list nothing compare.py does not know
    listed = set(re.findall(r"^- `([^`/]+(?:/[^`/]+)*)/([a-z*-]+)`", doc, flags=re.M))
    assert listed == set(EXPLANATIONS)


def test_a_new_difference_is_unexplained() -> None:
    """A difference nobody explained (the model maps EFI space, the real kernel's TSS clone is gone)
    is reported as unexplained, so the report fails."""
    real = summarize(parse_ptdump(fixture("pti-nokaslr", "current_user").read_text()))
    model = {k: v for k, v in real.items() if k != "tss_percpu"}
    model["efi"] = ClassSummary("efi", ((0xFFFFFFEF00000000, 0xFFFFFFEF00001000, "RW NX", "pte"),))
    kinds = {(d.klass, d.kind): d.explained for d in diff_summaries(real, model)}
    assert kinds == {("tss_percpu", "only-real"): False, ("efi", "only-model"): False}


def test_compare_cli_table_and_json() -> None:
    cli = typer.Typer()
    cli.command()(compare_command)
    path = fixture("pti-nokaslr", "current_user-ldt")
    table = runner.invoke(cli, [str(path)])
    assert table.exit_code == 0, table.output
    assert "cpu_entry_area" in table.output and "OK:" in table.output
    kview = runner.invoke(cli, [str(fixture("pti-nokaslr", "kernel"))])
    assert kview.exit_code == 0 and "kernel_text" in kview.output and "OK:" in kview.output
    out = runner.invoke(cli, [str(path), "--variant", "linux", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["table"] == "current_user" and data["ldt"] is True and data["unexplained"] == 0
    assert data["model"]["kaslr"] is False and data["model"]["pti_on"] is True
    for klass in ("entry_text", "cpu_entry_area", "ldt"):  # the same ranges, flags and levels
        assert data["classes"][klass]["real"] == data["classes"][klass]["model"], klass
    assert {(d["class"], d["kind"]) for d in data["differences"]} == _keys(EXPECTED["pti-nokaslr/current_user-ldt.txt"])
    bad = runner.invoke(cli, [str(path), "--variant", "nonsense"])
    assert bad.exit_code == 2


@pytest.mark.parametrize("config", ["pti-nokaslr", "pti-kaslr"])
def test_build_choices_are_read_off_the_real_machine(config: str) -> None:
    """Debian's 6.1: LEGACY_VSYSCALL_NONE (no PTE at 0xffffffffff600000), a RANDOMIZE_BASE build
    (modules at 0xffffffffc0000000 even with nokaslr), 646 permanent fixmap slots, and per-CPU
    entry areas at fixed slots (randomized only since 6.2)."""
    report = compare_file(fixture(config, "kernel"))
    sw = report.switches
    assert (sw.vsyscall, sw.kaslr_image_size, sw.fixmap_pages, sw.cea_random) == ("none", True, 646, False)
    assert sw.image is not None and (sw.image.text, sw.image.rodata) == (0xE02000, 0x8EB000)  # 14343K, 9132K
    kernel = boot_model(sw, ldt=False)[0]
    assert kernel.cpus[0].cea == 0xFFFFFE0000001000 and kernel.cea_layout.pages == 59
    assert kernel.layout.modules_vaddr == 0xFFFFFFFFC0000000
