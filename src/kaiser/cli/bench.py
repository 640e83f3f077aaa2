"""`kaiser bench ...`: what isolation costs.

`kaiser bench [options]` replays a workload on every chosen variant and prices it against nopti
(TLB misses, walks, CR3 writes, cycles, overhead; `--plot` draws overhead versus system-call rate);
`kaiser bench memory` prices page-table memory per variant; `kaiser bench engine` measures the
replay engine against the reference path; `kaiser bench replay` measures replay throughput on a
real trace, end to end from the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kaiser.choices import BASELINE, KERNEL_SIDES, MACHINE_NAMES, THP_MODES, WORKLOAD_NAMES
from kaiser.cli.bench_attack import attack_bench_command
from kaiser.cli.bench_engine import engine_command
from kaiser.cli.bench_published import published_command
from kaiser.cli.bench_replay import replay_bench_command
from kaiser.cli.machine import (
    CpusOption,
    HostPageOption,
    PtiOption,
    VendorOption,
    VmOption,
    VsyscallOption,
    vm_host_page,
)
from kaiser.cli.options import ReplayPathOption, choice, plot_file, variant_names
from kaiser.cli.output import Col, console, emit_json, fail, print_table, progress_bar
from kaiser.cost.params import CACHE_SOURCES, SKYLAKE, SOURCES, CostParams, for_caches
from kaiser.x86.cache_geometry import HIERARCHIES, CacheHierarchy, get_hierarchy

if TYPE_CHECKING:  # the model, the engine and matplotlib are imported when a command runs
    from kaiser.cost.run import Comparison

bench_app = typer.Typer(
    help="Price isolation: TLB misses, walks, CR3 writes and cycles per variant (default), page-table memory.",
    invoke_without_command=True,
)

VariantOpt = Annotated[
    list[str] | None,
    typer.Option("--variant", "-v", callback=variant_names, help="Variant to include (repeatable); all by default."),
]
# CHOSEN: an iteration replays tens to thousands of events; beyond 100,000 of them a bench run takes
# hours on the reference path, and the per-operation figures stopped moving long before.
ITERATIONS_MAX = 100_000


def chosen_variants(names: list[str] | None) -> list[str]:
    """The variants named on the command line, validated; all of them when none is named."""
    from kaiser.linux.variants import VARIANTS, UnknownVariant, get_variant

    if not names:
        return list(VARIANTS)
    try:
        return [get_variant(n).name for n in names]
    except UnknownVariant as exc:
        fail(str(exc))


@bench_app.command("memory")
def memory_command(
    variant: VariantOpt = None,
    pcid: Annotated[bool, typer.Option("--pcid/--no-pcid", help="CPU with PCID.")] = True,
    la57: Annotated[bool, typer.Option("--la57/--4level", help="5-level or 4-level paging.")] = False,
    pti: PtiOption = "auto",
    vendor: VendorOption = "intel",
    vsyscall: VsyscallOption = None,
    cpus: CpusOption = 2,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Page-table memory per process and shared, per variant, for a typical ~22 MiB process."""
    from kaiser.linux.memory import frames_kib, measure

    rows = [
        measure(name, pcid=pcid, la57=la57, pti=pti, vendor=vendor, vsyscall=vsyscall, ncpus=cpus)
        for name in chosen_variants(variant)
    ]
    if json_out:
        emit_json([r.as_dict() for r in rows])
        return
    title = (
        f"page-table memory, one typical process ({rows[0].user_footprint >> 20} MiB mapped), "
        f"{'5' if la57 else '4'}-level, PCID {'on' if pcid else 'off'}"
    )
    cols = ("variant", "per process", "PTI part", "full shadow", "kernel (shared)", "PTI (shared)")
    _print_table(
        title,
        list(cols),
        [
            [
                r.variant,
                f"{frames_kib(r.process_tables)} KiB",
                f"+{frames_kib(r.process_pti_extra)} KiB",
                f"+{frames_kib(r.full_duplication_extra)} KiB" if r.full_duplication_extra else "-",
                f"{frames_kib(r.shared_kernel_tables)} KiB",
                f"{frames_kib(r.shared_pti_tables)} KiB",
            ]
            for r in rows
        ],
    )
    console.print(
        "per process: the process's PGD(s) and user page tables; PTI part: what isolation adds to that "
        "(top-level-only shadowing: one 4 KiB PGD); full shadow: what duplicating every level of the "
        "user half would add instead (the review's 'completely duplicated?' question); shared: init_mm's "
        "kernel tables and the user tables' kernel half, paid once per machine."
    )


# ---- kaiser bench (the callback): TLB and cycle costs ---------------------------------------------
def isolating_variants() -> list[str]:
    """The registered variants that isolate (the default set `kaiser bench` prices)."""
    from kaiser.linux.variants import VARIANTS

    return [name for name, v in VARIANTS.items() if v.isolating]


def parse_settings(items: list[str] | None) -> dict[str, str]:
    """`--set k=v` items as a dict; a malformed item is a one-line error."""
    from kaiser.cost.workloads import WorkloadError

    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise WorkloadError(f"--set {item!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def run_bench(
    variants: list[str],
    workload: str,
    pcids: tuple[bool, ...],
    settings: dict[str, str],
    iterations: int,
    warmup: int,
    path: str | None,
    show_progress: bool = True,
    caches: CacheHierarchy | None = None,
    params: CostParams = SKYLAKE,
    kernel_side: str = "recorded",
    switches: dict[str, Any] | None = None,
    host_page: str | None = None,
) -> list[Comparison]:
    """Every chosen variant at every PCID setting, with nopti baselines, behind a progress bar;
    `caches`: the data caches (None: none), priced with `params`; `kernel_side`: system call
    bodies "recorded" (from the shipped recordings where one exists) or "modelled"."""
    from kaiser.cost.run import compare

    total = len(pcids) * (1 + len([v for v in variants if v != BASELINE]))
    kw: dict[str, Any] = {"iterations": iterations, "warmup": warmup, "path": path, "params": params}
    kw["kernel_side"] = kernel_side
    if host_page:
        kw["host_page"] = host_page
    if switches:
        kw["switches"] = switches
    if caches is not None:
        kw["caches"] = caches
    with progress_bar(disable=not show_progress) as bar:
        task = bar.add_task("replaying", total=total)
        state = {"n": 0}

        def tick(label: str) -> None:
            if state["n"]:
                bar.advance(task)
            state["n"] += 1
            bar.update(task, description=f"replaying {label}")

        out = compare(variants, workload, pcids=pcids, settings=settings, progress=tick, **kw)
        bar.advance(task)
    return out


def _fmt(v: float, digits: int = 2) -> str:
    return f"{v:,.{digits}f}"


def _print_table(title: str, cols: list[str], rows: list[list[str]]) -> None:
    """A table whose headers break at their spaces and whose columns are as wide as their widest
    cell, fitted to the terminal by `output.print_table` (no number is ever truncated)."""
    print_table([Col(col, justify="left" if i == 0 else "right") for i, col in enumerate(cols)], rows, title=title)


def print_tables(rows: list[Comparison], title: str) -> None:
    """Three tables narrow enough for 80 columns: cost per operation, TLB counts per operation,
    and per system call against nopti."""
    cost: list[list[str]] = []
    tlb: list[list[str]] = []
    seen: set[tuple[str, bool]] = set()
    for cmp in rows:
        for r, ovh in ((cmp.baseline, 0.0), (cmp.result, cmp.overhead)):
            if (r.variant, r.pcid) in seen:
                continue
            seen.add((r.variant, r.pcid))
            n, k = r.iterations, r.counters
            who = [r.variant, "on" if r.pcid else "off"]
            cost.append([
                *who,
                _fmt(r.per_op, 0),
                "-" if r.variant == BASELINE else f"{ovh:+.1f}%",
                f"{r.syscall_rate / 1e6:.2f} M" if r.syscalls else "-",
                f"{_fmt(k.cr3_writes / n)} ({_fmt((k.cr3_writes - k.cr3_noflush) / n)})",
            ])  # fmt: skip
            tlb.append([
                *who,
                *(_fmt(v / n) for v in (k.itlb_misses, k.dtlb_misses, k.stlb_misses, k.walks, k.walk_loads)),
                f"{k.invlpg / n:.2f}/{k.invpcid / n:.2f}",
            ])  # fmt: skip
    _print_table(
        f"{title}: cost per operation (one workload iteration)",
        ["variant", "PCID", "cycles per op", "overhead", "syscalls per s", "CR3 writes (flushing)"],
        cost,
    )
    _print_table(
        "TLB per operation",
        ["variant", "PCID", "iTLB miss", "dTLB miss", "STLB miss", "walks", "walk loads", "INVLPG / INVPCID"],
        tlb,
    )
    per: list[list[str]] = []
    for cmp in rows:
        if cmp.result.variant == BASELINE or not cmp.result.syscalls:
            continue
        p = cmp.per_syscall()
        per.append([
            cmp.result.variant,
            "on" if cmp.result.pcid else "off",
            _fmt(p["itlb_walks"]),
            _fmt(p["dtlb_walks"]),
            f"{p['extra_walks_vs_nopti']:+.2f}",
            _fmt(p["cr3_writes"]),
            _fmt(p["cycles"], 0),
            f"{p['overhead_percent']:+.1f}%",
        ])  # fmt: skip
    _print_table(
        f"per system call, against {BASELINE} at the same work",
        ["variant", "PCID", "iTLB walks", "dTLB walks", "extra walks", "CR3 writes", "cycles", "overhead"],
        per,
    )


def print_kernel_side(rows: list[Comparison]) -> None:
    """Which transitions' kernel bodies were recorded and which modelled, and the recorded ones'
    distinct kernel pages a call (the walks they cost are the per-syscall table's)."""
    if not rows:
        return
    r = rows[0].result
    modelled = [n for n, s in r.kernel_side.items() if s == "modelled"]
    for name, p in r.kernel_pages.items():
        console.print(
            f"{name}: the real kernel's body ({p['recording']}) is {p['code_4k']} code and "
            f"{p['data_4k']} data 4 KiB pages a call; priced here: {p['kernel_side']}"
        )
    console.print(f"kernel side modelled (linux/syscalls.py): {', '.join(modelled) if modelled else 'none'}")
    walks = [
        f"{c.result.variant} {'PCID' if c.result.pcid else 'no PCID'} {w['per_transition']:.1f}"
        for c in rows
        if (w := c.result.recorded_walks()) is not None
    ]
    if walks:
        console.print("page walks a recorded transition (entry, body, exit): " + ", ".join(walks), highlight=False)


def print_cache_table(rows: list[Comparison], caches: str) -> None:
    """Cache misses per operation and where the page walks' loads were served."""
    out: list[list[str]] = []
    seen: set[tuple[str, bool]] = set()
    for cmp in rows:
        for r in (cmp.baseline, cmp.result):
            if (r.variant, r.pcid) in seen:
                continue
            seen.add((r.variant, r.pcid))
            n, k = r.iterations, r.counters
            walk = (k.walk_loads_l1, k.walk_loads_l2, k.walk_loads_llc, k.walk_loads_dram)
            out.append([
                r.variant,
                "on" if r.pcid else "off",
                *(_fmt(v / n) for v in (k.l1i_misses, k.l1d_misses, k.l2_misses, k.llc_misses, k.dram_reads)),
                "/".join(_fmt(v / n, 1) for v in walk),
            ])  # fmt: skip
    _print_table(
        f"caches ({caches}) per operation",
        ["variant", "PCID", "L1I miss", "L1D miss", "L2 miss", "LLC miss", "DRAM lines", "walk loads L1/L2/LLC/DRAM"],
        out,
    )


def _baseline_dict(row: Comparison) -> dict[str, Any]:
    """The nopti run a comparison is against, with its overhead against itself (0)."""
    return row.baseline.as_dict() | {"overhead_percent": 0.0}


def _single_run(row: Comparison) -> dict[str, Any]:
    """The keys a reader of one run looks for at the top level of `--json`: its overhead, cycles
    per operation, rate and counters, and the same of its nopti baseline."""
    run = row.as_dict()
    keys = ("variant", "pcid", "overhead_percent", "cycles_per_op", "syscalls_per_second", "counters")
    return {k: run[k] for k in keys} | {"baseline": _baseline_dict(row)}


def plot_overhead(rows: list[Comparison], path: Path, title: str) -> None:
    """Overhead (%) against nopti versus system calls per second (of nopti time at the model's
    clock), one line per isolating variant and PCID setting (solid = PCID, dashed = no PCID), and
    beside it each line over linux's (kaiser.report.draw.rate_figure)."""
    from kaiser.report.draw import SWEEP_WORK, RateCurve, pyplot, rate_figure

    curves = [
        RateCurve(
            variant=cmp.result.variant,
            pcid=cmp.result.pcid,
            rates=tuple(cmp.rate_at_work(w) for w in SWEEP_WORK),
            overheads=tuple(cmp.overhead_at_work(w) for w in SWEEP_WORK),
            extra_per_call=(cmp.result.cycles.total - cmp.baseline.cycles.total) / cmp.result.syscalls,
        )
        for cmp in rows
        if cmp.result.variant != BASELINE and cmp.result.syscalls
    ]
    if not curves:
        fail(f"--plot {path}: the workload makes no system calls, so there is no rate to plot against")
    if not any(y > 0 for c in curves for y in c.overheads):
        fail(f"--plot {path}: no variant costs more than nopti here, so there is no overhead to plot")
    fig = rate_figure(
        curves,
        "Cost of kernel page-table isolation vs system-call rate",
        title,
        SKYLAKE.clock_ghz,
        note="kaiser cost model: replayed TLB/PCID/CR3 events priced in cycles (docs/cost.md). Rate varied by "
        "user computation between calls; user working set fixed.",
    )
    fig.savefig(path, dpi=150)
    pyplot().close(fig)


@bench_app.callback()
def bench_callback(
    ctx: typer.Context,
    variant: VariantOpt = None,
    pcid: Annotated[
        bool | None, typer.Option("--pcid/--no-pcid", help="Only with (or without) PCID; both by default.")
    ] = None,
    workload: Annotated[
        str,
        typer.Option(
            "--workload",
            "-w",
            callback=choice(*WORKLOAD_NAMES),
            help=f"Workload: {', '.join(WORKLOAD_NAMES)}.",
        ),
    ] = "syscall-loop",
    sets: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Workload knob key=value (repeatable), e.g. buffer=100MiB.")
    ] = None,
    iterations: Annotated[
        int, typer.Option("--iterations", "-n", min=1, max=ITERATIONS_MAX, help="Measured iterations.")
    ] = 300,
    warmup: Annotated[
        int, typer.Option("--warmup", min=0, max=ITERATIONS_MAX, help="Iterations replayed before counting.")
    ] = 50,
    path: ReplayPathOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", parser=plot_file, help="Draw overhead vs syscall rate into this PNG.")
    ] = None,
    caches: Annotated[
        str | None,
        typer.Option(
            "--caches",
            callback=choice(*HIERARCHIES),
            help=f"Data caches: {', '.join(HIERARCHIES)} (default: none, every reference an L1D hit).",
        ),
    ] = None,
    machine: Annotated[
        str | None,
        typer.Option(
            "--machine",
            callback=choice(*MACHINE_NAMES),
            help="A known setup (caches, clock, THP, a guest's nested paging; docs/cost.md): "
            f"{', '.join(MACHINE_NAMES)}.",
        ),
    ] = None,
    thp: Annotated[
        str | None,
        typer.Option(
            "--thp",
            callback=choice(*THP_MODES),
            help="Transparent huge pages for the user buffer: always, madvise (Debian's default), never.",
        ),
    ] = None,
    kernel_side: Annotated[
        str,
        typer.Option(
            "--kernel-side",
            callback=choice(*KERNEL_SIDES),
            help="Kernel bodies of syscalls, interrupts, page faults: recorded (Debian 6.1's) or modelled.",
        ),
    ] = "recorded",
    pti: PtiOption = "auto",
    vendor: VendorOption = "intel",
    vsyscall: VsyscallOption = None,
    vm: VmOption = None,
    host_page: HostPageOption = None,
) -> None:
    """Replay a workload on each variant, price it, and compare with nopti at the same work
    (one CPU; --pti/--vendor/--vsyscall as in kaiser dump; --vm: in a guest, nested paging)."""
    if ctx.invoked_subcommand is not None:
        return
    from kaiser.cost.machines import get_machine
    from kaiser.cost.run import default_path
    from kaiser.cost.workloads import WorkloadError, get_workload
    from kaiser.linux.syscalls import UnknownSyscall

    isolating = isolating_variants()
    names = [n for n in chosen_variants(variant) if n != BASELINE] if variant else isolating
    if not names:
        fail(f"choose at least one isolating variant ({', '.join(isolating)}); {BASELINE} is the baseline")
    if path not in (None, "engine", "reference"):
        fail(f"--path {path!r}: use engine or reference")
    try:
        wl = get_workload(workload)
        settings = parse_settings(sets)
        if thp is not None and "thp" not in wl.knob_names():
            raise WorkloadError(f"--thp {thp}: workload {workload!r} has no user buffer (no thp knob)")
        if "thp" not in settings and "thp" in wl.knob_names() and (thp or machine):
            settings["thp"] = thp or get_machine(str(machine)).thp  # --thp, else the machine's
        knobs = wl.resolve(settings)
        if "syscall" in knobs:
            from kaiser.linux.syscalls import get_syscall

            get_syscall(knobs["syscall"])
    except (WorkloadError, UnknownSyscall) as exc:
        fail(str(exc))
    pcids = (True, False) if pcid is None else (pcid,)
    if plot is not None:
        pcids = (True, False)
    m = get_machine(machine) if machine else None  # an explicit --caches wins over the machine's
    base = SKYLAKE.with_overrides(clock_ghz=m.clock_ghz) if m else SKYLAKE
    hierarchy = get_hierarchy(caches) if caches else (m.caches if m else None)
    params = for_caches(base, caches) if caches else (m.params() if m else SKYLAKE)
    latencies = caches or (m.latencies if m else None)
    guest_page = vm_host_page(vm, host_page, m.host_page if m else None)
    if guest_page and not (m and m.guest):  # --vm on bare metal's parameters: a guest's interrupts exit
        params = params.with_overrides(vm_exits_per_interrupt=1.0)
    elif not guest_page and m and m.guest:  # --no-vm on a guest machine: bare metal
        params = params.with_overrides(vm_exits_per_interrupt=0.0)
    caches = hierarchy.name if hierarchy else None
    rows = run_bench(
        names, workload, pcids, settings, iterations, warmup, path, not json_out, hierarchy, params, kernel_side,
        switches={"pti": pti, "vendor": vendor, "vsyscall": vsyscall}, host_page=guest_page,
    )  # fmt: skip
    title = f"{workload}: {wl.describe(knobs)}"
    if plot is not None:
        plot_overhead(rows, plot, f"{workload}: {wl.describe(knobs).replace(' work=0.0', '')}")
    if json_out:
        emit_json(
            {
                "workload": workload,
                "knobs": {k.name: k.show(knobs[k.name]) for k in wl.knobs},
                "iterations": iterations,
                "path": path or default_path(),
                "clock_ghz": params.clock_ghz,
                "params": params.as_dict(),
                "param_sources": {k: str(v) for k, v in SOURCES.items()},
                "caches": caches,
                "cache_sources": str(CACHE_SOURCES[latencies]) if latencies else None,
                "machine": m.summary() if m else None,
                "vm": guest_page is not None,
                "host_page": guest_page,
                # the nopti run of each PCID setting, with its overhead against itself (0) beside the runs'
                "baselines": {("pcid" if r.baseline.pcid else "nopcid"): _baseline_dict(r) for r in rows},
                # each run names its own baseline, with the same keys, so a reader needs no lookup
                "runs": [r.as_dict() | {"baseline": _baseline_dict(r)} for r in rows],
                # one variant at one PCID setting: that run's figures at the top level too
                **(_single_run(rows[0]) if len(rows) == 1 else {}),
                "kernel_side": rows[0].result.kernel_side if rows else {},
                "kernel_pages": rows[0].result.kernel_pages if rows else {},
                "plot": str(plot) if plot else None,
            }
        )
        return
    print_tables(rows, title)
    if caches:
        print_cache_table(rows, caches)
    print_kernel_side(rows)
    console.print(
        f"replay path: {path or default_path()}; {iterations} measured iterations after {warmup} warm-up; "
        f"cycles from kaiser.cost.params at {params.clock_ghz:g} GHz (docs/cost.md); "
        + (f"caches: {caches}." if caches else "no data caches (every reference an L1D hit).")
        + (
            " A recorded transition costs its recorded instructions at kernel_cpi, plus its walks and misses."
            if any(s == "recorded" for c in rows for s in c.result.kernel_side.values())
            else ""
        )
    )
    if m:
        console.print(
            f"machine {m.name}: {m.what}; {m.clock_ghz:g} GHz, caches {caches}, THP {knobs.get('thp', '-')}"
            + (f"; a {m.guest} guest" if m.guest else "")
        )
    if guest_page:
        console.print(
            f"in a guest: nested paging over {guest_page} host pages (walks two-dimensional; "
            "guest walk loads / host walk loads per op: "
            + ", ".join(
                f"{c.result.variant} {'PCID' if c.result.pcid else 'no PCID'} "
                f"{c.result.counters.walk_loads / c.result.iterations:.2f}/"
                f"{c.result.counters.host_walk_loads / c.result.iterations:.2f}"
                for c in rows
            )
            + ")",
            highlight=False,
        )
    if plot is not None:
        console.print(f"plot written to {plot}")


bench_app.command("engine")(engine_command)
bench_app.command("replay")(replay_bench_command)
bench_app.command("published")(published_command)
bench_app.command("attack")(attack_bench_command)
