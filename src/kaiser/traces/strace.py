"""strace logs: system calls with timestamps, streamed line by line.

Recommended flags (what the tests use): `strace -f -n -ttt -T -o FILE PROG`
(`-f` children and threads with a pid column, `-n` the syscall number in brackets, `-ttt` epoch
timestamps, `-T` time spent in the call). Also read: `-tt` (time of day; seconds since midnight)
and `-t`, `-r` (relative: each timestamp is added to the previous one), no timestamps at all, no
pid column, no `-n`, no `-T`.

Line shapes (after the optional pid, timestamp and `[ nr]` columns):

    read(3, "..."..., 65536) = 65536 <0.000039>          a complete call
    read(3,  <unfinished ...>                             a call another task's line interrupted
    <... read resumed>"x", 1) = 1                          ... and its end (same pid)
    --- SIGCHLD {si_signo=SIGCHLD, ...} ---                a signal delivered
    +++ exited with 0 +++  /  +++ killed by SIGUSR1 +++    the task's end
    exit_group(0) = ?                                      a call that does not return

An unfinished call and its resumption become one `StraceCall`, at the place and time of its start
(entry order: the order the calls entered the kernel). Anything else is a bad line: `StraceError`
naming the file and line, or with `skip_bad=True` a count (`StraceLog.bad_lines`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kaiser.inputs import open_input

RELATIVE_LIMIT = 1e6  # a first timestamp below this (seconds) is `-r` relative time, not epoch time
MAX_LINE = 1 << 20  # CHOSEN: strace abbreviates strings (-s 32 by default); a 1 MiB line is no strace log

_PREFIX = re.compile(
    r"^(?:(?P<pid>\d{1,10})\s+)?"  # bounded digit runs: a pid, a clock, a syscall number
    r"(?:(?P<ts>\d{1,20}\.\d{1,12}|\d\d:\d\d:\d\d(?:\.\d{1,12})?)\s+)?"
    r"(?:\[\s*(?P<nr>\d{1,6})\]\s+)?"
    r"(?P<body>.*?)\s*$"
)
_COMPLETE = re.compile(r"^(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>.*?)(?:\s+<(?P<dur>\d{1,20}\.\d{1,12})>)?$")
_UNFINISHED = re.compile(r"^(?P<name>\w+)\((?P<args>.*?)\s*<unfinished \.\.\.>$")
_RESUMED = re.compile(
    r"^<\.\.\. (?P<name>\w+) resumed>\s?(?P<args>.*?)\)?\s+=\s+(?P<ret>.*?)(?:\s+<(?P<dur>\d{1,20}\.\d{1,12})>)?$"
)
_RESUMED_UNFINISHED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>.*<unfinished \.\.\.>\)?\s*=\s*\?$")
_SIGNAL = re.compile(r"^--- (?P<sig>SIG\w+|\w+) (?P<info>.*) ---$")
_EXIT = re.compile(r"^\+\+\+ (?:exited with (?P<code>-?\d{1,12})|killed by (?P<sig>\w+)(?: \(core dumped\))?) \+\+\+$")
_NOTE = re.compile(r"^(?:strace: .*|<detached \.\.\.>|\?\?\?.*)$")


class StraceError(ValueError):
    """An strace line that cannot be read: names the file and the line number."""


@dataclass
class StraceCall:
    """One system call of the log (an unfinished/resumed pair merged)."""

    pid: int | None
    name: str
    args: str
    ret: str | None  # as strace printed it: "65536", "-1 ENOENT (...)", "?"; None: never finished
    nr: int | None  # with `strace -n`
    time: float | None  # entry time in seconds (epoch, since midnight, or since the first line)
    duration: float | None  # with `-T`
    line: int
    end_line: int

    @property
    def returned(self) -> int | None:
        """The return value, if it is a number."""
        if self.ret is None:
            return None
        head = self.ret.split(" ", 1)[0]
        try:
            return int(head, 0)
        except ValueError:
            return None


@dataclass(frozen=True)
class StraceSignal:
    """A `--- SIGNAL {...} ---` line: which process got which signal, when, on which line."""

    pid: int | None
    signal: str
    time: float | None
    line: int


@dataclass(frozen=True)
class StraceExit:
    """A `+++ exited with N +++` or `+++ killed by SIG +++` line."""

    pid: int | None
    code: int | None  # exit status, or None when killed
    signal: str | None
    time: float | None
    line: int


@dataclass
class StraceLog:
    """A whole log: calls in entry order, signals, exits and what was skipped."""

    path: Path
    calls: list[StraceCall] = field(default_factory=list)
    signals: list[StraceSignal] = field(default_factory=list)
    exits: list[StraceExit] = field(default_factory=list)
    lines: int = 0
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)
    unfinished_at_end: int = 0

    def span_seconds(self) -> float | None:
        times = [c.time for c in self.calls if c.time is not None]
        return max(times) - min(times) if len(times) > 1 else None

    def summary(self) -> dict[str, object]:
        by_name: dict[str, int] = {}
        for c in self.calls:
            by_name[c.name] = by_name.get(c.name, 0) + 1
        return {
            "path": str(self.path),
            "lines": self.lines,
            "calls": len(self.calls),
            "by_name": by_name,
            "signals": [s.signal for s in self.signals],
            "exits": [{"pid": e.pid, "code": e.code, "signal": e.signal} for e in self.exits],
            "bad_lines": self.bad_lines,
            "unfinished_at_end": self.unfinished_at_end,
            "span_seconds": self.span_seconds(),
        }


def _clock(text: str | None) -> float | None:
    if text is None:
        return None
    if ":" in text:
        h, m, s = text.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    return float(text)


def iter_strace(path: str | Path, *, skip_bad: bool = False, log: StraceLog | None = None) -> Iterator[StraceCall]:
    """System calls of an strace log in entry order, streamed (a call is held back only while a
    call that entered before it is unfinished). Signals, exits and counts go into `log`."""
    path = Path(path)
    log = log if log is not None else StraceLog(path)
    pending: dict[int | None, StraceCall] = {}  # per pid: the call waiting for its "resumed" line
    queue: list[StraceCall] = []  # calls in entry order, not yet yielded
    relative: bool | None = None
    clock = 0.0

    def bad(lineno: int, text: str, why: str) -> None:
        message = f"{path}:{lineno}: {why}: {text[:60]!r}"
        if not skip_bad:
            raise StraceError(message + " (use --skip-bad to skip and count bad lines)")
        log.bad_lines += 1
        if len(log.bad_examples) < 5:
            log.bad_examples.append(message)

    with open_input(path, "strace log") as f:
        for lineno, raw in enumerate(iter(lambda: f.readline(MAX_LINE + 1), b""), 1):
            log.lines += 1
            if len(raw) > MAX_LINE:  # whatever skip_bad says: not an strace log
                raise StraceError(f"{path}:{lineno}: a line longer than {MAX_LINE >> 20} MiB: not an strace log")
            if not raw.endswith(b"\n"):
                bad(lineno, raw.decode("utf-8", "backslashreplace"), "truncated line (no newline at end of file)")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad(lineno, raw.decode("utf-8", "backslashreplace"), "not text")
                continue
            m = _PREFIX.match(text.rstrip("\n"))
            if not m or "\x00" in text:
                bad(lineno, text, "not an strace line")
                continue
            pid = int(m["pid"]) if m["pid"] else None
            t = _clock(m["ts"])
            if t is not None:
                if relative is None:
                    relative = t < RELATIVE_LIMIT and ":" not in (m["ts"] or "")
                if relative:
                    clock += t
                    t = clock
            nr = int(m["nr"]) if m["nr"] else None
            body = m["body"]
            if c := _COMPLETE.match(body):
                call = StraceCall(pid, c["name"], c["args"], c["ret"], nr, t, _clock(c["dur"]), lineno, lineno)
                queue.append(call)
            elif c := _UNFINISHED.match(body):
                call = StraceCall(pid, c["name"], c["args"], None, nr, t, None, lineno, lineno)
                if pid in pending:
                    bad(lineno, text, f"a second unfinished call of pid {pid}")
                    continue
                pending[pid] = call
                queue.append(call)
            elif (c := _RESUMED_UNFINISHED.match(body)) or (c := _RESUMED.match(body)):
                call_or_none = pending.pop(pid, None)
                if call_or_none is None or call_or_none.name != c["name"]:
                    bad(lineno, text, f"'{c['name']} resumed' without its unfinished start")
                    continue
                if c.re is _RESUMED:
                    call_or_none.args = f"{call_or_none.args} {c['args']}".strip()
                    call_or_none.ret = c["ret"]
                    call_or_none.duration = _clock(c["dur"])
                else:
                    call_or_none.ret = "?"
                call_or_none.end_line = lineno
            elif c := _SIGNAL.match(body):
                log.signals.append(StraceSignal(pid, c["sig"], t, lineno))
            elif c := _EXIT.match(body):
                code = int(c["code"]) if c["code"] is not None else None
                log.exits.append(StraceExit(pid, code, c["sig"], t, lineno))
                if pid in pending:  # killed inside a call
                    pending.pop(pid).ret = "?"
            elif _NOTE.match(body) or not body:
                continue
            else:
                bad(lineno, text, "not an strace line")
                continue
            while queue and (queue[0].ret is not None):
                yield queue.pop(0)
    log.unfinished_at_end = len(pending)
    yield from queue


def read_strace(path: str | Path, *, skip_bad: bool = False) -> StraceLog:
    """The whole log (an strace log is one line per call: small next to a memory trace)."""
    log = StraceLog(Path(path))
    log.calls = list(iter_strace(path, skip_bad=skip_bad, log=log))
    return log
