"""The binary cache of a parsed trace: reused, invalidated by size, mtime and parser version,
never a wrong answer when corrupt (every part of an entry is damaged in turn)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaiser.traces import trace_cache
from kaiser.traces.lackey import LackeyReader, TraceError
from kaiser.traces.multireplay import replay_trace
from kaiser.x86.events import EVENT_DTYPE

TEXT = (
    "==9== Lackey\n"
    + "".join(
        f"I  {0x400000 + 3 * i:08x},3\n L {0x601000 + 8 * i:x},8\n S {0x7FF000 + 8 * i:x},8\n" for i in range(300)
    )
    + "SYSCALL[9,1](39) sys_getpid ()[sync] --> Success(0x9)\n"
    + " M 601ffc,8\n"
    + "SYSCALL[9,1](231) exit_group( 0 ) --> [pre-success] Success(0x0)\n"
)
CONFIGS = [("nopti", True), ("linux", False)]


def trace_file(tmp_path: Path, text: str = TEXT) -> Path:
    p = tmp_path / "t.lackey"
    p.write_text(text)
    return p


def entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json"))


def summary(r: object) -> list[object]:
    return [(x.variant, x.pcid, x.counters, x.events, x.syscalls, x.pages) for x in r.results]  # type: ignore[attr-defined]


def test_second_run_reads_the_cache_and_agrees(tmp_path: Path, private_trace_cache: Path) -> None:
    trace = trace_file(tmp_path)
    text = replay_trace(trace, CONFIGS)
    first = replay_trace(trace, CONFIGS, cache=True, chunk_bytes=256)
    assert not first.cached and len(entries(private_trace_cache)) == 1
    again = replay_trace(trace, CONFIGS, cache=True, chunk_bytes=256)
    assert again.cached
    assert summary(again) == summary(first) == summary(text)
    assert again.stats == first.stats == text.stats and again.syscall_names == text.syscall_names


def test_no_cache_writes_nothing(tmp_path: Path, private_trace_cache: Path) -> None:
    replay_trace(trace_file(tmp_path), CONFIGS, cache=False)
    assert not list(private_trace_cache.iterdir())


def test_a_pass_stopped_early_writes_no_entry(tmp_path: Path, private_trace_cache: Path) -> None:
    got = replay_trace(trace_file(tmp_path), CONFIGS, cache=True, chunk_bytes=64, max_events=20)
    assert got.stats["sliced"] and not entries(private_trace_cache)
    assert not [p for p in private_trace_cache.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("change", ["append", "mtime"])
def test_a_changed_file_is_parsed_again(tmp_path: Path, private_trace_cache: Path, change: str) -> None:
    trace = trace_file(tmp_path)
    replay_trace(trace, CONFIGS, cache=True)
    old = entries(private_trace_cache)
    if change == "append":
        with trace.open("a") as f:
            f.write("I  00400000,2\n")
    else:
        st_ = trace.stat()
        os.utime(trace, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000_000))
    got = replay_trace(trace, CONFIGS, cache=True)
    assert not got.cached
    assert summary(got) == summary(replay_trace(trace, CONFIGS))
    now = entries(private_trace_cache)
    assert len(now) == 1 and now != old  # the stale entry of the same file went


def test_a_new_parser_version_is_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = trace_file(tmp_path)
    replay_trace(trace, CONFIGS, cache=True)
    assert replay_trace(trace, CONFIGS, cache=True).cached
    monkeypatch.setattr(trace_cache, "PARSER_VERSION", trace_cache.PARSER_VERSION + 1)
    assert not replay_trace(trace, CONFIGS, cache=True).cached


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _edit_json(path: Path, edit: str) -> None:
    meta = json.loads(path.read_text())
    if edit == "site":
        meta["sites"][0]["nr"] = 0  # getpid -> read: a different answer if it were believed
    elif edit == "stats":
        meta["stats"]["refs"] += 1
    elif edit == "chunks":
        meta["chunks"][0][0] -= 1
    path.write_text(json.dumps(meta))


CORRUPTIONS = [
    ("events", "flip"),
    ("events", "truncate"),
    ("events", "delete"),
    ("pages", "flip"),
    ("pages", "truncate"),
    ("json", "garble"),
    ("json", "site"),
    ("json", "stats"),
    ("json", "chunks"),
]


@pytest.mark.parametrize(("part", "how"), CORRUPTIONS)
def test_a_corrupt_entry_is_parsed_again_never_believed(
    tmp_path: Path, private_trace_cache: Path, part: str, how: str
) -> None:
    trace = trace_file(tmp_path)
    truth = replay_trace(trace, CONFIGS)
    replay_trace(trace, CONFIGS, cache=True, chunk_bytes=512)
    (meta,) = entries(private_trace_cache)
    target = meta.with_suffix(f".{part}")
    assert target.stat().st_size > 0
    if how == "flip":
        _flip(target, target.stat().st_size // 2)
    elif how == "truncate":
        target.write_bytes(target.read_bytes()[:-8])
    elif how == "delete":
        target.unlink()
    elif how == "garble":
        target.write_text(target.read_text()[:-10])
    else:
        _edit_json(target, how)
    got = replay_trace(trace, CONFIGS, cache=True, chunk_bytes=512)
    assert not got.cached
    assert summary(got) == summary(truth) and got.stats == truth.stats and got.syscall_names == truth.syscall_names
    assert replay_trace(trace, CONFIGS, cache=True, chunk_bytes=512).cached  # written afresh


def test_an_entry_of_a_skip_bad_parse_does_not_excuse_a_strict_reader(tmp_path: Path) -> None:
    trace = trace_file(tmp_path, TEXT + "nonsense\n")
    got = replay_trace(trace, CONFIGS, cache=True, skip_bad=True)
    assert got.stats["bad_lines"] == 1
    assert replay_trace(trace, CONFIGS, cache=True, skip_bad=True).cached
    with pytest.raises(TraceError, match=rf"^{trace}:\d+: not a lackey line"):
        replay_trace(trace, CONFIGS, cache=True)


def test_an_unwritable_cache_directory_is_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("KAISER_TRACE_CACHE", str(blocker / "cache"))  # below a regular file
    trace = trace_file(tmp_path)
    got = replay_trace(trace, CONFIGS, cache=True)
    assert not got.cached and summary(got) == summary(replay_trace(trace, CONFIGS))


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KAISER_TRACE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert trace_cache.cache_dir() == tmp_path / "kaiser" / "traces"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # not absolute: ignored (XDG base directory spec)
    assert trace_cache.cache_dir() == Path.home() / ".cache" / "kaiser" / "traces"


@settings(max_examples=40, deadline=None)
@given(
    words=st.lists(st.integers(0, (1 << 64) - 1), max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=5),
    flip=st.integers(0, 63),
)
def test_digest_is_the_same_however_cut_and_changes_with_any_word(words: list[int], cuts: list[int], flip: int) -> None:
    arr = np.array(words, np.uint64)
    d = trace_cache.Digest()
    lo = 0
    for c in sorted(cuts):
        d.add(arr[lo:c] if c > lo else arr[:0])
        lo = max(lo, c)
    d.add(arr[lo:])
    assert d.value == trace_cache.digest(arr)
    if words:
        bad = arr.copy()
        bad[flip % len(bad)] ^= np.uint64(1 << (flip % 64))
        assert trace_cache.digest(bad) != trace_cache.digest(arr)


def test_pack_unpack_round_trip(tmp_path: Path) -> None:
    trace = trace_file(tmp_path)
    events = np.concatenate([c.events for c in LackeyReader(trace)])
    back = trace_cache.unpack_events(trace_cache.pack_events(events))
    assert back.dtype == EVENT_DTYPE and back.tobytes() == events.tobytes()
