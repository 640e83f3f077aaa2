"""The recording file format (version 1), its writer and its reader: docs/recording.md.

A recording is one xz stream (stdlib `lzma`). Decompressed it is:

    magic b"KAISREC\\0" | u16 version | u32 header length | header (UTF-8 JSON object)
    then records, each starting with a one-byte tag:
      b"T" transition: u8 kind, i16 syscall number (-1: none), u8 name length, name (ASCII),
           u8 flags (bit 0: a context switch ran inside), u32 n, n references
      b"U" user run:   u32 n, n references (the user-mode side between two transitions)
      b"S" user summary: u64 instructions, u64 loads, u64 stores (a user run the guest asked to
           have counted, not logged: the timer workload's spin loop)
      b"R" repeat:     u8 b"T" or b"U", u32 k: the k-th distinct transition (or user run) of the
           file again, identical (a steady-state syscall repeats exactly; xz alone cannot
           match a 10 KB repeat in fewer than ~40 tokens)
      b"E" end:        u64 transitions, u64 user runs and summaries (a file without it is
           truncated)

A reference is little-endian, packed: u64 virtual address, u8 op (fetch, load, store, cr3 write),
u8 size in bytes, u8 region tag (`REGIONS`), and, when the header says `"phys": true`, a u64
physical address. A CR3 write is its own reference, after the fetch of the `mov %reg,%cr3` it came
from (same address, size the instruction's length): the plugin cannot read the value written.
All integers little-endian. Records are streamed: the writer never holds more than one, the reader
yields one at a time.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

import numpy as np

from kaiser.inputs import InputError, open_input

MAGIC: Final = b"KAISREC\0"
VERSION: Final = 1
# CHOSEN: the largest header accepted (the kallsyms subset of a recording is well under 1 MiB).
HEADER_LIMIT: Final = 16 << 20
# CHOSEN: the most references one record may hold (a kernel side of a million references is
# far beyond any syscall here; a larger count is taken for corruption, not allocated).
REFS_LIMIT: Final = 1 << 24

# Reference ops, in the order of the `op` byte.
OPS: Final = ("fetch", "load", "store", "cr3")
FETCH, LOAD, STORE, CR3 = range(4)
# Region tags, in the order of the `region` byte (regions.py says how an address gets one).
REGIONS: Final = (
    "user",
    "entry_text",
    "kernel_text",
    "kernel_data",
    "direct_map",
    "task_stack",
    "cpu_entry_area",
    "percpu",
    "other",
)
# Transition kinds, in the order of the `kind` byte.
KINDS: Final = ("syscall", "interrupt", "exception", "other")

REF_DTYPE: Final = np.dtype([("vaddr", "<u8"), ("op", "u1"), ("size", "u1"), ("region", "u1")])
REF_PHYS_DTYPE: Final = np.dtype([("vaddr", "<u8"), ("op", "u1"), ("size", "u1"), ("region", "u1"), ("paddr", "<u8")])
# The header keys every recording has, and their JSON types.
HEADER_KEYS: Final[Mapping[str, type | tuple[type, ...]]] = {
    "format": str,
    "version": int,
    "kernel_release": str,
    "kernel_version": str,
    "cmdline": str,
    "cpu_model": str,
    "workload": str,
    "calls": int,
    "pti": bool,
    "kaslr": bool,
    "phys": bool,
    "regions": dict,
    "symbols": list,
}
FORMAT_NAME: Final = "kaiser-recording"

_PREAMBLE = struct.Struct("<8sHI")
_TRANSITION = struct.Struct("<BhB")  # kind, syscall number, name length
_TRANSITION_TAIL = struct.Struct("<BI")  # flags, n
_COUNT = struct.Struct("<I")
_END = struct.Struct("<QQ")
_SUMMARY = struct.Struct("<QQQ")


def ref_dtype(phys: bool) -> np.dtype[Any]:
    """The reference layout of a recording with or without physical addresses."""
    return REF_PHYS_DTYPE if phys else REF_DTYPE


@dataclass(frozen=True)
class Transition:
    """One user-to-kernel-and-back transition: what entered the kernel and every reference the
    kernel made until it returned to user mode."""

    kind: str  # one of KINDS
    name: str  # syscall name ("getppid"), "page_fault", "apic_timer_interrupt", ...
    nr: int  # syscall number, -1 for none
    switched: bool  # a context switch (__switch_to_asm) ran inside
    refs: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class UserRun:
    """The user-mode references between two transitions."""

    refs: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class UserSummary:
    """A user-mode run between two transitions, counted rather than logged."""

    instructions: int
    loads: int
    stores: int


Record = Transition | UserRun | UserSummary


def check_header(header: Mapping[str, Any]) -> list[str]:
    """What is wrong with a header (empty when nothing is)."""
    problems = []
    for key, kind in HEADER_KEYS.items():
        if key not in header:
            problems.append(f"header has no {key!r}")
        elif not isinstance(header[key], kind) or (kind is int and isinstance(header[key], bool)):
            problems.append(f"header {key!r} is {type(header[key]).__name__}, not {getattr(kind, '__name__', kind)}")
    if not problems and header["format"] != FORMAT_NAME:
        problems.append(f"header format is {header['format']!r}, not {FORMAT_NAME!r}")
    return problems


class RecordingWriter:
    """Streams a recording to `path`: the header now, then one record per call, the end record
    on `close` (a context manager)."""

    def __init__(self, path: str | os.PathLike[str], header: Mapping[str, Any], *, preset: int = 6) -> None:
        header = {"format": FORMAT_NAME, "version": VERSION, **header}
        problems = check_header(header)
        if problems:
            raise ValueError("; ".join(problems))
        self.phys = bool(header["phys"])
        self._dtype = ref_dtype(self.phys)
        self._out = lzma.open(Path(path), "wb", format=lzma.FORMAT_XZ, preset=preset)  # noqa: SIM115 (closed by close)
        blob = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
        self._out.write(_PREAMBLE.pack(MAGIC, VERSION, len(blob)) + blob)
        self.transitions = 0
        self.user_runs = 0
        self._seen: dict[bytes, dict[bytes, int]] = {b"T": {}, b"U": {}}

    def _put(self, tag: bytes, body: bytes) -> None:
        """A record, or a repeat of the identical one written before."""
        seen = self._seen[tag]
        digest = hashlib.blake2b(body, digest_size=16).digest()
        k = seen.get(digest)
        if k is None:
            seen[digest] = len(seen)
            self._out.write(tag + body)
        else:
            self._out.write(b"R" + tag + _COUNT.pack(k))

    def _refs(self, refs: np.ndarray) -> bytes:
        arr = np.asarray(refs)
        if arr.dtype != self._dtype:
            raise ValueError(f"references have dtype {arr.dtype}, not {self._dtype}")
        return _COUNT.pack(len(arr)) + arr.tobytes()

    def transition(self, kind: str, name: str, nr: int, switched: bool, refs: np.ndarray) -> None:
        """Append one transition record."""
        raw = name.encode("ascii")
        if len(raw) > 255:
            raise ValueError(f"transition name longer than 255 bytes: {name[:40]}...")
        flags = 1 if switched else 0
        if len(refs) > REFS_LIMIT:
            raise ValueError(f"a transition of {len(refs)} references exceeds the format's {REFS_LIMIT}")
        head = _TRANSITION.pack(KINDS.index(kind), nr, len(raw)) + raw + bytes([flags])
        self._put(b"T", head + self._refs(refs))
        self.transitions += 1

    def user(self, refs: np.ndarray) -> None:
        """Append one user-run record (several, each of at most REFS_LIMIT references, for a
        longer run)."""
        for start in range(0, max(len(refs), 1), REFS_LIMIT):
            self._put(b"U", self._refs(refs[start : start + REFS_LIMIT]))
            self.user_runs += 1

    def user_summary(self, instructions: int, loads: int, stores: int) -> None:
        """Append one user-summary record."""
        self._out.write(b"S" + _SUMMARY.pack(instructions, loads, stores))
        self.user_runs += 1

    def close(self) -> None:
        """Write the end record and finish the xz stream."""
        self._out.write(b"E" + _END.pack(self.transitions, self.user_runs))
        self._out.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:  # leave no file that looks finished
            self._out.close()


class _Stream:
    """Decompressed bytes with their offset, every failure an InputError naming the place."""

    def __init__(self, path: Path, raw: BinaryIO) -> None:
        self.path = path
        self.raw = raw
        self.xz = lzma.LZMAFile(raw, "rb")  # noqa: SIM115 (closed with the reader)
        self.offset = 0  # into the decompressed stream

    def fail(self, message: str, offset: int | None = None) -> InputError:
        at = self.offset if offset is None else offset
        return InputError(self.path, f"recording: {message} (decompressed offset)", offset=at)

    def read(self, n: int, what: str) -> bytes:
        try:
            data = self.xz.read(n)
        except EOFError:
            raise InputError(
                self.path, "recording: xz stream truncated (compressed file ends early)", offset=self._raw_pos()
            ) from None
        except lzma.LZMAError as exc:
            raise InputError(self.path, f"recording: not a valid xz stream ({exc})", offset=self._raw_pos()) from None
        if len(data) < n:
            raise self.fail(f"truncated in {what}: {len(data)} of {n} bytes")
        self.offset += n
        return data

    def _raw_pos(self) -> int:
        try:
            return self.raw.tell()
        except (OSError, ValueError):
            return 0


def _read_header(s: _Stream) -> dict[str, Any]:
    magic, version, length = _PREAMBLE.unpack(s.read(_PREAMBLE.size, "the preamble"))
    if magic != MAGIC:
        raise s.fail(f"not a kaiser recording (magic {magic!r})", 0)
    if version != VERSION:
        raise s.fail(f"format version {version}; this kaiser reads version {VERSION}", 8)
    if length > HEADER_LIMIT:
        raise s.fail(f"header length {length} exceeds {HEADER_LIMIT}", 10)
    start = s.offset
    blob = s.read(length, "the header")
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise s.fail(f"header is not UTF-8 JSON ({exc})", start) from None
    if not isinstance(header, dict):
        raise s.fail("header is not a JSON object", start)
    problems = check_header(header)
    if problems:
        raise s.fail(problems[0], start)
    if header["version"] != VERSION:
        raise s.fail(f"header version {header['version']} differs from the preamble's {VERSION}", start)
    return header


def _read_refs(s: _Stream, dtype: np.dtype[Any], what: str) -> np.ndarray:
    (n,) = _COUNT.unpack(s.read(_COUNT.size, what))
    if n > REFS_LIMIT:
        raise s.fail(f"{what} claims {n} references (limit {REFS_LIMIT})", s.offset - _COUNT.size)
    start = s.offset
    refs = np.frombuffer(s.read(n * dtype.itemsize, what), dtype=dtype)
    bad = np.flatnonzero((refs["op"] >= len(OPS)) | (refs["region"] >= len(REGIONS)) | (refs["size"] == 0))
    if len(bad):
        i = int(bad[0])
        r = refs[i]
        raise s.fail(
            f"{what}: reference {i} has op {r['op']}, size {r['size']}, region {r['region']}",
            start + i * dtype.itemsize,
        )
    return refs


class RecordingReader:
    """A recording opened for streaming: `header`, then `records()` once, in file order."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._raw = open_input(self.path, "recording")
        self._s = _Stream(self.path, self._raw)
        self.header = _read_header(self._s)
        self.dtype = ref_dtype(self.header["phys"])

    def records(self) -> Iterator[Record]:
        """Every record in order; an InputError for any malformed or missing part."""
        s = self._s
        counts = [0, 0]
        distinct: dict[bytes, list[Record]] = {b"T": [], b"U": []}
        while True:
            at = s.offset
            tag = s.read(1, "a record tag")
            if tag == b"T":
                kind, nr, length = _TRANSITION.unpack(s.read(_TRANSITION.size, "a transition"))
                if kind >= len(KINDS):
                    raise s.fail(f"transition kind {kind} unknown", at + 1)
                name_raw = s.read(length, "a transition name")
                if not name_raw.isascii():
                    raise s.fail("transition name is not ASCII", at + 1 + _TRANSITION.size)
                (flags,) = s.read(1, "a transition")
                if flags > 1:
                    raise s.fail(f"transition flags {flags:#x} unknown", s.offset - 1)
                refs = _read_refs(s, self.dtype, "a transition")
                counts[0] += 1
                rec: Record = Transition(KINDS[kind], name_raw.decode("ascii"), nr, bool(flags), refs)
                distinct[b"T"].append(rec)
                yield rec
            elif tag == b"U":
                counts[1] += 1
                rec = UserRun(_read_refs(s, self.dtype, "a user run"))
                distinct[b"U"].append(rec)
                yield rec
            elif tag == b"R":
                which = s.read(1, "a repeat")
                (k,) = _COUNT.unpack(s.read(_COUNT.size, "a repeat"))
                if which not in distinct:
                    raise s.fail(f"repeat of unknown record type {which!r}", at + 1)
                if k >= len(distinct[which]):
                    raise s.fail(f"repeat of record {k}; only {len(distinct[which])} so far", at + 2)
                counts[0 if which == b"T" else 1] += 1
                yield distinct[which][k]
            elif tag == b"S":
                counts[1] += 1
                yield UserSummary(*_SUMMARY.unpack(s.read(_SUMMARY.size, "a user summary")))
            elif tag == b"E":
                transitions, users = _END.unpack(s.read(_END.size, "the end record"))
                if (transitions, users) != tuple(counts):
                    raise s.fail(
                        f"end record counts {transitions} transitions and {users} user runs/summaries; "
                        f"the file has {counts[0]} and {counts[1]}",
                        at,
                    )
                try:
                    extra = s.xz.read(1)
                except (EOFError, lzma.LZMAError):
                    extra = b"?"
                if extra:
                    raise s.fail("data after the end record", s.offset)
                return
            else:
                raise s.fail(f"unknown record tag {tag!r}", at)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Only the header of a recording."""
    with RecordingReader(path) as r:
        return r.header


def read_recording(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[Record]]:
    """The header and every record of a recording, checked to the end."""
    with RecordingReader(path) as r:
        return r.header, list(r.records())
