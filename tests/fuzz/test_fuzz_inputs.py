"""Fuzz every command that reads a file with mutations of real inputs: no traceback, no hang, no
exit 0 on garbage, and every error one line naming the file.

Seeds are the real inputs the project ships: the Debian 6.1 ptdumps and their meta.json
(tests/linux/data/real), a lackey trace and an strace log in the shapes valgrind and strace print,
the example sweep specs, a `kaiser bench --json` output and a sweep's results.csv
(tests/report/data). Each target copies its seed into a fresh directory, mutates it (truncation,
byte flips, non-UTF-8 bytes, NUL, a 2 MiB line, shuffled, duplicated or deleted lines, a number
5,000 digits long, empty) or replaces it by something that is not a regular file (a directory, a
FIFO, /dev/zero, /proc/self/mem, a symlink to /dev/zero, nothing), and runs the command in-process (typer's
CliRunner over the real `kaiser` group) under a SIGALRM watchdog: a case that runs longer than
`CASE_SECONDS` is a hang, not a slow test.

Validity is decided per format and per mutation, not by asking kaiser: a case *must fail* (exit 2)
only when its input is structurally garbage -- not a regular file; empty; non-UTF-8 or NUL where
the format is text; a line no reader accepts; a ptdump whose range lines no longer ascend or no
longer cover the address space (a duplicated, reordered, deleted range line; a cut); JSON that
Python's json module refuses; TOML that tomllib refuses. Anything else (a flipped digit, a
shuffled trace) may pass, exit 1 or exit 2, but never with a traceback, and an exit 2 must still
be one line naming the file.

Seeded: `KAISER_FUZZ_SEED` (default below) and, for the slow run, `KAISER_FUZZ_ROUNDS` rounds of
every mutation per target (default 40: about 3,000 cases). A failure names the case.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest
from typer.testing import CliRunner

from kaiser.cli.app import app
from kaiser.report import load as load_results

CASE_SECONDS = 60  # the hang detector (a valid compare or report takes a few seconds), not a timing check
SEED = int(os.environ.get("KAISER_FUZZ_SEED", "20261202"))
DEFAULT_ROUNDS = 2  # rounds of every mutation per target in the default suite
SLOW_ROUNDS = int(os.environ.get("KAISER_FUZZ_ROUNDS", "40"))
# CHOSEN: a valid report takes ~3.5 s to draw; beyond this many per target, an input the reader
# accepts is checked by the reader (kaiser.report.load) and not drawn, to keep the default suite fast.
REPORT_DRAWS = 1
HUGE_LINE = 2 << 20  # longer than any reader's line bound (1 MiB) and csv's field limit (128 KiB)

TESTS = Path(__file__).parents[1]
REAL = TESTS / "linux" / "data" / "real"
REPORT_DATA = TESTS / "report" / "data"
EXAMPLES = TESTS.parent / "examples"

LACKEY = (
    "==4242== Lackey, an example Valgrind tool\n"
    "==4242== Command: ./prog\n"
    "==4242== \n"
    + "".join(
        f"I  {0x401000 + 7 * i:08x},{1 + i % 7}\n L 1fff000{780 + 8 * (i % 16):03x},8\n"
        f" S 1fff000{778 + 8 * (i % 16):03x},8\n M 0060{i % 10}598,4\n"
        for i in range(40)
    )
    + "SYSCALL[4242,1](39) sys_getpid ()[sync] --> Success(0x1092)\n"
    + "I  00401230,3\n L 00601040,8\n"
    + "SYSCALL[4242,1](1) sys_write ( 1, 0x601040, 6 ) --> Success(0x6)\n"
    + "I  00401238,5\n"
    + "SYSCALL[4242,1](231) sys_exit_group ( 0 )\n"
    + "==4242== \n==4242== Counted 1 call to main()\n"
)
STRACE = (
    "4242  1795573792.892393 [   39] getpid() = 4242 <0.000010>\n"
    '4242  1795573792.892442 [    1] write(1, "hello\\n", 6) = 6 <0.000031>\n'
    "4242  1795573792.892501 [  231] exit_group(0) = ?\n"
    "4242  1795573792.892600 +++ exited with 0 +++\n"
)


# ---- targets: a command, the file it reads, and the format that file has ----------------------------
@dataclass(frozen=True)
class Target:
    name: str
    fmt: str  # ptdump | lackey | strace | toml | json | csv | meta
    seeds: tuple[str, ...]  # what the file starts as: a path (copied) or "lackey"/"strace" (the texts above)
    argv: Callable[[Path, Path], list[str]]  # (the file, the case's directory) -> arguments
    file_name: str = "input"
    companions: tuple[tuple[str, str], ...] = ()  # (name in the case directory, seed) copied beside it
    # Run inputs that may be valid too? `bench replay` on a valid trace compiles and runs the engine
    # (minutes on a cold numba cache): its reading is the same as `replay`'s, which runs them all.
    runs_valid: bool = True


def _ptdump_target(name: str, command: str) -> Target:
    return Target(
        name,
        "ptdump",
        (
            "real/6.1.0-56-amd64-pti-nokaslr/current_user.txt",
            "real/6.1.0-56-amd64-pti-kaslr/current_user-ldt.txt",
            "real/6.1.0-56-amd64-pti-nokaslr-smp2/current_user.txt",
            "real/6.1.0-57-amd64-la57-pti-nokaslr/current_user.txt",  # 5-level paging
            "real/6.12.107+deb12-amd64-pti-kaslr-smp2/current_user-ldt.txt",
        ),
        lambda f, d: [command, str(f)],
        "current_user.txt",
        (("meta.json", "meta"),) if command == "compare" else (),
    )


REPLAY = ["--variant", "linux", "--pcid", "--path", "reference"]
TARGETS = [
    _ptdump_target("audit", "audit"),
    _ptdump_target("compare", "compare"),
    Target(
        "compare-meta.json",
        "meta",
        ("real/6.1.0-56-amd64-pti-nokaslr/meta.json",),
        lambda f, d: ["compare", str(d / "current_user.txt")],
        "meta.json",
        (("current_user.txt", "real/6.1.0-56-amd64-pti-nokaslr/current_user.txt"),),
    ),
    Target("replay", "lackey", ("lackey",), lambda f, d: ["replay", str(f), *REPLAY], "t.lackey"),
    Target(
        "replay--syscalls",
        "strace",
        ("strace",),
        lambda f, d: ["replay", str(d / "t.lackey"), "--syscalls", str(f), *REPLAY],
        "t.strace",
        (("t.lackey", "lackey"),),
    ),
    Target(
        "bench-replay",
        "lackey",
        ("lackey",),
        lambda f, d: ["bench", "replay", str(f), "--repeats", "1"],
        "t.lackey",
        runs_valid=False,
    ),
    Target(
        "sweep",
        "toml",
        ("examples/sweep-small.toml", "report/sweep-spec.toml"),
        lambda f, d: ["sweep", str(f), "--dry-run", "--out", str(d / "out")],
        "spec.toml",
    ),
    Target(
        "report-json",
        "json",
        ("report/bench-syscall-loop.json",),
        lambda f, d: ["report", str(f), "--out", str(d / "r.html")],
        "bench.json",
    ),
    Target(
        "report-csv",
        "csv",
        ("report/sweep/results.csv",),
        lambda f, d: ["report", str(f), "--out", str(d / "r.html")],
        "results.csv",
    ),
]


def seed_bytes(seed: str) -> bytes:
    if seed == "lackey":
        return LACKEY.encode()
    if seed == "strace":
        return STRACE.encode()
    if seed == "meta":
        raise AssertionError("meta companions are resolved by _companion")
    root, _, rest = seed.partition("/")
    base = {"real": REAL, "report": REPORT_DATA, "examples": EXAMPLES}[root]
    return (base / rest).read_bytes()


# ---- what makes an input garbage, per format (independent of kaiser) ---------------------------------
_C0 = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")
_RANGE = re.compile(rb"^0x[0-9a-f]{16}-0x")


def _not_text(data: bytes) -> bool:
    """Not strict UTF-8, or a control character other than tab, newline and a CR ending a line."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return bool(_C0.search(data.replace(b"\r\n", b"\n")))


def _json_garbage(data: bytes) -> bool:
    try:
        json.loads(data.decode("utf-8"), parse_constant=float)
    except (ValueError, RecursionError):  # a number past int()'s digit limit is a ValueError too
        return True
    return False


def _toml_garbage(data: bytes) -> bool:
    try:
        tomllib.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        return True
    return False


def _ranges(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if _RANGE.match(line)]


def _skip_adjacent(lines: list[bytes], i: int) -> bool:
    """Line i is the range line next to a "... N entries skipped ..." line (ignoring markers):
    deleting it leaves no gap a reader could see (the skipped lines carry no addresses)."""
    rest = [j for j, line in enumerate(lines) if _RANGE.match(line) or line.startswith(b"...")]
    if i not in rest:
        return False
    k = rest.index(i)
    return any(lines[j].startswith(b"...") for j in rest[max(k - 1, 0) : k + 2])


# ---- mutations -----------------------------------------------------------------------------------
Mutated = tuple[bytes, bool]  # (the new content, must the command fail?)


def _line_starts(data: bytes) -> list[int]:
    return [0] + [m.end() for m in re.finditer(rb"\n", data) if m.end() < len(data)]


def m_truncate(data: bytes, fmt: str, rng: random.Random) -> Mutated:
    cut = rng.randrange(0, max(len(data) - 1, 1))
    out = data[:cut]
    if fmt == "ptdump":
        must = True  # the dump no longer reaches the end of the address space (or ends inside a line)
    elif fmt == "lackey":
        must = not out.endswith(b"\n") or not any(_RANGE_LACKEY.match(x) for x in out.split(b"\n"))
    elif fmt == "strace":
        must = bool(out) and not out.endswith(b"\n")
    elif fmt in ("json", "meta"):
        must = _json_garbage(out)
    elif fmt == "toml":
        must = _toml_garbage(out)
    else:
        must = not out.strip()
    return out, must


_RANGE_LACKEY = re.compile(rb"^(I | L| S| M) [0-9a-f]+,\d+$")


def m_flip(data: bytes, fmt: str, rng: random.Random) -> Mutated:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    new = bytes(out)
    if fmt in ("ptdump", "toml"):
        must = _not_text(new) or (fmt == "toml" and _toml_garbage(new))
    elif fmt in ("json", "meta"):
        must = _json_garbage(new)
    elif fmt in ("csv", "strace"):
        must = b"\0" in new or _undecodable(new)
    else:
        must = False  # lackey: valgrind's own lines take anything after "==PID=="
    return new, must


def _undecodable(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _insert_at_line(data: bytes, rng: random.Random, what: bytes) -> bytes:
    at = rng.choice(_line_starts(data))
    return data[:at] + what + data[at:]


def m_non_utf8(data: bytes, fmt: str, rng: random.Random) -> Mutated:
    return _insert_at_line(data, rng, b"\xff\xfe"), True  # a line starting with bytes no format has


def m_nul(data: bytes, fmt: str, rng: random.Random) -> Mutated:
    return _insert_at_line(data, rng, b"\0"), True


def m_huge_line(data: bytes, fmt: str, rng: random.Random) -> Mutated:
    return _insert_at_line(data, rng, b"A" * HUGE_LINE + b"\n"), True


def m_shuffle(data: bytes, fmt: str, rng: random.Random) -> Mutated:
    lines = data.split(b"\n")
    rng.shuffle(lines)
    out = b"\n".join(lines)
    if fmt == "ptdump":
        must = _ranges(out) != _ranges(data)
    elif fmt in ("json", "meta"):
        must = _json_garbage(out)
    elif fmt == "toml":
        must = _toml_garbage(out)
    else:
        must = False
    return out, must


def m_duplicate(data: bytes, fmt: str, rng: random.Random) -> Mutated:
    lines = data.split(b"\n")
    i = rng.randrange(len(lines))
    out = b"\n".join(lines[: i + 1] + lines[i:])
    if fmt == "ptdump":
        must = bool(_RANGE.match(lines[i]))  # the same addresses twice
    elif fmt in ("json", "meta"):
        must = _json_garbage(out)
    elif fmt == "toml":
        must = _toml_garbage(out)
    else:
        must = False
    return out, must


def m_delete(data: bytes, fmt: str, rng: random.Random) -> Mutated:
    lines = data.split(b"\n")
    i = rng.randrange(len(lines))
    out = b"\n".join(lines[:i] + lines[i + 1 :])
    if fmt == "ptdump":
        must = bool(_RANGE.match(lines[i])) and not _skip_adjacent(lines, i)  # a hole in the address space
    elif fmt in ("json", "meta"):
        must = _json_garbage(out)
    elif fmt == "toml":
        must = _toml_garbage(out)
    else:
        must = False
    return out, must


def m_long_number(data: bytes, fmt: str, rng: random.Random) -> Mutated:
    """A run of digits made 5,000 long: past Python's int() digit limit (4,300) and any field."""
    runs = list(re.finditer(rb"\d+", data))
    m = rng.choice(runs)
    out = data[: m.start()] + b"7" * 5000 + data[m.end() :]
    if fmt == "ptdump":
        must = bool(_RANGE.match(out.split(b"\n")[data.count(b"\n", 0, m.start())]))  # an address, size, count
    elif fmt in ("json", "meta"):
        must = _json_garbage(out)
    elif fmt == "toml":
        must = _toml_garbage(out)
    else:
        must = False
    return out, must


def m_empty(data: bytes, fmt: str, rng: random.Random) -> Mutated:
    return b"", fmt != "strace"  # an empty strace log is a program that made no call


MUTATIONS: dict[str, Callable[[bytes, str, random.Random], Mutated]] = {
    "truncate": m_truncate,
    "flip": m_flip,
    "non-utf8": m_non_utf8,
    "nul": m_nul,
    "huge-line": m_huge_line,
    "shuffle": m_shuffle,
    "duplicate": m_duplicate,
    "delete": m_delete,
    "long-number": m_long_number,
    "empty": m_empty,
}
SPECIALS = ("directory", "fifo", "dev-zero", "proc-mem", "symlink-dev-zero", "missing")


# ---- cases -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    target: Target
    seed: str
    mutation: str
    rng_seed: int

    def __str__(self) -> str:
        return f"{self.target.name}:{self.mutation}:{Path(self.seed).name}:{self.rng_seed}"


def cases(rounds: int, seed: int = SEED) -> Iterator[Case]:
    rng = random.Random(seed)
    for target in TARGETS:
        for special in SPECIALS:
            yield Case(target, target.seeds[0], special, 0)
        for _ in range(rounds):
            for mutation in MUTATIONS:
                yield Case(target, rng.choice(target.seeds), mutation, rng.randrange(1 << 32))


def _companion(target: Target, seed: str) -> list[tuple[str, bytes]]:
    out = []
    for name, source in target.companions:
        if source == "meta":  # the meta.json of the dump's own machine
            source = str(Path(seed).parent / "meta.json")
        out.append((name, seed_bytes(source)))
    return out


def prepare(case: Case, directory: Path) -> tuple[Path, bool]:
    """Write the case's files into `directory`; (the file the command reads, must it fail?)."""
    target = case.target
    for name, data in _companion(target, case.seed):
        (directory / name).write_bytes(data)
    path = directory / target.file_name
    special = case.mutation
    if special in SPECIALS:
        if special == "directory":
            path.mkdir()
        elif special == "fifo":
            os.mkfifo(path)
        elif special == "symlink-dev-zero":
            path.symlink_to("/dev/zero")
        elif special in ("dev-zero", "proc-mem") and target.fmt == "meta":  # found by its place: link it
            path.symlink_to("/dev/zero" if special == "dev-zero" else "/proc/self/mem")
        elif special == "dev-zero":
            path = Path("/dev/zero")
        elif special == "proc-mem":
            path = Path("/proc/self/mem")
        # a missing meta.json is a dump without one: nothing wrong with that
        return path, not (special == "missing" and target.fmt == "meta")
    data, must = MUTATIONS[special](seed_bytes(case.seed), target.fmt, random.Random(case.rng_seed))
    path.write_bytes(data)
    return path, must


class Hang(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    error: str  # a traceback's last line, "hang", or ""


def run_case(argv: list[str]) -> Outcome:
    runner = CliRunner()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        result = runner.invoke(app, argv)
    except Hang:
        return Outcome(None, "", "", "hang")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    exc = result.exception
    if isinstance(exc, Hang):
        return Outcome(None, "", "", "hang")
    error = "" if exc is None or isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
    return Outcome(result.exit_code, result.stdout, result.stderr, error)


def check(case: Case, directory: Path, draws: list[int]) -> str | None:
    """What is wrong with this case's outcome, or None."""
    path, must_fail = prepare(case, directory)
    argv = case.target.argv(path, directory)
    if not must_fail and not case.target.runs_valid:
        return None
    if case.target.fmt in ("json", "csv") and case.mutation not in SPECIALS:
        try:
            load_results(path)
        except Exception:  # noqa: BLE001 -- refused (or crashed): run the command, which says which
            pass
        else:
            if draws[0] >= REPORT_DRAWS:
                return "exit 0 from the reader on garbage" if must_fail else None
            draws[0] += 1
    got = run_case(argv)
    if got.error:
        return f"{got.error[:300]} (argv {argv[1:]})"
    if "Traceback" in got.stdout + got.stderr:
        return "a traceback in the output"
    if got.code not in (0, 1, 2):
        return f"exit status {got.code}"
    if must_fail and got.code != 2:
        return f"exit {got.code} on garbage: {(got.stdout + got.stderr).strip()[-200:]!r}"
    if got.code == 2:
        lines = [x for x in got.stderr.splitlines() if x.strip() and not x.startswith("kaiser: warning:")]
        if len(lines) != 1 or not lines[0].startswith("kaiser: error: "):
            return f"not one error line: {got.stderr[:300]!r}"
        named = str(path)
        if named not in lines[0]:
            return f"the error does not name {named}: {lines[0][:200]!r}"
    return None


def run_all(selected: list[Case], tmp_path: Path) -> None:
    problems: list[str] = []
    draws: dict[str, list[int]] = {}
    for n, case in enumerate(selected):
        directory = tmp_path / f"c{n}"
        directory.mkdir()
        try:
            problem = check(case, directory, draws.setdefault(case.target.name, [0]))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        if problem:
            problems.append(f"{case}: {problem}")
    assert not problems, f"{len(problems)} of {len(selected)} cases failed:\n" + "\n".join(problems[:20])


# ---- the suites ------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_fuzz_inputs(target: Target, tmp_path: Path) -> None:
    """Every special file and `DEFAULT_ROUNDS` rounds of every mutation, per command."""
    run_all([c for c in cases(DEFAULT_ROUNDS) if c.target is target], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_fuzz_inputs_many(target: Target, tmp_path: Path) -> None:
    """`KAISER_FUZZ_ROUNDS` rounds (default 40) of every mutation per command, another seed."""
    run_all([c for c in cases(SLOW_ROUNDS, SEED + 1) if c.target is target], tmp_path)


def test_the_oracle_calls_garbage_garbage() -> None:
    """The validity rules themselves: a pristine seed is valid, and the structural mutations of
    each format are garbage (so a case that passes is not passing because nothing was wrong)."""
    rng = random.Random(1)
    for target in TARGETS:
        for seed in target.seeds:
            data = seed_bytes(seed)
            assert not _json_garbage(data) if target.fmt in ("json", "meta") else True
            assert not _toml_garbage(data) if target.fmt == "toml" else True
            assert not _not_text(data) if target.fmt != "lackey" else True
            for name in ("non-utf8", "nul", "huge-line"):
                assert MUTATIONS[name](data, target.fmt, rng)[1]
    lines = seed_bytes(TARGETS[0].seeds[0]).split(b"\n")
    beside = [i for i in range(len(lines)) if _RANGE.match(lines[i]) and _skip_adjacent(lines, i)]
    assert len(beside) == 2  # the range lines before and after ESPfix's "... entries skipped ..."
