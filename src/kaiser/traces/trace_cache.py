"""A binary cache of a parsed lackey trace: the next run reads events, not text.

Parsing valgrind lackey's text is most of a replay's time (issue 15). The first full read of a
trace writes what `LackeyReader` yielded, chunk for chunk, beside it in the cache directory; the
next read of the same file yields the same chunks from there at memory speed.

Where: `$KAISER_TRACE_CACHE` if set, else `$XDG_CACHE_HOME/kaiser/traces`, else
`~/.cache/kaiser/traces` (CHOSEN: the XDG base-directory convention, so a user finds and clears
it where other tools keep theirs).

Key: the trace's resolved path, size, mtime (ns), `lackey.PARSER_VERSION`, this format's
version, and the reader's settings that shape its output (user_top, chunk_bytes, max_events).
A changed file (size or mtime), a new parser or different settings miss and re-parse. When an
entry is written, older entries for the same path go (CHOSEN: one entry per trace file, so the
cache never holds more than one copy of each trace).

Format (CHOSEN: raw little-endian arrays, memory-mapped when read):
- `KEY.events`: one uint64 per event, `a | kind << 62` (user events only: cpl 3, aux and b 0;
  lackey addresses are below `USER_TOP` < 2**47 and kinds are READ/WRITE/FETCH, 0..2);
- `KEY.pages`: the reader's candidate new pages of every chunk, one after another (uint64);
- `KEY.json`: the key, per chunk (events, pages, refs, first line), the system-call sites, the
  reader's stats, and a digest of each array and of the JSON body itself; written last, so an
  entry without it is incomplete and never read.
Anything that does not check out (a missing or short file, a digest that differs, JSON that does
not parse, a key that differs) is a miss: the entry is removed and the trace parsed again, never
a wrong answer (tests/traces/test_trace_cache.py corrupts each part).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import numpy as np

from kaiser.traces.lackey import PARSER_VERSION, LackeyChunk, LackeyStats, SyscallSite
from kaiser.x86.events import EVENT_DTYPE

FORMAT_VERSION: Final = 1
KIND_SHIFT: Final = 62  # packed event: a | kind << 62
ADDR_MASK: Final = (1 << KIND_SHIFT) - 1
ENV_DIR: Final = "KAISER_TRACE_CACHE"


class CacheMiss(Exception):
    """An entry that cannot be used (absent, stale or corrupt)."""


def cache_dir() -> Path:
    """The cache directory (see the module docstring); not created here."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "kaiser" / "traces"


def trace_key(trace: Path, *, user_top: int, chunk_bytes: int, max_events: int) -> dict[str, Any]:
    """What an entry must match to be reused for `trace` read with these settings."""
    st = trace.stat()
    return {
        "path": str(trace.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "parser_version": PARSER_VERSION,
        "format_version": FORMAT_VERSION,
        "user_top": user_top,
        "chunk_bytes": chunk_bytes,
        "max_events": max_events,
    }


def _name(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


# ---- compiled helpers (numba imported on first use, as lackey's scan) ----------------------------
DIGEST_SEED: Final = 0x243F6A8885A308D3
LANES: Final = 4


def _digest(words: np.ndarray, lanes: np.ndarray, offset: int) -> None:
    """Mix `words` into the running digest `lanes` (4 uint64), word i of the whole stream into
    lane i % 4 (`offset`: words mixed in before), each as splitmix64's finaliser mixes: a changed,
    dropped or moved word changes the result but with probability about 2**-64. Four lanes, so
    that the four multiply chains run side by side."""
    m1 = np.uint64(0xBF58476D1CE4E5B9)
    m2 = np.uint64(0x94D049BB133111EB)
    n = words.shape[0]
    i = 0
    while i < n and (offset + i) % 4 != 0:  # up to the next lane-0 word
        j = (offset + i) % 4
        z = lanes[j] ^ words[i]
        z = (z ^ (z >> np.uint64(30))) * m1
        z = (z ^ (z >> np.uint64(27))) * m2
        lanes[j] = z ^ (z >> np.uint64(31))
        i += 1
    h0, h1, h2, h3 = lanes[0], lanes[1], lanes[2], lanes[3]
    while i + 4 <= n:
        z0 = h0 ^ words[i]
        z1 = h1 ^ words[i + 1]
        z2 = h2 ^ words[i + 2]
        z3 = h3 ^ words[i + 3]
        z0 = (z0 ^ (z0 >> np.uint64(30))) * m1
        z1 = (z1 ^ (z1 >> np.uint64(30))) * m1
        z2 = (z2 ^ (z2 >> np.uint64(30))) * m1
        z3 = (z3 ^ (z3 >> np.uint64(30))) * m1
        z0 = (z0 ^ (z0 >> np.uint64(27))) * m2
        z1 = (z1 ^ (z1 >> np.uint64(27))) * m2
        z2 = (z2 ^ (z2 >> np.uint64(27))) * m2
        z3 = (z3 ^ (z3 >> np.uint64(27))) * m2
        h0 = z0 ^ (z0 >> np.uint64(31))
        h1 = z1 ^ (z1 >> np.uint64(31))
        h2 = z2 ^ (z2 >> np.uint64(31))
        h3 = z3 ^ (z3 >> np.uint64(31))
        i += 4
    lanes[0], lanes[1], lanes[2], lanes[3] = h0, h1, h2, h3
    while i < n:  # the tail
        j = (offset + i) % 4
        z = lanes[j] ^ words[i]
        z = (z ^ (z >> np.uint64(30))) * m1
        z = (z ^ (z >> np.uint64(27))) * m2
        lanes[j] = z ^ (z >> np.uint64(31))
        i += 1


def _pack(kind: np.ndarray, a: np.ndarray, out: np.ndarray) -> None:
    for i in range(kind.shape[0]):
        out[i] = a[i] | (np.uint64(kind[i]) << np.uint64(KIND_SHIFT))


def _unpack(
    packed: np.ndarray, kind: np.ndarray, cpl: np.ndarray, aux: np.ndarray, a: np.ndarray, b: np.ndarray
) -> None:
    mask = np.uint64(ADDR_MASK)
    for i in range(packed.shape[0]):
        x = packed[i]
        kind[i] = np.uint8(x >> np.uint64(KIND_SHIFT))
        cpl[i] = 3
        aux[i] = 0
        a[i] = x & mask
        b[i] = 0


@functools.cache
def _compiled() -> tuple[Any, Any, Any]:
    import numba

    jit = numba.njit(cache=True, nogil=True)
    return jit(_digest), jit(_pack), jit(_unpack)


class Digest:
    """The running digest of a stream of uint64 words fed in pieces (`add`); `value` is the same
    however the stream was cut."""

    def __init__(self) -> None:
        self.lanes = np.array([DIGEST_SEED + k for k in range(LANES)], np.uint64)
        self.n = 0

    def add(self, words: np.ndarray) -> Digest:
        _compiled()[0](np.ascontiguousarray(words, np.uint64), self.lanes, self.n)
        self.n += len(words)
        return self

    @property
    def value(self) -> str:
        return f"{self.n}:" + ":".join(f"{int(x):016x}" for x in self.lanes)


def digest(words: np.ndarray) -> str:
    """The digest of a whole array (`Digest`)."""
    return Digest().add(words).value


def pack_events(events: np.ndarray) -> np.ndarray:
    """User events (EVENT_DTYPE) as packed uint64 words."""
    out = np.empty(len(events), np.uint64)
    _compiled()[1](events["kind"], events["a"], out)
    return out


def unpack_events(packed: np.ndarray) -> np.ndarray:
    """Packed words back into a fresh EVENT_DTYPE array (cpl 3, aux and b 0)."""
    ev = np.empty(len(packed), EVENT_DTYPE)
    _compiled()[2](packed, ev["kind"], ev["cpl"], ev["aux"], ev["a"], ev["b"])
    return ev


# ---- sites and stats as JSON ----------------------------------------------------------------------
def _site_dict(s: SyscallSite) -> dict[str, Any]:
    d = dataclasses.asdict(s)
    d["args"] = list(s.args)
    return d


def _site(d: dict[str, Any]) -> SyscallSite:
    d = dict(d)
    d["args"] = tuple(d["args"])
    return SyscallSite(**d)


def _body_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# ---- reading ---------------------------------------------------------------------------------------
class CachedTrace:
    """A trace's chunks from its cache entry: `LackeyReader`'s interface (iteration, `stats`,
    `size()`); `stats` is the parse's, complete once iteration ends."""

    from_cache: Final = True

    def __init__(self, trace: Path, meta: dict[str, Any], packed: np.ndarray, pages: np.ndarray) -> None:
        self.path = trace
        self._meta = meta
        self._packed = packed
        self._pages = pages
        self.final_stats = LackeyStats(**meta["stats"])
        self.stats = LackeyStats()

    def size(self) -> int:
        return int(self._meta["key"]["size"])

    def __iter__(self) -> Iterator[LackeyChunk]:
        sites = [_site(d) for d in self._meta["sites"]]
        e0 = p0 = s0 = 0
        total = self.size()
        n_chunks = len(self._meta["chunks"])
        for k, (n_ev, n_pg, refs, first_line, n_sites) in enumerate(self._meta["chunks"]):
            events = unpack_events(self._packed[e0 : e0 + n_ev])
            chunk = LackeyChunk(events, sites[s0 : s0 + n_sites], self._pages[p0 : p0 + n_pg], first_line, refs)
            e0, p0, s0 = e0 + n_ev, p0 + n_pg, s0 + n_sites
            self.stats.refs += refs
            self.stats.events += n_ev
            self.stats.syscalls += n_sites
            self.stats.bytes = total * (k + 1) // n_chunks
            yield chunk
        self.stats = dataclasses.replace(self.final_stats, bad_examples=list(self.final_stats.bad_examples))


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):  # a directory we cannot write: nothing of ours is there
        path.unlink(missing_ok=True)


def _remove(base: Path) -> None:
    for ext in (".json", ".events", ".pages"):
        _unlink(base.with_suffix(ext))


def load(trace: Path, key: dict[str, Any], directory: Path | None = None) -> CachedTrace | None:
    """The cached parse of `trace` for `key`, or None (absent; stale or corrupt: removed)."""
    base = (directory or cache_dir()) / _name(key)
    meta_file = base.with_suffix(".json")
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        if not isinstance(meta, dict) or meta.get("key") != key:
            raise CacheMiss("key")
        body = {k: v for k, v in meta.items() if k != "body_sha256"}
        if meta.get("body_sha256") != _body_digest(body):
            raise CacheMiss("metadata digest")
        n_ev = sum(c[0] for c in meta["chunks"])
        n_pg = sum(c[1] for c in meta["chunks"])
        if sum(c[4] for c in meta["chunks"]) != len(meta["sites"]):
            raise CacheMiss("sites")
        packed = _read_words(base.with_suffix(".events"), n_ev)
        pages = _read_words(base.with_suffix(".pages"), n_pg)
        if digest(packed) != meta["events_digest"] or digest(pages) != meta["pages_digest"]:
            raise CacheMiss("array digest")
        return CachedTrace(trace, meta, packed, pages)
    except (CacheMiss, OSError, ValueError, KeyError, TypeError, IndexError):
        _remove(base)
        return None


def _read_words(path: Path, n: int) -> np.ndarray:
    """The file's n words, memory-mapped read-only (no copy: the digest and the unpacking read the
    page cache directly). Entries are replaced by rename, never rewritten in place, so a mapping
    stays whole while a newer entry is written."""
    if path.stat().st_size != 8 * n:
        raise CacheMiss(f"{path.name}: size")
    if not n:
        return np.zeros(0, np.uint64)
    return np.asarray(np.memmap(path, np.dtype("<u8"), "r", shape=(n,)))


# ---- writing ---------------------------------------------------------------------------------------
class CacheWriter:
    """Writes a parse chunk by chunk (`add`), complete with `finish(stats)`; `abort()` (or a
    parse that never finishes) leaves no entry. A write that fails (disk full, read-only
    directory) turns the writer off: the cache is an optimisation, never an error."""

    def __init__(self, key: dict[str, Any], directory: Path | None = None) -> None:
        self.key = key
        self.dir = directory or cache_dir()
        self.base = self.dir / _name(key)
        self.ok = True
        self._chunks: list[list[int]] = []
        self._sites: list[dict[str, Any]] = []
        self._digests = (Digest(), Digest())  # events, pages
        self._files: dict[str, Any] = {}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for ext in (".events", ".pages"):
                self._files[ext] = open(self._tmp(ext), "wb")  # noqa: SIM115 -- closed in finish/abort
        except OSError:
            self.abort()

    def _tmp(self, ext: str) -> Path:
        return self.base.with_suffix(f"{ext}.tmp{os.getpid()}")

    def add(self, chunk: LackeyChunk) -> None:
        if not self.ok:
            return
        packed = pack_events(chunk.events)
        pages = np.ascontiguousarray(chunk.new_pages, np.uint64)
        self._digests[0].add(packed)
        self._digests[1].add(pages)
        try:
            self._files[".events"].write(packed.astype("<u8", copy=False).tobytes())
            self._files[".pages"].write(pages.astype("<u8", copy=False).tobytes())
        except OSError:
            self.abort()
            return
        n = [len(chunk.events), len(chunk.new_pages), chunk.refs, chunk.first_line, len(chunk.syscalls)]
        self._chunks.append(n)
        self._sites.extend(_site_dict(s) for s in chunk.syscalls)

    def finish(self, stats: LackeyStats) -> bool:
        """Complete the entry (and remove older entries of the same trace); True if written."""
        if not self.ok:
            return False
        try:
            for f in self._files.values():
                f.close()
            body = {
                "key": self.key,
                "chunks": self._chunks,
                "sites": self._sites,
                "stats": stats.as_dict(),
                "events_digest": self._digests[0].value,
                "pages_digest": self._digests[1].value,
            }
            body["body_sha256"] = _body_digest(body)
            self._drop_older()
            os.replace(self._tmp(".events"), self.base.with_suffix(".events"))
            os.replace(self._tmp(".pages"), self.base.with_suffix(".pages"))
            tmp = self._tmp(".json")
            tmp.write_text(json.dumps(body))
            os.replace(tmp, self.base.with_suffix(".json"))
        except (OSError, CacheMiss):
            self.abort()
            return False
        return True

    def _drop_older(self) -> None:
        """Entries of the same trace path under another key (a changed file, an older parser)."""
        for meta_file in self.dir.glob("*.json"):
            if meta_file.stem == self.base.name:
                continue
            try:
                if json.loads(meta_file.read_text()).get("key", {}).get("path") == self.key["path"]:
                    _remove(meta_file.with_suffix(""))
            except (OSError, ValueError, AttributeError):
                continue

    def abort(self) -> None:
        self.ok = False
        for f in self._files.values():
            f.close()
        for ext in (".events", ".pages", ".json"):
            _unlink(self._tmp(ext))
