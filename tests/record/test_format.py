"""The recording format: writer/reader round trip, and damaged files refused with their offset."""

from __future__ import annotations

import lzma
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaiser.inputs import InputError
from kaiser.record.format import (
    KINDS,
    OPS,
    REGIONS,
    RecordingReader,
    RecordingWriter,
    Transition,
    UserRun,
    UserSummary,
    read_recording,
    ref_dtype,
)


def header(phys: bool = False) -> dict[str, object]:
    return {
        "kernel_release": "6.1.0-test",
        "kernel_version": "Linux version 6.1.0-test",
        "cmdline": "console=ttyS0 pti=on",
        "cpu_model": "Haswell",
        "workload": "getppid",
        "calls": 3,
        "pti": True,
        "kaslr": False,
        "phys": phys,
        "regions": {"entry_text": [[0xFFFFFFFF81E00000, 0xFFFFFFFF81E03000]]},
        "symbols": [[0xFFFFFFFF81E00000, "T", "entry_SYSCALL_64"]],
    }


def refs_strategy(phys: bool) -> st.SearchStrategy[np.ndarray]:
    one = st.tuples(
        st.integers(0, 2**64 - 1),
        st.integers(0, len(OPS) - 1),
        st.integers(1, 255),
        st.integers(0, len(REGIONS) - 1),
        st.integers(0, 2**52 - 1),
    )

    def build(rows: list[tuple[int, int, int, int, int]]) -> np.ndarray:
        arr = np.zeros(len(rows), dtype=ref_dtype(phys))
        for i, (va, op, size, region, pa) in enumerate(rows):
            arr[i]["vaddr"], arr[i]["op"], arr[i]["size"], arr[i]["region"] = va, op, size, region
            if phys:
                arr[i]["paddr"] = pa
        return arr

    return st.lists(one, max_size=20).map(build)


@st.composite
def recordings(draw: st.DrawFn) -> tuple[bool, list[tuple[str, tuple[object, ...]]]]:
    phys = draw(st.booleans())
    items: list[tuple[str, tuple[object, ...]]] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            name = draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30))
            items.append(
                (
                    "T",
                    (
                        draw(st.sampled_from(KINDS)),
                        name,
                        draw(st.integers(-1, 2**15 - 1)),
                        draw(st.booleans()),
                        draw(refs_strategy(phys)),
                    ),
                )
            )
        elif draw(st.booleans()):
            items.append(("U", (draw(refs_strategy(phys)),)))
        else:
            items.append(("S", tuple(draw(st.integers(0, 2**64 - 1)) for _ in range(3))))
        if items and draw(st.booleans()):  # an identical record again: written as a repeat
            items.append(draw(st.sampled_from(items)))
    return phys, items


def write(path: Path, phys: bool, items: list[tuple[str, tuple[object, ...]]]) -> None:
    with RecordingWriter(path, header(phys)) as w:
        for tag, args in items:
            if tag == "T":
                w.transition(*args)  # type: ignore[arg-type]
            elif tag == "U":
                w.user(*args)  # type: ignore[arg-type]
            else:
                w.user_summary(*args)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recordings())
def test_round_trip(tmp_path: Path, rec: tuple[bool, list[tuple[str, tuple[object, ...]]]]) -> None:
    phys, items = rec
    path = tmp_path / "r.krec"
    write(path, phys, items)
    head, records = read_recording(path)
    assert head["phys"] is phys and head["workload"] == "getppid" and head["version"] == 1
    assert len(records) == len(items)
    for got, (tag, args) in zip(records, items, strict=True):
        if tag == "T":
            assert isinstance(got, Transition)
            assert (got.kind, got.name, got.nr, got.switched) == args[:4]
            assert np.array_equal(got.refs, args[4])  # type: ignore[arg-type]
        elif tag == "U":
            assert isinstance(got, UserRun) and np.array_equal(got.refs, args[0])  # type: ignore[arg-type]
        else:
            assert isinstance(got, UserSummary) and (got.instructions, got.loads, got.stores) == args


def test_repeats_are_written_once(tmp_path: Path) -> None:
    """Identical transitions cost a repeat record, not their references again."""
    refs = np.zeros(2000, dtype=ref_dtype(False))
    refs["size"], refs["vaddr"] = 1, np.arange(2000) * 4096
    path = tmp_path / "rep.krec"
    write(path, False, [("T", ("syscall", "close", 3, False, refs))] * 100)
    raw = raw_stream(path)
    assert raw.count(b"RT") == 99 and len(raw) < 2 * refs.nbytes
    assert len(read_recording(path)[1]) == 100


def sample(tmp_path: Path) -> Path:
    path = tmp_path / "s.krec"
    refs = np.zeros(50, dtype=ref_dtype(False))
    refs["size"] = 1
    write(path, False, [("T", ("syscall", "getppid", 110, False, refs)), ("U", (refs,))] * 40)
    return path


def consume(path: Path) -> None:
    with RecordingReader(path) as r:
        for _ in r.records():
            pass


def test_truncated_compressed_file_names_an_offset(tmp_path: Path) -> None:
    path = sample(tmp_path)
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.krec"
        bad.write_bytes(data[:cut])
        with pytest.raises(InputError) as exc:
            consume(bad)
        assert exc.value.offset is not None and "\n" not in str(exc.value)
        assert str(exc.value).startswith(f"{bad}: byte ")


def raw_stream(path: Path) -> bytes:
    return lzma.decompress(path.read_bytes())


def test_truncated_stream_is_refused_at_its_end(tmp_path: Path) -> None:
    """A stream cut inside the records (a well-formed xz stream of fewer bytes) has no end record."""
    raw = raw_stream(sample(tmp_path))
    for cut in (5, 20, len(raw) // 3, len(raw) - 1):
        bad = tmp_path / "short.krec"
        bad.write_bytes(lzma.compress(raw[:cut], format=lzma.FORMAT_XZ))
        with pytest.raises(InputError, match="truncated") as exc:
            consume(bad)
        assert exc.value.offset is not None and exc.value.offset <= cut


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_garbled_stream_is_refused_or_read_consistently(tmp_path: Path, data: st.DataObject) -> None:
    """Any byte of the decompressed stream changed: an InputError with an offset, or (where the
    byte is an address or a name) a file that still reads to its end record."""
    raw = bytearray(raw_stream(sample(tmp_path)))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    bad = tmp_path / "garbled.krec"
    bad.write_bytes(lzma.compress(bytes(raw), format=lzma.FORMAT_XZ))
    try:
        consume(bad)
    except InputError as exc:
        assert exc.offset is not None and "\n" not in str(exc)


def test_garbled_compressed_bytes_are_refused(tmp_path: Path) -> None:
    data = bytearray(sample(tmp_path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "xz.krec"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError) as exc:
        consume(bad)
    assert exc.value.offset is not None


def test_bad_magic_and_header(tmp_path: Path) -> None:
    bad = tmp_path / "magic.krec"
    bad.write_bytes(lzma.compress(b"NOTAREC\0" + bytes(20), format=lzma.FORMAT_XZ))
    with pytest.raises(InputError, match="not a kaiser recording"):
        consume(bad)
    raw = bytearray(raw_stream(sample(tmp_path)))
    raw[14:20] = b"[1,2] "  # the JSON header's first bytes
    bad.write_bytes(lzma.compress(bytes(raw), format=lzma.FORMAT_XZ))
    with pytest.raises(InputError, match="byte 14"):
        consume(bad)
