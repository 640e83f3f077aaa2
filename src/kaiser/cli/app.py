"""The `kaiser` command: a thin layer over the Python API (`kaiser.x86`, `kaiser.linux`, ...)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any

import typer
from typer._click.exceptions import BadParameter, NoArgsIsHelpError, UsageError  # typer vendors click
from typer.core import TyperCommand, TyperGroup

from kaiser.cli.output import fail
from kaiser.inputs import InputError


class KaiserGroup(TyperGroup):
    """The root command. Every outcome is an exit status -- 0 done, 1 a finding a CI should act on,
    2 bad input (option, argument or file), 130 interrupted -- and every error one line on stderr,
    never a traceback nor click's boxed usage text; in-process runners (CliRunner) get the same.

    Its commands (COMMANDS below) are imported only when one runs or its help is shown; the
    root's help lists them from their summaries. `commands` still maps every name to its command
    (loading them all) for whoever walks the tree (tests/test_docs.py, the option fuzzer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loaded: dict[str, Any] = {}
        self._listing = False
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def commands(self) -> Mapping[str, Any]:
        return _Commands(self)

    @commands.setter
    def commands(self, value: Mapping[str, Any]) -> None:
        self._loaded.update(value)

    def list_commands(self, ctx: Any) -> list[str]:
        return [*COMMANDS, *(n for n in self._loaded if n not in COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self._loaded:
            return self._loaded[cmd_name]
        if cmd_name not in COMMANDS:
            return None
        if self._listing:  # the root's help: a name and a summary, nothing imported
            return TyperCommand(cmd_name, help=COMMANDS[cmd_name][2])
        self._loaded[cmd_name] = load_command(cmd_name)
        return self._loaded[cmd_name]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            status = super().main(argv, prog_name or "kaiser", complete_var, False, windows_expand_args, **extra)
            code = status if isinstance(status, int) else 0
        except NoArgsIsHelpError as exc:  # `kaiser` or `kaiser bench` alone: the help
            sys.stderr.write(exc.format_message() + "\n")
            code = 2
        except UsageError as exc:
            code = _one_line(usage_line(exc, argv), exc.exit_code)
        except typer.Abort:
            code = _one_line("aborted", 130)
        except Exception as exc:
            if not isinstance(exc, user_errors()):
                raise
            code = _one_line(str(exc), 2)
        if standalone_mode:
            sys.exit(code)
        return code


class _Commands(Mapping[str, Any]):
    """KaiserGroup.commands: every command by name; looking one up loads it."""

    def __init__(self, group: KaiserGroup) -> None:
        self._group = group

    def __getitem__(self, name: str) -> Any:
        command = self._group.get_command(None, name)
        if command is None:
            raise KeyError(name)
        return command

    def __iter__(self) -> Iterator[str]:
        return iter(self._group.list_commands(None))

    def __len__(self) -> int:
        return len(self._group.list_commands(None))


def _one_line(message: str, code: int) -> int:
    try:
        fail(message, code)
    except typer.Exit as done:
        return int(done.exit_code)


app = typer.Typer(
    cls=KaiserGroup,
    name="kaiser",
    help="Kernel page-table isolation (KAISER/KPTI) on a bit-exact x86-64 paging model: see it, prove it, price it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from kaiser import __version__

        typer.echo(f"kaiser {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print kaiser's version and exit."),
    ] = False,
) -> None:
    """The options of `kaiser` itself (the help text is the app's)."""


# Every command, loaded only when it runs (or its own --help is asked for): `kaiser --help` lists
# them from this table without importing numpy, numba or the model (issue 15, lazy start).
# name -> (module, attribute: a command function or a typer sub-app, its one-line summary);
# tests/cli/test_lazy_commands.py checks each summary against the loaded command's help.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "kaiser.cli.demo",
        "demo_command",
        "Build every variant's isolated address spaces, audit them, price them, referee the walker.",
    ),
    "walk": (
        "kaiser.cli.walk",
        "walk_command",
        "Translate ADDRESS, showing each paging entry (sample space, or a booted kernel's PGD).",
    ),
    "verify": (
        "kaiser.cli.verify",
        "verify_command",
        "Differential test of the page walker against Unicorn (QEMU's x86 MMU) on random page tables.",
    ),
    "dump": (
        "kaiser.cli.dump",
        "dump_command",
        "Print a process's page tables exactly as Linux's /sys/kernel/debug/page_tables/* does.",
    ),
    "diff": (
        "kaiser.cli.diff",
        "diff_command",
        "List, region by region, what appeared, vanished or changed rights between two ptdumps.",
    ),
    "audit": (
        "kaiser.cli.audit",
        "audit_command",
        "List every kernel mapping user mode can reach, classify it, and fail (exit 1) on policy breaks.",
    ),
    "run": (
        "kaiser.cli.run",
        "run_command",
        "Run a small real kernel and a user program on Unicorn over the model's page tables.",
    ),
    "compare": ("kaiser.cli.compare", "compare_command", "Where our model and a real kernel differ, region by region."),
    "replay": (
        "kaiser.cli.replay",
        "replay_command",
        "Replay a real program's memory trace, with its system calls, on each variant and price it.",
    ),
    "sweep": (
        "kaiser.cli.sweep",
        "sweep_command",
        "Run a sweep spec's configurations on dask; rerun with the same --out to resume.",
    ),
    "report": (
        "kaiser.cli.report",
        "report_command",
        "Write one self-contained HTML page (plots inline, readable offline) of a bench or sweep run.",
    ),
    "record": (
        "kaiser.cli.record",
        "record_command",
        "Record a real kernel (Debian's own, under QEMU TCG with kaiser's plugin) running a workload.",
    ),
    "bench": (
        "kaiser.cli.bench",
        "bench_app",
        "Price isolation: TLB misses, walks, CR3 writes and cycles per variant (default), page-table memory.",
    ),
    "attack": ("kaiser.cli.attack", "attack_app", "Prove isolation by attack: Meltdown and KASLR probing."),
    "recording": (
        "kaiser.cli.record",
        "recording_app",
        "Read recordings of a real kernel (kaiser record): list and info.",
    ),
}
# Click settings of a command that are not its function's: `kaiser record -- PROGRAM ARGS` passes
# the program's own options through.
CONTEXT_SETTINGS: dict[str, dict[str, Any]] = {"record": {"allow_interspersed_args": False}}


def load_command(name: str) -> Any:
    """The click command `name` of COMMANDS, imported and built now."""
    module, attribute, _summary = COMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    if isinstance(target, typer.Typer):
        command = typer.main.get_command(target)
    else:
        single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        single.command(name, context_settings=CONTEXT_SETTINGS.get(name))(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean "the input was wrong", reported in one line with exit status 2. Imported
    only when an error is being reported (by then the command has loaded their modules)."""
    from kaiser.linux.mm import MmError
    from kaiser.linux.variants import UnknownVariant
    from kaiser.x86.bits import BitsError
    from kaiser.x86.geometry import AddressError
    from kaiser.x86.pagetable import PagingError
    from kaiser.x86.physmem import PhysMemError

    return (InputError, BitsError, AddressError, PagingError, PhysMemError, UnknownVariant, MmError)


def usage_line(exc: UsageError, argv: Sequence[str] = ()) -> str:
    """A click usage error (bad option value, unknown option, missing argument) as one line that
    names the command, the option and the value given (the last one, as click keeps the last),
    with a --help hint: click's own boxed usage text is several lines and hides which command
    complained."""
    path = exc.ctx.command_path if exc.ctx is not None else "kaiser"
    where = path.removeprefix("kaiser").strip()
    if type(exc) is BadParameter and exc.param is not None:
        name = max(exc.param.opts, key=len) if exc.param.opts else exc.param.get_error_hint()
        given = None if exc.param.multiple else _given(argv, exc.param.opts)  # a list's message names the item
        shown = "" if given is None or len(given) > 60 else f" {given!r}" if not given.strip() else f" {given}"
        detail = f"{name}{shown}: {exc.message}"
    else:
        detail = exc.format_message()
    detail = " ".join(detail.split()).rstrip(".")
    return f"{where + ': ' if where else ''}{detail[:1].lower()}{detail[1:]} (try '{path} --help')"


def _given(argv: Sequence[str], opts: Sequence[str]) -> str | None:
    """The value given last to an option spelled `opts` in `argv` (`--opt V` or `--opt=V`)."""
    found = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg in opts and i + 1 < len(argv):
            found = argv[i + 1]
        elif "=" in arg and arg.split("=", 1)[0] in opts:
            found = arg.split("=", 1)[1]
    return found


def run(argv: Sequence[str] | None = None) -> int:
    """Run `kaiser ARGV...` and return its exit status (`main` exits with it; tests call it)."""
    status: int = typer.main.get_command(app).main(args=argv, prog_name="kaiser", standalone_mode=False)
    return status


def main() -> None:
    """Console entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
