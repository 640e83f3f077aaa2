"""From the plugin's raw log to recordings, without QEMU: synthetic logs cut into jobs and runs,
transitions named from kallsyms, regions tagged; the newc archive the guest boots from."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaiser.record import initramfs
from kaiser.record.format import REGIONS, Transition, UserRun, read_recording
from kaiser.record.raw import (
    MARK_BEGIN,
    MARK_END,
    OP_CR3,
    OP_FETCH,
    OP_LOAD,
    OP_MARK,
    OP_STORE,
    RAW_DTYPE,
    jobs,
    write_job,
)
from kaiser.record.regions import Layout, Symbol

TEXT = 0xFFFF_FFFF_8100_0000
ENTRY = TEXT + 0xC0_0000
SYMBOLS = sorted(
    [
        Symbol(TEXT, "T", "_text"),
        Symbol(TEXT + 0x1000, "T", "__switch_to_asm"),
        Symbol(TEXT + 0x1100, "T", "do_syscall_64"),
        Symbol(TEXT + 0x2000, "T", "__x64_sys_getppid"),
        Symbol(TEXT + 0x3000, "T", "__x64_sys_close"),
        Symbol(ENTRY, "T", "__entry_text_start"),
        Symbol(ENTRY + 0x80, "T", "entry_SYSCALL_64"),
        Symbol(ENTRY + 0xBE0, "T", "asm_exc_page_fault"),
        Symbol(ENTRY + 0xEF0, "T", "asm_sysvec_apic_timer_interrupt"),
        Symbol(ENTRY + 0x2000, "T", "__entry_text_end"),
        Symbol(TEXT + 0xE0_0000, "T", "_etext"),
        Symbol(TEXT + 0x300_0000, "B", "_end"),
    ],
    key=lambda s: s.address,
)
VALUES = {
    "__per_cpu_offset": 0xFFFF_8880_1F40_0000,
    "pcpu_unit_size": 0x20_0000,
    "page_offset_base": 0xFFFF_8880_0000_0000,
    "vmalloc_base": 0xFFFF_C900_0000_0000,
}
LAYOUT = Layout.from_guest({s.name: s.address for s in SYMBOLS}, VALUES)
STACK = VALUES["vmalloc_base"] + 0x13F00
HEADER = {
    "kernel_release": "test",
    "kernel_version": "test",
    "cmdline": "pti=on",
    "cpu_model": "Haswell",
    "workload": "synthetic",
    "calls": 0,
    "pti": True,
    "kaslr": False,
    "phys": False,
}


def rec(a: int, op: int, size: int = 1, aux: int = 0) -> tuple[int, int, int]:
    return (a, op << 56 | size << 48 | aux, 0)


# Kernel paths by kind: (entry point, body function or None, switched)
PATHS = {
    "getppid": (ENTRY + 0x80, TEXT + 0x2000, False),
    "close": (ENTRY + 0x80, TEXT + 0x3000, False),
    "page_fault": (ENTRY + 0xBE0, None, False),
    "interrupt": (ENTRY + 0xEF0, None, False),
    "context_switch": (ENTRY + 0x80, TEXT + 0x1000, True),
}


def kernel_run(kind: str, n: int) -> list[tuple[int, int, int]]:
    entry, body, _ = PATHS[kind]
    out = [rec(entry, OP_FETCH, 4), rec(entry + 4, OP_FETCH, 3), rec(entry + 4, OP_CR3, 3)]
    out += [rec(STACK - 8 * i, OP_STORE, 8) for i in range(n)]
    if body is not None:
        out.append(rec(body, OP_FETCH, 5))
    out += [rec(VALUES["__per_cpu_offset"] + 0x18, OP_LOAD, 8), rec(ENTRY + 0x200, OP_FETCH, 3)]
    out += [rec(ENTRY + 0x203, OP_CR3, 3), rec(ENTRY + 0x206, OP_FETCH, 3)]
    return out


def user_run(n: int) -> list[tuple[int, int, int]]:
    return [rec(0x401000 + 4 * i, OP_FETCH, 4) for i in range(n)] + [rec(0x7FFE_0000, OP_LOAD, 8)]


@st.composite
def logs(draw: st.DrawFn) -> tuple[list[str], np.ndarray]:
    kinds = draw(st.lists(st.sampled_from(sorted(PATHS)), min_size=1, max_size=12))
    rows = [rec(0x400000, OP_MARK, 0, MARK_BEGIN | 3)]
    for kind in kinds:
        rows += user_run(draw(st.integers(1, 5)))
        rows += kernel_run(kind, draw(st.integers(0, 6)))
    rows += user_run(1)
    rows.append(rec(0x400010, OP_MARK, 0, MARK_END | 3))
    return kinds, np.array(rows, dtype=RAW_DTYPE)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(logs())
def test_runs_are_cut_named_and_tagged(tmp_path: Path, log: tuple[list[str], np.ndarray]) -> None:
    kinds, raw = log
    noise = np.array([rec(0x500000, OP_FETCH, 2)] * 3, dtype=RAW_DTYPE)  # outside the markers
    cut = jobs(np.concatenate([noise, raw, noise]))
    assert list(cut) == [3] and len(cut[3]) == len(raw) - 2
    path = tmp_path / "s.krec"
    result = write_job(path, cut[3], HEADER, LAYOUT, SYMBOLS, {"getppid": 110, "close": 3})
    header, records = read_recording(path)
    transitions = [r for r in records if isinstance(r, Transition)]
    assert result.transitions == len(kinds) == len(transitions)
    assert all(isinstance(r, UserRun) for r in records[::2]) and len(records) == 2 * len(kinds) + 1
    for kind, t in zip(kinds, transitions, strict=True):
        want = {
            "page_fault": ("exception", "page_fault"),
            "interrupt": ("interrupt", "sysvec_apic_timer_interrupt"),
            "context_switch": ("syscall", "unknown"),
        }.get(kind, ("syscall", kind))
        assert (t.kind, t.name) == want
        assert t.switched is (kind == "context_switch")
        assert t.nr == {"getppid": 110, "close": 3}.get(kind, -1)
        regions = [REGIONS[r] for r in t.refs["region"]]
        assert regions[0] == "entry_text" and "user" not in regions
        assert {REGIONS[r] for r in t.refs["region"][t.refs["op"] == 2]} <= {"task_stack"}
        assert (t.refs["op"] == 3).sum() == 2
    assert header["syscalls"] == {k: v for k, v in {"close": 3, "getppid": 110}.items() if k in kinds}
    # every named page's symbols are kept, and nothing else
    kept = {name for _, _, name in header["symbols"]}
    assert "entry_SYSCALL_64" in kept or not any(PATHS[k][0] == ENTRY + 0x80 for k in kinds)
    assert "_end" not in kept


def read_newc(blob: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """A reader written from the format description (buffer-format.rst), to check the writer."""
    out, pos = [], 0
    while True:
        assert blob[pos : pos + 6] == b"070701" and pos % 4 == 0
        f = [int(blob[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = blob[pos + 110 : pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        data = blob[pos : pos + filesize]
        pos = (pos + filesize + 3) & ~3
        if name == "TRAILER!!!":
            assert pos == len(blob)
            return out
        out.append((name, f[1], data, (f[9], f[10])))


@given(st.lists(st.binary(max_size=300), max_size=6))
def test_newc_round_trip(datas: list[bytes]) -> None:
    entries = [initramfs.directory("dev"), initramfs.chardev("dev/console", 5, 1)]
    entries += [initramfs.file(f"f{i}", d, 0o755) for i, d in enumerate(datas)]
    got = read_newc(initramfs.newc(entries))
    assert [g[0] for g in got] == [e.name for e in entries]
    assert [g[2] for g in got] == [e.data for e in entries]
    assert stat.S_ISCHR(got[1][1]) and got[1][3] == (5, 1) and stat.S_ISDIR(got[0][1])
