"""A real dump and nothing else: the machine is read off the dump (linux/dumpinfo.py), the model is
booted aligned to it, and compare finds only what really differs.

Three kinds of check: every real fixture copied alone into an empty directory compares clean; the
inference is differential against the model itself (boot a random machine, dump it, read the
machine back); and mutated real dumps never give a traceback."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kaiser.api.process import boot_process
from kaiser.api.tables import dump_text
from kaiser.cli.app import app
from kaiser.inputs import InputError
from kaiser.linux.compare import ClassSummary, compare_dump, compare_file, diff_summaries, summarize
from kaiser.linux.dumpinfo import read_dump
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.ptdump_parse import parse_ptdump

REAL = Path(__file__).parent / "data" / "real"
FILES = sorted(REAL.glob("*/*.txt"))
runner = CliRunner()


def _id(path: Path) -> str:
    return f"{path.parent.name.split('amd64-')[-1]}/{path.name}"


def _global_image(boot: Path) -> bool:
    """pti=auto on a PCID-less Intel CPU (QEMU's TCG drops PCID; the Bochs boot has it): the image
    is global."""
    meta = json.loads((boot / "meta.json").read_text())
    flags = meta["guest_cpu"]["flags_of_interest"]
    return "pti=on" not in meta["kernel_cmdline"] and bool(flags["pti"]) and not flags["pcid"]


# --pcid for the user views too (the kernel views do not depend on it), except where the dump shows
# the global image: that says PCID is off, and a --pcid given against it is a real difference.
CASES = [(p, False) for p in FILES] + [
    (p, True) for p in FILES if p.name.startswith("current_user") and not _global_image(p.parent)
]


@pytest.mark.parametrize(("path", "pcid"), CASES, ids=[f"{_id(p)}-{'pcid' if c else 'no-pcid'}" for p, c in CASES])
def test_every_real_fixture_alone_compares_with_no_unexplained_difference(
    path: Path, pcid: bool, tmp_path: Path
) -> None:
    alone = tmp_path / path.name
    shutil.copy(path, alone)
    assert not (tmp_path / "meta.json").exists()
    report = compare_file(alone, pcid=pcid)
    assert not report.unexplained, [(d.klass, d.kind, d.real, d.model) for d in report.unexplained]
    # the guest's own /proc/cpuinfo (in meta.json, not read by the alone compare) says whether PTI was on
    meta = json.loads((path.parent / "meta.json").read_text())
    nopti = not meta["guest_cpu"]["flags_of_interest"]["pti"]
    assert report.switches.variant == ("nopti" if nopti else "linux")
    assert report.switches.vendor == ("amd" if meta["guest_cpu"]["vendor"] == "AuthenticAMD" else "intel")
    assert report.switches.ncpus == meta["guest_cpu"]["nproc"]
    assert report.switches.la57 == meta["guest_cpu"]["flags_of_interest"]["la57"]
    # what the meta.json beside the real file says, read off the dump instead
    with_meta = compare_file(path, pcid=pcid)
    sw, meta = report.switches, with_meta.switches
    assert (sw.kaslr, sw.ncpus, sw.vsyscall, sw.cea_random) == (meta.kaslr, meta.ncpus, meta.vsyscall, meta.cea_random)
    assert report.keys == with_meta.keys
    if report.table == "current_user" and not nopti:
        assert not report.differences  # PTI's user tables match range for range


def test_compare_cli_alone_prints_each_switch_with_its_line(tmp_path: Path) -> None:
    alone = tmp_path / "current_user.txt"
    shutil.copy(REAL / "6.1.0-56-amd64-pti-kaslr" / "current_user.txt", alone)
    out = runner.invoke(app, ["compare", str(alone), "--no-pcid"], env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.output
    assert "KASLR on" in out.output and "PCID off [given]" in out.output and "[assumed]" in out.output
    assert re.search(
        r"page_offset_base 0xffff89c940000000 \[dump\]\n +line \d+: ---\[ Low Kernel Mapping \]---", out.output
    )
    assert max(len(line) for line in out.output.splitlines()) <= 80


def test_the_model_dump_matches_the_real_pti_on_nokaslr_one_cpu_user_tables() -> None:
    """`kaiser dump --variant linux --pti on --no-pcid --no-kaslr --cpus 1 --table current_user`
    (the modern default vsyscall=xonly maps no vsyscall page, like Debian's LEGACY_VSYSCALL_NONE)
    maps what the real 6.1 pti=on nokaslr 1-CPU boot maps, region by region: CPU 0's entry area
    and entry text at the same addresses with the same flags, one TSS clone, espfix's 65,536
    aliases, no vsyscall page."""
    args = "dump --variant linux --pti on --no-pcid --no-kaslr --cpus 1 --table current_user"
    out = runner.invoke(app, args.split())
    assert out.exit_code == 0, out.output
    model = summarize(parse_ptdump(out.output))
    real = summarize(parse_ptdump((REAL / "6.1.0-56-amd64-pti-nokaslr" / "current_user.txt").read_text()))
    assert set(model) == set(real) == {"cpu_entry_area", "entry_text", "tss_percpu", "espfix"}
    for klass in ("cpu_entry_area", "entry_text"):  # the same ranges, flags and levels
        assert model[klass] == real[klass], klass
    for klass in ("tss_percpu", "espfix"):  # placed at boot (allocator, espfix's random index)
        m, r = model[klass], real[klass]
        assert (m.flag_sets, m.levels) == (r.flag_sets, r.levels), klass
        assert m.count + m.skipped == r.count + r.skipped or klass == "espfix"
    assert model["tss_percpu"].size == real["tss_percpu"].size == 4096
    # every one of espfix's aliases is either printed or counted as skipped
    assert model["espfix"].count * 2 - 1 + model["espfix"].skipped in (131_072, 131_073, 131_074, 131_075)


def test_a_difference_user_mode_can_reach_is_never_explained() -> None:
    """kernel_text has an explanation (the running kernel's contents), but in the user tables of an
    isolating kernel it is a leak (pti=auto without PCID clones all text global): not explained."""
    real = summarize(parse_ptdump((REAL / "6.1.0-56-amd64-pti-nokaslr" / "current_user.txt").read_text()))
    leaked = dict(real)
    leaked["kernel_text"] = ClassSummary(
        "kernel_text", ((0xFFFFFFFF81000000, 0xFFFFFFFF81C00000, "ro PSE GLB x", "pmd"),)
    )
    diffs = diff_summaries(leaked, real, user_view=True, isolating=True)
    assert [(d.klass, d.kind, d.explained, bool(d.blocked)) for d in diffs] == [
        ("kernel_text", "only-real", False, True)
    ]
    # the same difference in the kernel's own tables is the running kernel's contents
    (inner,) = diff_summaries(leaked, real, user_view=False, isolating=True)
    assert inner.explained and inner.category == "contents"


# ---- the inference, differentially: a machine we booted, read back from its own dump ----------
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    ncpus=st.integers(1, 4),
    vendor=st.sampled_from(["intel", "amd"]),
    pti=st.sampled_from(["on", "auto"]),
    pcid=st.booleans(),
    kaslr=st.booleans(),
    vsyscall=st.sampled_from(["emulate", "none"]),
    cea_random=st.booleans(),
    table=st.sampled_from(["kernel", "current_kernel", "current_user"]),
)
def test_read_dump_recovers_the_machine_that_printed_it(
    seed: int, ncpus: int, vendor: str, pti: str, pcid: bool, kaslr: bool, vsyscall: str, cea_random: bool, table: str
) -> None:
    kernel, task = boot_process(
        "linux", pcid=pcid, la57=False, kaslr=kaslr, seed=seed, ncpus=ncpus, vendor=vendor, pti=pti,
        vsyscall=vsyscall, cea_random=cea_random,
    )  # fmt: skip
    isolating = kernel.variant.isolating
    if table == "current_user" and not isolating:
        table = "current_kernel"  # Linux's walker falls back to the kernel PGD
    info = read_dump(parse_ptdump(dump_text(kernel, task, table)))
    lay = kernel.layout
    assert info.get("pti") is isolating
    assert info.get("table") == table
    assert info.get("ncpus") == ncpus
    assert info.get("cea_slots") == tuple(sorted(kernel._cea_slot_order()))
    assert info.get("vendor") == vendor
    assert info.get("vsyscall") == ("emulate" if vsyscall == "emulate" else "none")
    assert info.get("espfix_page") == (kernel.espfix_va - lay.espfix_base) % (1 << 32) >> 12 & 0xF | (
        (kernel.espfix_va - lay.espfix_base) >> 32 << 4
    )
    assert info.get("kernel_base") == lay.kernel_base
    assert info.get("page_offset_base") == lay.page_offset_base
    if table != "current_user":  # the user tables show only a bound for vmalloc and vmemmap
        assert (info.get("vmalloc_base"), info.get("vmemmap_base")) == (lay.vmalloc_base, lay.vmemmap_base)
        assert info.get("kaslr") is kaslr
    if isolating:
        assert info.get("global_image") is kernel.kernel_text_shared()
    if table == "current_user":
        assert info.get("tss_phys") == tuple(c.percpu_pa + 4096 for c in kernel.cpus)


def test_pti_auto_on_amd_does_not_isolate_and_amd_has_no_debug_store() -> None:
    assert not Kernel.boot(KernelConfig(pti="auto", vendor="amd")).variant.isolating
    amd = Kernel.boot(KernelConfig(pti="on", vendor="amd", pcid=False))
    assert amd.variant.isolating and not amd.kernel_text_shared()  # K8: never a global image
    assert not Kernel.boot(KernelConfig(pti="on", pcid=False)).kernel_text_shared()  # pti=on
    assert Kernel.boot(KernelConfig(pti="auto", pcid=False)).kernel_text_shared()
    assert amd.cea_layout.piece("debug store").kind.value == "guard"


# ---- mutated real dumps: an error naming the place, or a report; never a traceback -------------
_BASE = [(REAL / "6.1.0-56-amd64-pti-nokaslr" / n).read_text().splitlines() for n in ("current_user.txt", "kernel.txt")]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(_BASE) - 1),
    edits=st.lists(
        st.tuples(st.sampled_from(["drop", "dup", "swap", "char", "flags"]), st.integers(0, 10**6), st.integers(0, 80)),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_real_dumps_never_give_a_traceback_in_compare(which: int, edits: list[tuple[str, int, int]]) -> None:
    lines = list(_BASE[which])
    for op, at, col in edits:
        i = at % len(lines)
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap" and i + 1 < len(lines):
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        elif op == "char" and lines[i]:
            c = col % len(lines[i])
            lines[i] = lines[i][:c] + "0123456789abcdef GLBNXRWx"[at % 25] + lines[i][c + 1 :]
        elif op == "flags":
            lines[i] = lines[i].replace(" NX ", " x  ").replace("GLB", "   ")
    text = "\n".join(lines) + "\n"
    try:
        records = parse_ptdump(text, "mutated")
    except InputError:
        return
    report = compare_dump(records, Path("/nonexistent/current_user.txt"), pcid=False)
    assert report.exit_status in (0, 1)


# ---- every boot's user tables pass the audit when it isolates, and fail it when it does not ------
BOOTS = sorted({p.parent for p in FILES})


@pytest.mark.parametrize("boot", BOOTS, ids=lambda b: b.name)
def test_audit_of_every_real_boot_passes_when_isolating_and_fails_without(boot: Path) -> None:
    meta = json.loads((boot / "meta.json").read_text())
    isolating = meta["guest_cpu"]["flags_of_interest"]["pti"]
    global_image = _global_image(boot)
    for view in ("current_user", "current_user-ldt"):
        args = ["audit", str(boot / f"{view}.txt"), "--no-pcid" if global_image else "--pcid"]
        out = runner.invoke(app, args)
        assert out.exit_code == (0 if isolating else 1), (view, out.output[-600:])
        if global_image:  # the strict policy (PCID: no kernel text in the user tables) catches the clone
            assert runner.invoke(app, [*args[:2], "--pcid"]).exit_code == 1


# ---- a dump the model printed itself compares with no difference at all ---------------------------
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    variant=st.sampled_from(["linux", "linux-4.15"]),
    dialect=st.sampled_from(["generic", "legacy"]),
    table=st.sampled_from(["kernel", "current_kernel", "current_user"]),
    seed=st.integers(0, 2**16),
    ncpus=st.integers(1, 4),
    la57=st.booleans(),
    kaslr=st.booleans(),
    pcid=st.booleans(),
    vendor=st.sampled_from(["intel", "amd"]),
)
def test_a_dump_of_the_model_itself_compares_with_no_difference(
    variant: str, dialect: str, table: str, seed: int, ncpus: int, la57: bool, kaslr: bool, pcid: bool, vendor: str
) -> None:
    # 4.15-4.19 with 5-level and KASLR put the LDT slot inside the randomized range (the bug
    # d52888aa2753 fixed, Layout.overlaps()): its regions cannot be told apart from a dump
    assume(not (variant == "linux-4.15" and la57 and kaslr))
    kernel, task = boot_process(
        variant, pcid=pcid, la57=la57, kaslr=kaslr, seed=seed, ncpus=ncpus, vendor=vendor, pti="on"
    )
    text = dump_text(kernel, task, table, dialect=dialect)
    report = compare_dump(parse_ptdump(text), Path(f"/nonexistent/{table}.txt"), pcid=pcid)
    assert report.switches.variant == variant  # the era read off the layout picks linux-4.15
    assert not report.differences, [(d.klass, d.kind, d.real, d.model) for d in report.differences]


def test_cmdline_and_cpuinfo_fill_in_what_the_dump_cannot_tell(tmp_path: Path) -> None:
    alone = tmp_path / "current_user.txt"
    shutil.copy(REAL / "6.1.0-56-amd64-pti-nokaslr" / "current_user.txt", alone)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu pse pge nx smep\n")
    ok = runner.invoke(app, ["compare", str(alone), "--cpuinfo", str(cpuinfo), "--json"])
    assert ok.exit_code == 0, ok.output
    facts = {f["name"]: f for f in json.loads(ok.output)["model"]["facts"]}
    assert (facts["pcid"]["value"], facts["pcid"]["source"]) == (False, "cpuinfo")
    assert facts["ncpus"]["source"] == "dump" and facts["vendor"]["source"] == "dump"  # the dump comes first
    # a command line that contradicts the dump: pti=auto on a PCID-less Intel CPU would clone the
    # kernel text, the real user tables do not have it -- a difference user mode can reach
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("BOOT_IMAGE=/vmlinuz quiet pti=auto\n")
    bad = runner.invoke(app, ["compare", str(alone), "--cmdline", str(cmdline), "--cpuinfo", str(cpuinfo), "--json"])
    assert bad.exit_code == 1, bad.output
    data = json.loads(bad.output)
    assert data["model"]["pti"] == "auto"
    (diff,) = [d for d in data["differences"] if d["class"] == "kernel_text"]
    assert diff["kind"] == "only-model" and not diff["explained"] and diff["blocked"]
    text = runner.invoke(app, ["compare", str(alone), "--cmdline", "quiet pti=on nokaslr", "--json"])
    assert json.loads(text.output)["model"]["pti"] == "on"
    missing = runner.invoke(app, ["compare", str(alone), "--cpuinfo", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "nope" in missing.output


# ---- the machine switches, the same on every command that boots a kernel -------------------------
BOOTING = (["dump"], ["audit"], ["attack", "meltdown"], ["attack", "kaslr"], ["run"], ["bench"], ["bench", "memory"])


@pytest.mark.parametrize("command", BOOTING, ids=" ".join)
def test_every_booting_command_takes_the_machine_switches(command: list[str]) -> None:
    out = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    for option in ("--pti", "--vendor", "--vsyscall"):
        assert option in out.output, (command, option)
    bad = runner.invoke(app, [*command, "--pti", "off"])
    assert bad.exit_code == 2 and "off" in bad.output


def test_dump_switches_change_the_tables() -> None:
    def user_classes(*args: str) -> set[str]:
        out = runner.invoke(app, ["dump", "--table", "current_user", "--no-pcid", *args])
        assert out.exit_code == 0, out.output
        return set(summarize(parse_ptdump(out.output)))

    assert "kernel_text" in user_classes()  # pti=auto, Intel, no PCID: the global image (§3.3)
    assert "kernel_text" not in user_classes("--pti", "on")
    assert "kernel_text" not in user_classes("--pti", "on", "--vendor", "amd")  # K8
    assert "vsyscall" not in user_classes("--vsyscall", "xonly")
    cpus = runner.invoke(app, ["dump", "--table", "current_user", "--cpus", "3"])
    assert summarize(parse_ptdump(cpus.output))["tss_percpu"].count == 3
    # pti=auto on AMD (no Meltdown bug): no isolation, so current_user walks the kernel PGD
    amd = runner.invoke(app, ["dump", "--table", "current_user", "--vendor", "amd"])
    amd_kernel = runner.invoke(app, ["dump", "--table", "current_kernel", "--vendor", "amd"])
    assert amd.exit_code == 0 and amd.output == amd_kernel.output
