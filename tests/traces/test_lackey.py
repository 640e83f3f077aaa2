"""The lackey reader: records to events, syscall lines, bad lines, chunking, round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser.traces.lackey import USER_TOP, LackeyReader, TraceError, format_lackey
from kaiser.x86.events import EVENT_DTYPE, Ev

HEADER = "==42== Lackey, an example Valgrind tool\n==42== Command: ./t\n==42== \n"
BODY = "I  004014f0,2\n L 1fff000780,8\n S 1fff000778,8\n M 1fff000598,8\n"


def write(tmp_path: Path, text: bytes | str, name: str = "t.lackey") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def read_all(path: Path, **kw: object) -> tuple[np.ndarray, list, LackeyReader]:
    r = LackeyReader(path, **kw)  # type: ignore[arg-type]
    chunks = list(r)
    events = np.concatenate([c.events for c in chunks]) if chunks else np.zeros(0, EVENT_DTYPE)
    return events, [s for c in chunks for s in c.syscalls], r


def test_records_become_events(tmp_path: Path) -> None:
    ev, sites, r = read_all(write(tmp_path, HEADER + BODY + "==42== Exit code: 0\n"))
    assert ev["kind"].tolist() == [Ev.FETCH, Ev.READ, Ev.WRITE, Ev.READ, Ev.WRITE]  # M = load then store
    assert ev["a"].tolist() == [0x4014F0, 0x1FFF000780, 0x1FFF000778, 0x1FFF000598, 0x1FFF000598]
    assert set(ev["cpl"].tolist()) == {3}
    assert (r.stats.refs, r.stats.events, r.stats.modifies, r.stats.valgrind_lines) == (4, 5, 1, 4)
    assert r.stats.bad_lines == 0 and not sites


def test_page_crossing_access_touches_both_pages(tmp_path: Path) -> None:
    ev, _, r = read_all(write(tmp_path, " L 1ffc,8\nI  00400ffe,5\n L 2000,8\n"))
    assert ev["a"].tolist() == [0x1FFC, 0x2000, 0x400FFE, 0x401000, 0x2000]
    assert ev["kind"].tolist() == [Ev.READ, Ev.READ, Ev.FETCH, Ev.FETCH, Ev.READ]
    assert r.stats.page_crossings == 2 and r.stats.refs == 3


def test_syscall_lines_give_exact_places(tmp_path: Path) -> None:
    text = (
        HEADER
        + "I  0042fd25,2\n"
        + "SYSCALL[42,1](39) sys_getpid ()[sync] --> Success(0x1aa6) \n"
        + "I  0042fd27,1\n L 1fff000598,8\n"
        + "SYSCALL[42,1](0) sys_read ( 4, 0x4a62e0, 65536 ) --> [async] ... \n"
        + "SYSCALL[42,1](0) ... [async] --> Success(0x10000) \n"
        + "SYSCALL[42,1](334) unimplemented (by the kernel) syscall: 334! (ni_syscall)\n"
        + " --> [pre-fail] Failure(0x26) \n"
        + "I  0042fd29,1\n"
        + "SYSCALL[42,1](231) exit_group( 0 ) --> [pre-success] Success(0x0) \n"
    )
    ev, sites, _ = read_all(write(tmp_path, text))
    assert [(s.name, s.nr, s.index) for s in sites] == [
        ("getpid", 39, 1),
        ("read", 0, 3),
        ("ni_syscall", 334, 3),
        ("exit_group", 231, 4),
    ]
    assert sites[1].args == (4, 0x4A62E0, 65536) and sites[1].returned == 0x10000
    assert sites[2].success is False and sites[2].result == 0x26
    assert sites[0].line == 5


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (BODY + " L 1fff0007", 5),  # truncated last line
        (BODY + " L 1fff000780\n", 5),  # no size
        (BODY + " X 1fff000780,8\n", 5),  # unknown tag
        ("I  zz4014f0,2\n" + BODY, 1),  # not hex
        (BODY + " L 1fff000780,8 trailing\n", 5),
        (BODY + " L 12345678901234567,8\n", 5),  # > 16 hex digits
        (BODY + " L 1000,99999\n", 5),  # size beyond a page
        (BODY + "SYSCALL[1,1](0) what is this\n", 5),
        (BODY + " --> Success(0x0)\n", 5),  # a continuation of nothing
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    p = write(tmp_path, text)
    with pytest.raises(TraceError, match=rf"^{p}:{line}: "):
        read_all(p)


def test_binary_junk_is_an_error_or_counted(tmp_path: Path) -> None:
    junk = bytes(range(256)) * 3
    p = write(tmp_path, BODY.encode() + junk + b"\n" + BODY.encode())
    with pytest.raises(TraceError, match=rf"{p}:5: "):
        read_all(p)
    ev, _, r = read_all(p, skip_bad=True)
    bad = junk.count(b"\n") + 1
    assert r.stats.bad_lines == bad
    assert len(ev) == 10 and r.stats.refs == 8  # never a silently wrong total: good lines all counted
    assert r.stats.lines == 8 + bad


def test_skip_bad_counts_every_bad_line(tmp_path: Path) -> None:
    lines = []
    for i in range(100):  # more bad lines than the scan keeps examples of
        lines.append(BODY)
        lines.append(f"garbage {i}\n")
    p = write(tmp_path, "".join(lines) + " L 1fff0007")
    ev, _, r = read_all(p, skip_bad=True, chunk_bytes=256)
    assert r.stats.bad_lines == 101  # 100 garbage lines + the truncated last one
    assert r.stats.refs == 400 and len(ev) == 500
    assert r.stats.bad_examples[0].startswith(f"{p}:5: ")


def test_empty_file(tmp_path: Path) -> None:
    ev, sites, r = read_all(write(tmp_path, b""))
    assert len(ev) == 0 and not sites and r.stats.lines == 0 and r.stats.bad_lines == 0


def test_chunking_does_not_change_the_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    text = "".join(
        f"I  {0x400000 + int(x):08x},3\n SYSCALL[1,1](39) sys_getpid ()[sync] --> Success(0x1) \n"[
            : 14 if x % 7 else None
        ]
        for x in rng.integers(0, 1 << 20, 3000)
    ).replace(" SYSCALL", "SYSCALL")
    p = write(tmp_path, HEADER + text)
    whole, sites_whole, _ = read_all(p)
    for chunk_bytes in (64, 100, 4096):
        for max_events in (64, 1000):
            got, sites, _ = read_all(p, chunk_bytes=chunk_bytes, max_events=max_events)
            assert np.array_equal(got, whole)
            assert [(s.index, s.line) for s in sites] == [(s.index, s.line) for s in sites_whole]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([Ev.READ, Ev.WRITE, Ev.FETCH]),
            st.integers(0, USER_TOP - 64),  # below TASK_SIZE_MAX, as every user reference is
            st.integers(1, 64),
        ),
        max_size=300,
    )
)
def test_round_trip(tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[int, int, int]]) -> None:
    """Lackey text generated from random events reads back as those events (plus one event for
    each record that crosses a page)."""
    ev = np.zeros(len(rows), EVENT_DTYPE)
    ev["kind"] = [r[0] for r in rows]
    ev["a"] = [r[1] for r in rows]
    ev["cpl"] = 3
    sizes = np.array([r[2] for r in rows], np.int64)
    p = tmp_path_factory.mktemp("rt") / "t.lackey"
    p.write_text(HEADER + format_lackey(ev, sizes))
    got, _, r = read_all(p, chunk_bytes=512)
    expect = []
    for k, a, size in rows:
        expect.append((k, a))
        if (a & 0xFFF) + size > 0x1000:
            expect.append((k, (a | 0xFFF) + 1))
    assert list(zip(got["kind"].tolist(), got["a"].tolist(), strict=True)) == expect
    assert r.stats.refs == len(rows)


def test_a_record_at_or_above_the_user_top_is_a_bad_line_naming_file_and_line(tmp_path: Path) -> None:
    for addr, size in ((USER_TOP, 1), (USER_TOP - 4, 8), (0xFFFFFFFF81000000, 4), (0xFFFFFFFFFFFFFFFF, 1)):
        p = write(tmp_path, f"{HEADER}{BODY} L {addr:x},{size}\n")
        with pytest.raises(TraceError, match=rf"^{p}:8: address above the user address space"):
            read_all(p)
        ev, _, r = read_all(p, skip_bad=True)
        assert r.stats.bad_lines == 1 and len(ev) == 5  # M is a read and a write
    ev, _, _ = read_all(write(tmp_path, f" L {USER_TOP - 8:x},8\n"))  # the last user bytes are fine
    assert len(ev) == 1


def test_a_line_without_end_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    p = write(tmp_path, HEADER + BODY + "I  " + "4" * (3 << 20))
    for skip in (False, True):
        with pytest.raises(TraceError, match=rf"^{p}:8: a line longer than 1 MiB"):
            read_all(p, skip_bad=skip, chunk_bytes=1 << 16)


def test_a_syscall_number_past_int_digit_limits_is_a_bad_line(tmp_path: Path) -> None:
    p = write(tmp_path, HEADER + f"SYSCALL[1,1]({'9' * 5000}) sys_getpid ()[sync] --> Success(0x1)\n")
    with pytest.raises(TraceError, match=rf"^{p}:4: not a valgrind SYSCALL line"):
        read_all(p)
