"""Valgrind lackey memory traces, streamed in chunks into `EVENT_DTYPE` arrays.

Input: the log of `valgrind --tool=lackey --trace-mem=yes [--trace-syscalls=yes] --log-file=F PROG`.
Lines (lackey's `trace_mem`, lk_main.c; addresses in hex, sizes in decimal):

    I  004014f0,2        instruction fetch        -> one FETCH event (cpl 3)
     L 1fff000780,8      data load                -> one READ event
     S 1fff000778,8      data store               -> one WRITE event
     M 1fff000598,8      modify (load then store) -> a READ event, then a WRITE event
    ==6822== ...         valgrind's header/footer (also `--N--` and `**N**` messages): skipped
    SYSCALL[6822,1](39) sys_getpid ()[sync] --> Success(0x1aa6)
                         a system call, with --trace-syscalls=yes (`kaiser.traces.interleave`)

An access whose bytes cross a 4 KiB page boundary touches two pages: it becomes one event per page
touched (the second at the start of the next page), because the processor translates both
(SDM Vol. 3A §4.10.2.3 caches per page). Sizes above 4096 are rejected as garbled.

Events are one per TLB lookup the reference needs, not one per byte or cache line; `refs` counts
lackey's records (I/L/S/M), `events` what they became (M and page-crossing add events).

The file is read in chunks of `chunk_bytes` (never whole); each chunk is cut at its last newline
and scanned by one compiled pass (`_scan`, numba) that writes the events straight into the
`EVENT_DTYPE` array and notes SYSCALL lines, bad lines and candidate new pages. A line that is
none of the above is bad: by default the reader raises `TraceError` naming the file and the line
number; with `skip_bad=True` bad lines are counted (`LackeyStats.bad_lines`, first few kept in
`bad_examples`) and skipped. A last line without a newline is truncated, hence bad.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np

from kaiser.inputs import open_input
from kaiser.x86.events import EVENT_DTYPE, Ev
from kaiser.x86.geometry import PAGE_SIZE

PAGE_SHIFT: Final = 12

MAX_SIZE: Final = PAGE_SIZE  # a record larger than a page is garbled (lackey's are <= 64 bytes)
CHUNK_BYTES: Final = 4 << 20  # bytes read per chunk
MAX_EVENTS: Final = 1 << 19  # events per scan call (a chunk may take several calls)
USER_CPL: Final = 3
SEEN_BITS: Final = 16  # direct-mapped filter of recently seen pages (new-page candidates)
# TASK_SIZE_MAX of 4-level paging, (1 << 47) - PAGE_SIZE (arch/x86/include/asm/page_64_types.h):
# no user reference reaches it, so a record at or above it is garbled (or not this machine's).
USER_TOP: Final = (1 << 47) - PAGE_SIZE
MAX_LINE: Final = 1 << 20  # CHOSEN: a lackey line is < 40 bytes, a SYSCALL line < 1 KiB; 1 MiB is no trace
# What the reader makes of a trace: bumped whenever the events, sites or stats it yields for the
# same bytes change, so that a binary cache of a parse (kaiser.traces.trace_cache) is not reused.
PARSER_VERSION: Final = 2

# _scan's per-line outcomes and the stats array layout.
(ST_LINES, ST_FETCH, ST_LOAD, ST_STORE, ST_MODIFY, ST_CROSS, ST_VALGRIND, ST_BLANK, ST_SYSCALL, ST_BAD) = range(10)
N_STATS: Final = 10
BAD_KEEP: Final = 16
BAD_SHAPE, BAD_HIGH = 0, 1  # why _scan found a line bad (badrec's 4th column)
_BAD_WHY: Final = ("not a lackey line", "address above the user address space")

_HEX = np.full(256, -1, np.int8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


class TraceError(ValueError):
    """A trace line that cannot be read: one line naming the file and the line number."""


@functools.cache
def _compiled_scan() -> Callable[..., int]:
    """`_scan` compiled by numba, imported here so that importing the reader (every command's
    start-up, through the CLI) does not pay for numba."""
    import numba

    scan: Callable[..., int] = numba.njit(cache=True, nogil=True)(_scan)
    return scan


def _scan(
    buf: np.ndarray,
    pos: int,
    end: int,
    kind: np.ndarray,
    addr: np.ndarray,
    cpl: np.ndarray,
    aux: np.ndarray,
    b: np.ndarray,
    hexv: np.ndarray,
    sysrec: np.ndarray,
    badrec: np.ndarray,
    stats: np.ndarray,
    seen: np.ndarray,
    newp: np.ndarray,
    out: np.ndarray,
    top: int = USER_TOP,
) -> int:
    """Scan complete lines of buf[pos:end] (end is just past a newline). Writes events into
    kind/addr/cpl (aux and b zeroed: the buffer is fresh, not cleared), SYSCALL lines into
    sysrec (start, end, event index, line index), bad lines into
    badrec (first BAD_KEEP, with the reason), candidate new pages into newp. A record reaching
    `top` or above is bad (BAD_HIGH). out = [events, syscalls, bad kept,
    new pages, lines]; returns the position reached (a line boundary): the caller calls again
    while it is < end (an output array filled up)."""
    ne = out[0]
    ns = out[1]
    nb = out[2]
    nn = out[3]
    line = out[4]
    cap_e = kind.shape[0] - 4
    cap_s = sysrec.shape[0]
    cap_n = newp.shape[0] - 2
    mask = np.uint64(seen.shape[0] - 1)
    golden = np.uint64(0x9E3779B97F4A7C15)
    sh = np.uint64(64 - SEEN_BITS)
    page_mask = np.uint64(PAGE_SIZE - 1)
    utop = np.uint64(top)
    while pos < end:
        if ne > cap_e or ns >= cap_s or nn > cap_n:
            break
        e = pos
        while buf[e] != 10:
            e += 1
        n = e - pos
        c0 = buf[pos]
        ok = False
        high = False
        k = -1
        p = pos + 3
        if n >= 3 and buf[pos + 2] == 32:
            c1 = buf[pos + 1]
            if c0 == 73 and c1 == 32:  # 'I '
                k = 0
            elif c0 == 32:
                if c1 == 76:  # L
                    k = 1
                elif c1 == 83:  # S
                    k = 2
                elif c1 == 77:  # M
                    k = 3
        if k >= 0:
            a = np.uint64(0)
            nd = 0
            while p < e and hexv[buf[p]] >= 0:
                a = (a << np.uint64(4)) | np.uint64(hexv[buf[p]])
                nd += 1
                p += 1
            if 1 <= nd <= 16 and p < e and buf[p] == 44:  # ','
                p += 1
                size = 0
                ns_d = 0
                while p < e and 48 <= buf[p] <= 57 and ns_d < 5:
                    size = size * 10 + (buf[p] - 48)
                    ns_d += 1
                    p += 1
                if ns_d >= 1 and p == e and size <= PAGE_SIZE and (a >= utop or a + np.uint64(size) > utop):
                    high = True
                elif ns_d >= 1 and p == e and size <= PAGE_SIZE:
                    ok = True
                    cross = size > 0 and (a & page_mask) + np.uint64(size) > np.uint64(PAGE_SIZE)
                    nxt = (a | page_mask) + np.uint64(1)
                    if k == 0:
                        kinds = (2, 2)
                        stats[ST_FETCH] += 1
                    elif k == 1:
                        kinds = (0, 0)
                        stats[ST_LOAD] += 1
                    elif k == 2:
                        kinds = (1, 1)
                        stats[ST_STORE] += 1
                    else:
                        kinds = (0, 1)
                        stats[ST_MODIFY] += 1
                    reps = 1 if k != 3 else 2
                    for r in range(reps):
                        kk = kinds[r]
                        kind[ne] = kk
                        addr[ne] = a
                        cpl[ne] = 3
                        aux[ne] = 0
                        b[ne] = 0
                        ne += 1
                        if cross:
                            kind[ne] = kk
                            addr[ne] = nxt
                            cpl[ne] = 3
                            aux[ne] = 0
                            b[ne] = 0
                            ne += 1
                    if cross:
                        stats[ST_CROSS] += 1
                    # candidate new pages: a direct-mapped filter of pages seen lately
                    pg = a >> np.uint64(PAGE_SHIFT)
                    h = (pg * golden) >> sh
                    if seen[h & mask] != pg:
                        seen[h & mask] = pg
                        newp[nn] = pg
                        nn += 1
                    if cross:
                        pg2 = nxt >> np.uint64(PAGE_SHIFT)
                        h2 = (pg2 * golden) >> sh
                        if seen[h2 & mask] != pg2:
                            seen[h2 & mask] = pg2
                            newp[nn] = pg2
                            nn += 1
        elif n == 0:
            ok = True
            stats[ST_BLANK] += 1
        elif n >= 2 and (c0 == 61 or c0 == 45 or c0 == 42) and buf[pos + 1] == c0:
            # '==pid==', '--pid--', '**pid**': valgrind's own messages
            q = pos + 2
            while q < e and 48 <= buf[q] <= 57:
                q += 1
            if q > pos + 2 and q + 1 < e and buf[q] == c0 and buf[q + 1] == c0:
                ok = True
                stats[ST_VALGRIND] += 1
        if not ok and n >= 8 and c0 == 83 and buf[pos + 1] == 89 and buf[pos + 2] == 83 and buf[pos + 7] == 91:
            ok = True  # 'SYSCALL['
            k = 9
        elif not ok and n >= 5 and c0 == 32 and buf[pos + 1] == 45 and buf[pos + 2] == 45 and buf[pos + 3] == 62:
            ok = True  # ' --> ...': the second half of a SYSCALL line valgrind split in two
            k = 9
        if ok and k == 9:
            sysrec[ns, 0] = pos
            sysrec[ns, 1] = e
            sysrec[ns, 2] = ne
            sysrec[ns, 3] = line
            ns += 1
            stats[ST_SYSCALL] += 1
        if not ok:
            stats[ST_BAD] += 1
            if nb < badrec.shape[0]:
                badrec[nb, 0] = pos
                badrec[nb, 1] = e
                badrec[nb, 2] = line
                badrec[nb, 3] = BAD_HIGH if high else BAD_SHAPE
                nb += 1
        stats[ST_LINES] += 1
        line += 1
        pos = e + 1
    out[0] = ne
    out[1] = ns
    out[2] = nb
    out[3] = nn
    out[4] = line
    return pos


# ---- system-call lines (valgrind --trace-syscalls=yes, coregrind/m_syswrap) ---------------------------
_SYS_HEAD = re.compile(rb"SYSCALL\[(\d+),(\d+)\]\((\d+)\) (.*)$")
_SYS_CALL = re.compile(rb"([A-Za-z_]\w*)\s*\((.*)\)\s*(\[sync\])?\s*-->\s*(.*?)\s*$")
_SYS_NOARROW = re.compile(rb"([A-Za-z_]\w*)\s*\((.*)\)\s*(\[sync\])?\s*$")
_SYS_UNIMPL = re.compile(rb"unimplemented \(by the kernel\) syscall: (\d+)! \((\w+)\)\s*$")
_SYS_DONE = re.compile(rb"\.\.\. \[async\] --> (.*?)\s*$")
_RESULT = re.compile(rb"(?:\[(pre-success|pre-fail|async)\]\s*)?(?:(Success|Failure)\((0x[0-9a-fA-F]+)\)|\.\.\.)?$")
_ARG = re.compile(rb"(?:^|,)\s*(-?0x[0-9a-fA-F]+|-?\d+)")


@dataclass
class SyscallSite:
    """A system call of the traced program at its exact place in the reference stream."""

    pid: int
    tid: int
    nr: int
    name: str  # valgrind's wrapper name without "sys_" (e.g. "read", "exit_group"); "ni_syscall" if unknown
    args: tuple[int, ...]  # the leading number of each argument, as valgrind printed it
    line: int  # 1-based line number in the trace
    index: int  # events of the trace (user references) before it, counted from the start
    at: int = 0  # events of its chunk before it
    success: bool | None = None  # None: no result printed (yet)
    result: int | None = None  # return value on success, errno on failure
    raw: str = ""

    @property
    def returned(self) -> int | None:
        return self.result if self.success else None


def _parse_result(text: bytes, site: SyscallSite) -> bool:
    m = _RESULT.fullmatch(text.strip())
    if not m:
        return False
    if m.group(2):
        site.success = m.group(2) == b"Success"
        site.result = int(m.group(3), 16)
    return True


def parse_syscall_line(line: bytes, lineno: int, index: int) -> SyscallSite | tuple[int, int, bytes] | None:
    """A `SYSCALL[...]` line: a new call (`SyscallSite`), an `[async]` completion (pid, tid and
    result text), or None if the line does not have valgrind's shape."""
    m = _SYS_HEAD.match(line)
    if not m:
        return None
    pid, tid, nr, rest = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
    done = _SYS_DONE.match(rest)
    if done:
        return pid, tid, done.group(1)
    site = SyscallSite(pid, tid, nr, "", (), lineno, index, raw=line.decode("ascii", "replace"))
    un = _SYS_UNIMPL.match(rest)
    if un:
        site.name = un.group(2).decode()
        return site
    call = _SYS_CALL.match(rest) or _SYS_NOARROW.match(rest)
    if not call:
        return None
    name = call.group(1).decode()
    site.name = name[4:] if name.startswith("sys_") else name
    site.args = tuple(int(a, 0) for a in _ARG.findall(call.group(2)))
    if call.re is _SYS_CALL and not _parse_result(call.group(4), site):
        return None
    return site


# ---- the reader ------------------------------------------------------------------------------------
@dataclass
class LackeyStats:
    """What a reader has read so far."""

    bytes: int = 0
    lines: int = 0
    refs: int = 0  # lackey records: instructions + loads + stores + modifies
    instructions: int = 0
    loads: int = 0
    stores: int = 0
    modifies: int = 0
    page_crossings: int = 0
    events: int = 0
    syscalls: int = 0
    valgrind_lines: int = 0
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dict(vars(self))


@dataclass
class LackeyChunk:
    """Events of consecutive trace lines and the system calls among them."""

    events: np.ndarray  # EVENT_DTYPE, cpl 3
    syscalls: list[SyscallSite]  # in order; `at` indexes `events`
    new_pages: np.ndarray  # uint64 page numbers possibly not seen in earlier chunks (a superset)
    first_line: int  # 1-based
    refs: int


class LackeyReader:
    """Iterate over a lackey trace in chunks; `stats` accumulates while iterating."""

    def __init__(
        self,
        path: str | Path,
        *,
        skip_bad: bool = False,
        chunk_bytes: int = CHUNK_BYTES,
        max_events: int = MAX_EVENTS,
        user_top: int = USER_TOP,
    ) -> None:
        self.path = Path(path)
        self.user_top = user_top
        self.skip_bad = skip_bad
        self.chunk_bytes = max(chunk_bytes, 64)
        self.max_events = max(max_events, 64)
        self.stats = LackeyStats()
        self._stat = np.zeros(N_STATS, np.int64)
        self._seen = np.full(1 << SEEN_BITS, np.uint64(0xFFFF_FFFF_FFFF_FFFF), np.uint64)
        self._pending: SyscallSite | None = None  # a call whose result is on a ' --> ' line
        self._async: dict[tuple[int, int], SyscallSite] = {}
        self._extra_lines = 0  # a truncated last line (never seen by the scan)
        self._py_bad = 0  # bad lines found after the scan (SYSCALL lines, truncation)

    def size(self) -> int:
        return self.path.stat().st_size

    def _where(self, line_index: int) -> str:
        return f"{self.path}:{line_index + 1}"

    def _bad(self, line_index: int, text: bytes, why: str, *, counted: bool = False) -> None:
        """A bad line: raise, or (skip_bad) count it; `counted`: the scan has counted it already."""
        shown = text[:60].decode("ascii", "backslashreplace")
        message = f"{self._where(line_index)}: {why}: {shown!r}"
        if not self.skip_bad:
            raise TraceError(message + " (use --skip-bad to skip and count bad lines)")
        if not counted:
            self._py_bad += 1
        if len(self.stats.bad_examples) < 5:
            self.stats.bad_examples.append(message)

    def __iter__(self) -> Iterator[LackeyChunk]:
        sysrec = np.zeros((4096, 4), np.int64)
        badrec = np.zeros((BAD_KEEP, 4), np.int64)
        newp = np.zeros(self.max_events + 8, np.uint64)
        out = np.zeros(5, np.int64)
        scan = _compiled_scan()
        line_base = 0  # line index of the first line of the next scan
        index_base = 0  # events before the next scan
        carry = b""
        with open_input(self.path, "trace") as f:
            while True:
                block = f.read(self.chunk_bytes)
                self.stats.bytes += len(block)
                if len(carry) > MAX_LINE:  # whatever skip_bad says: this is not a trace
                    raise TraceError(
                        f"{self._where(line_base)}: a line longer than {MAX_LINE >> 20} MiB: not a lackey trace"
                    )
                data = carry + block if carry else block
                if not block:
                    if data:  # end of file inside a line: the line is truncated
                        self._extra_lines += 1
                        self._bad(line_base, data, "truncated line (no newline at end of file)")
                        self._sync_stats()
                    break
                cut = data.rfind(b"\n") + 1
                carry = data[cut:]
                if cut == 0:  # no newline yet: read more
                    continue
                buf = np.frombuffer(data, np.uint8, count=cut)
                pos = 0
                while pos < cut:
                    out[:] = 0
                    out[4] = line_base
                    # a fresh buffer per scan, yielded as it is (no copy): np.empty, every field written
                    events = np.empty(self.max_events, EVENT_DTYPE)
                    pos = scan(
                        buf, pos, cut, events["kind"], events["a"], events["cpl"], events["aux"], events["b"], _HEX,
                        sysrec, badrec, self._stat, self._seen, newp, out, self.user_top,
                    )  # fmt: skip
                    chunk = self._chunk(data, events, sysrec, badrec, newp, out, line_base, index_base)
                    index_base += len(chunk.events)
                    line_base = int(out[4])
                    yield chunk
        self._pending = None

    def _sync_stats(self) -> None:
        s, st = self._stat, self.stats
        st.lines = int(s[ST_LINES]) + self._extra_lines
        st.instructions, st.loads, st.stores, st.modifies = (int(x) for x in s[ST_FETCH : ST_MODIFY + 1])
        st.refs = st.instructions + st.loads + st.stores + st.modifies
        st.page_crossings = int(s[ST_CROSS])
        st.valgrind_lines = int(s[ST_VALGRIND])
        st.bad_lines = int(s[ST_BAD]) + self._py_bad

    def _chunk(
        self,
        data: bytes,
        events: np.ndarray,
        sysrec: np.ndarray,
        badrec: np.ndarray,
        newp: np.ndarray,
        out: np.ndarray,
        line_base: int,
        index_base: int,
    ) -> LackeyChunk:
        ne, ns, nb, nn = (int(x) for x in out[:4])
        for s, e, line, why in badrec[:nb].tolist():
            self._bad(line, data[s:e], _BAD_WHY[why], counted=True)
        sites: list[SyscallSite] = []
        for s, e, at, line in sysrec[:ns].tolist():
            text = data[s:e]
            if text.startswith(b" -->"):
                if self._pending is None or not _parse_result(text[4:], self._pending):
                    self._bad(line, text, "a ' --> ' line that continues no system call")
                self._pending = None
                continue
            try:
                got = parse_syscall_line(text, line + 1, index_base + at)
            except ValueError:  # a number past int's digit limit: garbled
                got = None
            if got is None:
                self._bad(line, text, "not a valgrind SYSCALL line")
                continue
            if isinstance(got, tuple):
                pid, tid, result = got
                started = self._async.pop((pid, tid), None)
                if started is None or not _parse_result(result, started):
                    self._bad(line, text, "an [async] completion of no started system call")
                continue
            got.at = at
            if got.success is None and b"[async]" in text:
                self._async[(got.pid, got.tid)] = got
            elif got.success is None:
                self._pending = got
            sites.append(got)
        refs_before = self.stats.refs
        self.stats.syscalls += len(sites)
        self.stats.events += ne
        self._sync_stats()
        return LackeyChunk(events[:ne], sites, newp[:nn].copy(), line_base + 1, self.stats.refs - refs_before)


def parse_lackey_bytes(data: bytes) -> np.ndarray:
    """Events of a whole lackey text held in memory (tests, small inputs); raises on bad lines."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".lackey") as tmp:
        tmp.write(data)
        tmp.flush()
        chunks = [c.events for c in LackeyReader(tmp.name)]
    return np.concatenate(chunks) if chunks else np.zeros(0, EVENT_DTYPE)


def format_lackey(events: np.ndarray, sizes: np.ndarray | None = None) -> str:
    """Lackey text for READ/WRITE/FETCH events (the inverse of the reader, for tests): FETCH ->
    'I', READ -> ' L', WRITE -> ' S'; sizes default to 1 (never crossing a page)."""
    tags = {int(Ev.FETCH): "I  ", int(Ev.READ): " L ", int(Ev.WRITE): " S "}
    lines = []
    for i, (k, a) in enumerate(zip(events["kind"].tolist(), events["a"].tolist(), strict=True)):
        size = 1 if sizes is None else int(sizes[i])
        width = 8 if k == Ev.FETCH else 0
        lines.append(f"{tags[k]}{a:0{width}x},{size}\n")
    return "".join(lines)
