"""Fuzz every option of every `kaiser` command with bad values: exit 2, one line naming the option.

The cases are generated from the command tree itself (`typer.main.get_command(app)`), so a new
command or option is fuzzed without being listed here: every int option below its minimum, above
its maximum and malformed; every string option empty, unknown and full of markup and escape
codes; every output path in a missing directory, under /proc and /sys, on a directory, on a
file's child, with no name; every flag given a value; unknown options; arguments missing. Each
case runs in-process (the real root command, `KaiserGroup.main`) under a SIGALRM watchdog: a bad
value must be refused before any work starts, so a case that runs longer than `CASE_SECONDS` is
a hang, not a slow test; starting a subprocess or worker process (QEMU, valgrind, dask) is a
failure too (`no_work`). Seeded: a failure names its seed and arguments.

The default suite runs a few hundred cases (two bad values per option, drawn by the seed); `-m
slow` runs thousands (every bad value, more seeds, pairs of bad options).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing.process
import random
import signal
import subprocess
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

from kaiser.cli import options
from kaiser.cli.app import app

CASE_SECONDS = 20  # a refused option costs milliseconds; this is the hang detector, not a timing check
ROOT = typer.main.get_command(app)
OUTPUT_PARSERS = (options.output_file, options.plot_file, options.output_dir)
# Path options that name files the command *reads*: kaiser.inputs checks them (tests/fuzz/test_fuzz_inputs.py).
INPUT_PATH_OPTIONS = {"--syscalls", "--cpuinfo"}
# Free text: any words are a value (a title, a kernel command line); only nothing may be wrong.
FREE_TEXT = {"--title": ["", " ", "\t"], "--cmdline": []}
# Arguments that are not files, with bad values of their own.
ADDRESS_BAD = ["", "junk", "0x", "0xzz", "1.5", "[/x]", "1" * 40, "0x1_0000_0000_0000_0000"]
# Stand-ins for required arguments: options are checked before the command reads them, so a bad
# option must be reported even with an argument that would fail later (naming the argument).
ARGUMENT_FILLER = {"address": "0x400000"}
FILLER_PATH = "/nonexistent-kaiser-fuzz/input"


@dataclass(frozen=True)
class Opt:
    command: tuple[str, ...]
    names: tuple[str, ...]  # every spelling: --variant, -v; --pcid, --no-pcid
    kind: str  # "flag" | "int" | "float" | "path" | "str"
    lo: float | None
    hi: float | None
    parser: Any
    callback: Any
    multiple: bool

    @property
    def name(self) -> str:
        return max(self.names, key=len)


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    opts: tuple[Opt, ...]
    arguments: tuple[tuple[str, str], ...]  # (name, kind) of each required argument


def _kind(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    return {bool: "flag", int: "int", float: "float", Path: "path"}.get(annotation, "str")


def commands() -> list[Command]:
    """Every command that can be run (groups with a callback of their own, such as `bench`, too)."""
    out: list[Command] = []

    def visit(cmd: Any, path: tuple[str, ...]) -> None:
        subs = getattr(cmd, "commands", None)
        own = [p for p in cmd.params if getattr(p, "opts", None)]
        if subs is None or (own and getattr(cmd, "invoke_without_command", False)):
            opts, args = [], []
            for p in cmd.params:
                if type(p).__name__ == "TyperArgument":
                    if p.required:
                        args.append((p.name, _kind(p.type_descriptor.annotation)))
                    continue
                info = p.type_descriptor.parameter_info
                kind = "flag" if p.is_flag else _kind(p.type_descriptor.annotation)
                names = tuple(p.opts) + tuple(p.secondary_opts)
                opts.append(Opt(path, names, kind, p.min, p.max, info.parser, p.callback, p.multiple))
            out.append(Command(path, tuple(opts), tuple(args)))
        for name, sub in (subs or {}).items():
            visit(sub, (*path, name))

    visit(ROOT, ())
    return out


COMMANDS = commands()
OPTIONS = [o for c in COMMANDS for o in c.opts if o.name != "--help"]


# ---- the shape every option must have ------------------------------------------------------------
def test_the_tree_is_every_command() -> None:
    names = {" ".join(c.path) for c in COMMANDS}
    assert {"demo", "walk", "verify", "dump", "audit", "run", "compare", "replay", "sweep", "report"} <= names
    assert {"bench", "bench memory", "bench engine", "bench replay", "attack meltdown", "attack kaslr"} <= names


@pytest.mark.parametrize(
    "opt", [o for o in OPTIONS if o.kind in ("int", "float")], ids=lambda o: f"{o.command} {o.name}"
)
def test_every_number_has_a_range(opt: Opt) -> None:
    assert opt.lo is not None and opt.hi is not None, (
        f"kaiser {' '.join(opt.command)} {opt.name}: give it min= and max="
    )


@pytest.mark.parametrize("opt", [o for o in OPTIONS if o.kind == "path"], ids=lambda o: f"{o.command} {o.name}")
def test_every_output_path_is_checked_before_the_work(opt: Opt) -> None:
    assert opt.parser in OUTPUT_PARSERS or opt.name in INPUT_PATH_OPTIONS, (
        f"kaiser {' '.join(opt.command)} {opt.name}: an output path needs parser=options.output_file/"
        "plot_file/output_dir; an input path goes through kaiser.inputs (list it in INPUT_PATH_OPTIONS)"
    )


# ---- the cases ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    names: tuple[str, ...]  # the error line must name one of these

    def __str__(self) -> str:
        return "kaiser " + " ".join(repr(a) if not a or " " in a else a for a in self.args)


NASTY = ["", " ", "junk-fuzz-value", "[/x]", "[bold]x", "\x1b[2J", "ü" * 3, "zq" * 150, "a\tb", "=", "%s%n"]


def _bad_numbers(opt: Opt, rng: random.Random) -> list[str]:
    lo, hi = opt.lo, opt.hi
    out = ["", "abc", "1.5" if opt.kind == "int" else "1e", "0x", "--", "NaN", "1" * 30, "١٢"]  # Arabic digits
    if lo is not None:
        out += [str(int(lo) - 1), str(int(lo) - rng.randint(2, 10**12))]
    if hi is not None:
        out += [str(int(hi) + 1), str(int(hi) + rng.randint(2, 10**30)), "9" * 25]
    return out


def _bad_paths(opt: Opt, tmp: Path) -> list[str]:
    plot = opt.parser is options.plot_file
    name = "x.png" if plot else "x.out"
    afile = tmp / "a-file"
    afile.write_text("x")
    out = ["", f"/proc/self/{name}", f"/sys/{name}", f"/dev/{name}", f"{afile}/{name}", f"{afile}/sub/{name}"]
    if opt.parser is not options.output_dir:
        out += ["/", str(tmp), "/dev/null", f"{tmp}/missing/{name}"]  # a missing directory: not created for a file
    else:
        out += [str(afile), "/proc"]  # a missing directory is made, with its parents
    if plot:
        out += [str(tmp / "plot.txt"), str(tmp / "plot")]
    return out


def _bad_strings(opt: Opt, rng: random.Random) -> list[str]:
    if opt.name in FREE_TEXT:
        return FREE_TEXT[opt.name]
    if opt.name == "--set":
        return ["", "junk", "=1", "reads=", "reads=99999999999", "stride=3", "stride=0", "nope=1", "procs=0", "nmi=2"]
    if opt.name == "--target":
        return [*ADDRESS_BAD, "0x1000"]  # a user address is not a kernel one
    picked = rng.sample(NASTY, k=min(6, len(NASTY)))
    return ["", "junk-fuzz-value", *picked]


def _filler(cmd: Command) -> tuple[str, ...]:
    """The command's required arguments, after the options (click checks in the order given)."""
    return tuple(ARGUMENT_FILLER.get(name, FILLER_PATH if kind == "path" else "x") for name, kind in cmd.arguments)


def cases(seed: int, tmp: Path, *, every: bool = False, pairs: int = 0) -> Iterator[Case]:
    """Bad option values of every command: two per option drawn by `seed`, or `every` one."""
    rng = random.Random(seed)
    for cmd in COMMANDS:
        prefix, fill = cmd.path, _filler(cmd)
        yield Case((*cmd.path, "--no-such-option-fuzz", *fill), ("--no-such-option-fuzz",))
        for opt in cmd.opts:
            if opt.name == "--help":
                continue
            spelling = rng.choice(opt.names)
            if opt.kind == "flag":
                yield Case((*prefix, f"{spelling}=maybe", *fill), opt.names)
                continue
            if opt.kind in ("int", "float"):
                values = _bad_numbers(opt, rng)
            elif opt.kind == "path":
                values = [] if opt.name in INPUT_PATH_OPTIONS else _bad_paths(opt, tmp)
            else:
                values = _bad_strings(opt, rng)
            for value in values if every else rng.sample(values, k=min(2, len(values))):
                yield Case((*prefix, spelling, value, *fill), opt.names)
            if not fill:
                yield Case((*prefix, spelling), opt.names)  # the value missing (else it takes the argument)
        for name, _ in cmd.arguments:
            if name == "address":
                for value in ADDRESS_BAD:
                    yield Case((*cmd.path, value), ("address", "ADDRESS"))
        if cmd.arguments:
            yield Case(cmd.path, tuple(n.upper() for n, _ in cmd.arguments) + tuple(n for n, _ in cmd.arguments))

    def bad(opt: Opt) -> list[str]:
        return _bad_numbers(opt, rng) if opt.kind == "int" else _bad_strings(opt, rng)

    fuzzable = {c.path: [o for o in c.opts if o.kind in ("int", "str") and o.name not in FREE_TEXT] for c in COMMANDS}
    for _ in range(pairs):  # two bad options at once: the error names one of them
        cmd = rng.choice([c for c in COMMANDS if len(fuzzable[c.path]) >= 2])
        a, b = rng.sample(fuzzable[cmd.path], 2)
        yield Case((*cmd.path, a.names[0], rng.choice(bad(a)), b.names[0], rng.choice(bad(b)), *_filler(cmd)),
                   a.names + b.names)  # fmt: skip


class Hang(Exception):
    pass


class WorkStarted(Exception):
    """A bad value got as far as starting a program (QEMU, valgrind, gcc) or a worker process."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang(f"no answer within {CASE_SECONDS} s")


def _no_processes(*args: Any, **kwargs: Any) -> Any:
    raise WorkStarted(f"started a process: {str(args[1] if len(args) > 1 else args)[:120]}")


@contextlib.contextmanager
def no_work() -> Iterator[None]:
    """While a case runs, starting a subprocess or a multiprocessing worker raises `WorkStarted`:
    a refused value never gets there, and a wrongly accepted one must not boot QEMU in the suite."""
    saved = (subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start)
    subprocess.Popen.__init__ = _no_processes  # type: ignore[method-assign]
    multiprocessing.process.BaseProcess.start = _no_processes  # type: ignore[method-assign]
    try:
        yield
    finally:
        subprocess.Popen.__init__, multiprocessing.process.BaseProcess.start = saved  # type: ignore[method-assign]


def check(case: Case) -> str | None:
    """None when `case` is refused as it should be, else what went wrong. The real root command
    (`app.KaiserGroup.main`, as `kaiser` runs it) with stdout and stderr captured."""
    out = io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), no_work():
            status = ROOT.main(list(case.args), prog_name="kaiser", standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 -- anything escaping main is the finding
        return f"{type(exc).__name__}: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    text = out.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    if "Traceback" in text:
        return "a traceback"
    if status != 2:
        return f"exit {status}, not 2"
    if len(lines) != 1:
        return f"{len(lines)} lines of output, not 1: {text[:300]!r}"
    if not lines[0].startswith("kaiser: error: "):
        return f"not a kaiser error line: {lines[0][:200]!r}"
    if not any(name in lines[0] for name in case.names):
        return f"the error does not name {'/'.join(case.names)}: {lines[0][:200]!r}"
    return None


def run_cases(seed: int, tmp: Path, *, every: bool = False, pairs: int = 0) -> tuple[int, list[str]]:
    failures, n = [], 0
    for case in cases(seed, tmp, every=every, pairs=pairs):
        n += 1
        problem = check(case)
        if problem is not None:
            failures.append(f"seed {seed}: {case}: {problem}")
    return n, failures


def test_every_bad_option_value_is_one_line_naming_it_with_exit_2(tmp_path: Path) -> None:
    n, failures = run_cases(0, tmp_path)
    assert n >= 300, n
    assert not failures, "\n".join(failures[:40]) + f"\n({len(failures)} of {n} cases)"


def test_checking_an_output_path_leaves_nothing_behind(tmp_path: Path) -> None:
    """The writability probe creates a file and removes it; a good path stays as it was."""
    target = tmp_path / "new.png"
    assert options.plot_file(str(target)) == target and not target.exists()
    kept = tmp_path / "kept.txt"
    kept.write_text("data")
    assert options.output_file(str(kept)) == kept and kept.read_text() == "data"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 9))
def test_thousands_of_bad_option_values(seed: int, tmp_path: Path) -> None:
    n, failures = run_cases(seed, tmp_path, every=True, pairs=150)
    assert not failures, "\n".join(failures[:40]) + f"\n({len(failures)} of {n} cases)"


def test_the_checker_catches_what_it_should() -> None:
    """The oracle can fail: an accepted value, a refusal that names another option."""
    assert check(Case(("walk", "0x400000", "--json"), ("--json",))) == "exit 0, not 2"
    assert "does not name" in (check(Case(("verify", "--cases", "0"), ("--seed",))) or "")
    assert check(Case(("verify", "--cases", "0"), ("--cases",))) is None


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["bench", "engine", "--foo"], "bench engine: no such option: --foo (try 'kaiser bench engine --help')"),
        (["verify", "--cases", "0"], "verify: --cases 0: Input should be greater than or equal to 1"),
        (["dump", "--out", ""], "dump: --out '': empty path (try 'kaiser dump --help')"),
        (["sweep"], "sweep: missing argument 'spec'"),
    ],
)
def test_the_one_line_names_the_command_the_option_and_the_value(args: list[str], line: str) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        assert ROOT.main(args, prog_name="kaiser", standalone_mode=False) == 2
    assert out.getvalue().startswith(f"kaiser: error: {line}"), out.getvalue()
