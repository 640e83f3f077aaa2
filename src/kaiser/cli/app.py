"""The `kaiser` command: a thin layer over the Python API (`kaiser.x86`, `kaiser.linux`, ...)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer._click.exceptions import BadParameter, NoArgsIsHelpError, UsageError  # typer vendors click
from typer.core import TyperGroup

from kaiser.cli.attack import attack_app
from kaiser.cli.audit import audit_command
from kaiser.cli.bench import bench_app
from kaiser.cli.compare import compare_command
from kaiser.cli.demo import demo_command
from kaiser.cli.diff import diff_command
from kaiser.cli.dump import dump_command
from kaiser.cli.output import fail
from kaiser.cli.record import record_command, recording_app
from kaiser.cli.replay import replay_command
from kaiser.cli.report import report_command
from kaiser.cli.run import run_command
from kaiser.cli.sweep import sweep_command
from kaiser.cli.verify import verify_command
from kaiser.cli.walk import walk_command
from kaiser.inputs import InputError
from kaiser.linux.mm import MmError
from kaiser.linux.variants import UnknownVariant
from kaiser.x86.bits import BitsError
from kaiser.x86.geometry import AddressError
from kaiser.x86.pagetable import PagingError
from kaiser.x86.physmem import PhysMemError


class KaiserGroup(TyperGroup):
    """The root command. Every outcome is an exit status -- 0 done, 1 a finding a CI should act on,
    2 bad input (option, argument or file), 130 interrupted -- and every error one line on stderr,
    never a traceback nor click's boxed usage text; in-process runners (CliRunner) get the same."""

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
        except USER_ERRORS as exc:
            code = _one_line(str(exc), 2)
        if standalone_mode:
            sys.exit(code)
        return code


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


app.command("demo")(demo_command)
app.command("walk")(walk_command)
app.command("verify")(verify_command)
app.command("dump")(dump_command)
app.command("diff")(diff_command)
app.command("audit")(audit_command)
app.command("run")(run_command)
app.command("compare")(compare_command)
app.command("replay")(replay_command)
app.command("sweep")(sweep_command)
app.command("report")(report_command)
app.add_typer(bench_app, name="bench")
app.add_typer(attack_app, name="attack")
app.command("record", context_settings={"allow_interspersed_args": False})(record_command)
app.add_typer(recording_app, name="recording")

# Errors that mean "the input was wrong", reported in one line with exit status 2.
USER_ERRORS: tuple[type[Exception], ...] = (
    InputError,
    BitsError,
    AddressError,
    PagingError,
    PhysMemError,
    UnknownVariant,
    MmError,
)


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
