"""`kaiser demo`: the main job on built-in defaults, a tour of what exists."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from kaiser.cli.options import SEED_MAX
from kaiser.cli.output import Col, console, print_table, progress_bar, rule
from kaiser.cli.verify import VERIFY_MAX
from kaiser.x86.geometry import format_size, human_size

if TYPE_CHECKING:  # each tour imports the model it shows when it runs (the help needs none of it)
    from kaiser.api.designs import Design
    from kaiser.linux.kernel import Kernel
    from kaiser.linux.ptdump_parse import RangeLine

# (what, address, op -- a kaiser.x86.rights.Op value --, cpl, rflags.AC): accesses that show each
# rule at work.
TOUR = (
    ("user reads its text", 0x400000, "read", 3, False),
    ("user writes its text", 0x400000, "write", 3, False),
    ("user executes its stack", 0x7FFFFFFFE000, "fetch", 3, False),
    ("user reads the direct map", 0xFFFF888000001000, "read", 3, False),
    ("kernel reads the direct map", 0xFFFF888000001000, "read", 0, False),
    ("kernel writes user data, SMAP", 0x600000, "write", 0, False),
    ("kernel writes user data, SMAP + AC", 0x600000, "write", 0, True),
    ("kernel executes user text, SMEP", 0x400000, "fetch", 0, False),
)


def demo_command(
    verify_cases: Annotated[
        int, typer.Option("--verify-cases", min=0, max=VERIFY_MAX, help="Referee cases to run (0 skips).")
    ] = 500,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX - 1, help="KASLR seed for the booted kernels.")] = 0,
) -> None:
    """Build every variant's isolated address spaces, audit them, price them, referee the walker."""
    _paging_tour()
    kernels = _isolation_tour(seed)
    _audit_tour(kernels)
    rows = _attack_tour(seed)
    _price_tour()
    _memory_tour()
    _designs_tour(rows)
    _referee_tour(verify_cases)


def _paging_tour() -> None:
    from kaiser.sample import build_sample
    from kaiser.x86.bits import CR4, RFLAGS
    from kaiser.x86.cpu import CpuState
    from kaiser.x86.rights import Op
    from kaiser.x86.walker import Translation, translate

    rule("1. the paging model: walks on a small address space (SDM Vol. 3A §4.5-4.7)")
    mem, pt, _ = build_sample()
    cr4 = int(CR4.PAE | CR4.PGE | CR4.SMEP | CR4.SMAP)
    rows = []
    for what, va, op, cpl, ac in TOUR:
        state = CpuState(cr3=pt.cr3(), cr4=cr4, cpl=cpl, rflags=0x2 | (RFLAGS.AC if ac else 0))
        result = translate(mem, state, va, Op(op))
        if isinstance(result, Translation):
            outcome = f"[green]{result.pa:#x}[/] ({format_size(result.page_size)} page)"
        else:
            outcome = f"[red]{result.describe()}[/]"
        rows.append([what, f"{va:#018x}", outcome])
    print_table([Col("access", whole=False), Col("address"), Col("outcome", whole=False)], rows)
    stats = mem.stats()
    console.print(
        f"{stats.page_table} page-table frames in sparse RAM: {mem.size >> 30} GiB of RAM costs "
        f"{mem.frames.nbytes >> 10} KiB of host memory. Try: [bold]kaiser walk 0xffff888000001000 --user[/]"
    )


def _isolation_tour(seed: int) -> dict[str, Kernel]:
    from kaiser.api.exposure import USER_VIEW_HEADERS, exposed_kernel_lines, user_view
    from kaiser.linux.kernel import Kernel, KernelConfig
    from kaiser.linux.ptdump_parse import RangeLine
    from kaiser.linux.variants import VARIANTS

    rule("2. the variants: what user mode can reach of the kernel")
    kernels: dict[str, Kernel] = {}
    rows = []
    for name in VARIANTS:
        kernel = Kernel.boot(KernelConfig(variant=name, seed=seed))
        kernel.spawn()
        kernels[name] = kernel
        rows.append([name, *user_view(kernel).cells()])  # the figures docs/variants.md quotes (via kaiser.docgen)
    print_table([Col("variant"), *(Col(h, justify="right") for h in USER_VIEW_HEADERS)], rows)
    linux = kernels["linux"]
    shown = exposed_kernel_lines(linux, next(iter(linux.tasks.values())))
    if max(len(r.render()) for r in shown) <= console.width:
        lines = [r.render() for r in shown]
    else:  # Linux's lines are 84 columns: the same fields, condensed (every address whole)
        pad = max(len(_size(r)) for r in shown if isinstance(r, RangeLine))
        lines = [_condensed(r, pad) if isinstance(r, RangeLine) else r.render() for r in shown]
    console.print(
        "[bold]linux[/], current_user: every present kernel mapping (Linux's ptdump format; "
        "the whole dump: [bold]kaiser dump --variant linux[/]):"
    )
    console.print("\n".join(lines), highlight=False, soft_wrap=True)
    return kernels


def _size(line: RangeLine) -> str:
    from kaiser.linux.ptdump import size_parts

    num, unit = size_parts(line.size)
    return f"{num}{unit}"


def _condensed(line: RangeLine, pad: int) -> str:
    from kaiser.linux.ptdump import flag_text

    return f"0x{line.start:016x}-0x{line.end:016x} {_size(line):>{pad}} {flag_text(line.flags)} {line.level}"


def _audit_tour(kernels: dict[str, Kernel]) -> None:
    from kaiser.api.exposure import audit_summary

    rule("3. audit: every kernel mapping in the user tables, against two policies")
    rows = []
    for name, kernel in kernels.items():
        s = audit_summary(kernel, next(iter(kernel.tasks.values())))
        colour = "red" if s.exit_status else "green"
        rows.append([
            name,
            ", ".join(f"{k}:{n}" for k, n in s.classes.items()),
            str(s.own_findings),
            f"[{colour}]{s.strict_findings}[/]",
            f"[{colour}]{s.exit_status}[/]",
        ])  # fmt: skip
    cols = [Col("variant"), Col("kernel mappings by class", whole=False)]
    cols += [Col(h, justify="right") for h in ("findings own", "findings strict", "exit")]
    print_table(cols, rows)
    console.print(
        "own: against what the variant's design means to map; strict (kaiser audit's default): only what "
        "today's Linux allows in user tables -- every kernel region Meltdown reads below from an isolating "
        "variant is a strict finding here. nopti fails by design: its user view is the whole kernel. "
        "Audit a real machine: [bold]kaiser audit /path/to/current_user[/]"
    )


def _attack_tour(seed: int) -> list[Design]:
    from kaiser.api.designs import SECRET_BYTES, designs
    from kaiser.attacks.core import REGIONS
    from kaiser.linux.variants import VARIANTS

    rule(f"4. prove: Meltdown against every variant (Flush+Reload, {SECRET_BYTES} secret bytes per cell)")
    with progress_bar(label="measuring every design") as bar:
        task = bar.add_task("", total=len(VARIANTS))
        rows = designs(seed=seed + 1, progress=lambda _name: bar.advance(task))
    cells = []
    for row in rows:
        marks = [f"[{'red' if row.meltdown[r] else 'green'}]{row.meltdown[r]}/{SECRET_BYTES}[/]" for r in REGIONS]
        cells.append([row.variant, *marks])
    print_table([Col("variant"), *(Col(r, justify="right") for r in REGIONS)], cells)
    console.print(
        "Bytes recovered by a user-mode attacker that sees only its own load timings; sensitive and "
        "nonsensitive are ASI's two kinds of memory. Details: "
        "[bold]kaiser attack meltdown --variant all --secret-in all[/], docs/attacks.md"
    )
    return rows


def _designs_tour(rows: list[Design]) -> None:
    from kaiser.api.designs import SECRET_BYTES
    from kaiser.attacks.core import REGIONS

    rule("7. every design side by side")
    heads = ("reachable", "Meltdown bytes", "EntryBleed text", "cycles, PCID", "cycles, no PCID", "page tables")
    cells = [
        [
            row.variant,
            human_size(row.reachable),
            " ".join(str(row.meltdown[r]) for r in REGIONS),
            "[red]found[/]" if row.entrybleed_text else "[green]-[/]",
            f"{row.cycles_pcid:,.0f}",
            f"{row.cycles_nopcid:,.0f}",
            f"{row.table_kib} KiB",
        ]
        for row in rows
    ]
    print_table([Col("design"), *(Col(h, justify="right") for h in heads)], cells)
    console.print(
        f"reachable: kernel memory a process's user tables map; Meltdown: bytes of {SECRET_BYTES} "
        f"read per region ({', '.join(REGIONS)}); EntryBleed: the prefetch probe finds the kernel text "
        "base (kaiser attack kaslr --probe prefetch); cycles: one getppid, recorded kernel side "
        "(kaiser bench -w null-syscall); page tables: one typical process's. kaiser.api.designs, docs/variants.md"
    )


def _price_tour() -> None:
    from kaiser.cost.run import compare
    from kaiser.linux.variants import VARIANTS

    rule("5. price: cycles per system call (getppid + 64 user loads), replayed through the TLB model")
    rate = 50_000  # syscalls per second per CPU: Gregg's "may be 2%" point (facts/performance.md §3)
    rows = {
        c.result.variant + ("" if c.result.pcid else " no-pcid"): c
        for c in compare([n for n in VARIANTS if n != "nopti"], "syscall-loop", iterations=40, warmup=40)
    }
    heads = (
        "cycles, PCID",
        "cycles, no PCID",
        f"overhead at {rate // 1000}k/s, PCID",
        f"at {rate // 1000}k/s, no PCID",
    )
    cells = []
    for name in VARIANTS:
        if name == "nopti":
            continue
        on, off = rows[name], rows[name + " no-pcid"]
        work_on = on.baseline.params.clock_ghz * 1e9 / rate - on.baseline.per_op
        work_off = off.baseline.params.clock_ghz * 1e9 / rate - off.baseline.per_op
        cells.append([
            name,
            f"{on.result.per_op:,.0f}",
            f"{off.result.per_op:,.0f}",
            f"{on.overhead_at_work(work_on):.1f} %",
            f"{off.overhead_at_work(work_off):.1f} %",
        ])  # fmt: skip
    print_table([Col("variant"), *(Col(h, justify="right") for h in heads)], cells)
    base = next(iter(rows.values())).baseline
    console.print(
        f"nopti: {base.per_op:,.0f} cycles per iteration. Plot against syscall rate: "
        "[bold]kaiser bench --plot overhead.png[/] (docs/cost.md)"
    )


def _memory_tour() -> None:
    from kaiser.api.exposure import MEMORY_HEADERS, memory_cells
    from kaiser.linux.variants import VARIANTS

    rule("6. price: page-table memory")
    print_table(
        [Col("variant"), *(Col(h, justify="right") for h in MEMORY_HEADERS)],
        [[name, *memory_cells(name)] for name in VARIANTS],
    )


def _referee_tour(cases: int) -> None:
    if cases <= 0:
        return
    from kaiser.referee import run_verify

    rule(f"8. the referee: our walker against QEMU's MMU (Unicorn), {cases} random cases")
    report = run_verify(cases, seed=1)
    colour = "green" if report.disagreements == 0 else "red"
    console.print(
        f"[{colour}]{report.disagreements} disagreements[/] in {report.cases} cases "
        f"({report.known_qemu_deviations} known QEMU deviations, see docs/referee.md). "
        f"Full run: [bold]kaiser verify --cases 100000[/]"
    )
