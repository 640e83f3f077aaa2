"""The `kaiser` command: a thin layer over the Python API (`kaiser.x86`, `kaiser.linux`, ...)."""

from __future__ import annotations

import sys

import typer

from kaiser.cli.attack import attack_app
from kaiser.cli.audit import audit_command
from kaiser.cli.bench import bench_app
from kaiser.cli.compare import compare_command
from kaiser.cli.demo import demo_command
from kaiser.cli.dump import dump_command
from kaiser.cli.output import fail
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

app = typer.Typer(
    name="kaiser",
    help="Kernel page-table isolation (KAISER/KPTI) on a bit-exact x86-64 paging model: see it, prove it, price it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo_command)
app.command("walk")(walk_command)
app.command("verify")(verify_command)
app.command("dump")(dump_command)
app.command("audit")(audit_command)
app.command("run")(run_command)
app.command("compare")(compare_command)
app.command("replay")(replay_command)
app.command("sweep")(sweep_command)
app.command("report")(report_command)
app.add_typer(bench_app, name="bench")
app.add_typer(attack_app, name="attack")

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


def main() -> None:
    """Console entry point."""
    try:
        app()
    except USER_ERRORS as exc:
        try:
            fail(str(exc))
        except typer.Exit as done:
            sys.exit(done.exit_code)


if __name__ == "__main__":
    main()
