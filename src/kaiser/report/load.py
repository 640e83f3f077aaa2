"""Read what a report is made from: a `kaiser bench --json` file or a `kaiser sweep` output.

Both become one `Results`: a list of `Row`s (one per variant x PCID setting x configuration)
whose `metrics` use a few standard names per measured iteration (`cycles_per_op`,
`overhead_percent`, `walks`, `cr3_writes`, ...) so that the plots and tables need not know where
a number came from. Anything wrong with the input is a `ReportError` whose message names the file
and what is wrong with it, in one line.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from kaiser.inputs import InputError, check_input, read_bytes, read_text

RESULTS_CSV = "results.csv"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_LIMIT = 16 << 20  # CHOSEN: a sweep's own plots are ~100 KiB; a larger "PNG" is not one of them

# Per-iteration metrics every plot and table reads, with their labels (unit included).
STANDARD_METRICS: dict[str, str] = {
    "cycles_per_op": "cycles/op",
    "overhead_percent": "overhead vs nopti (%)",
    "syscalls_per_second": "syscalls/s",
    "itlb_misses": "iTLB misses/op",
    "dtlb_misses": "dTLB misses/op",
    "stlb_misses": "STLB misses/op",
    "walks": "page walks/op",
    "walk_loads": "walk loads/op",
    "cr3_writes": "CR3 writes/op",
    "cr3_flushing": "flushing CR3 writes/op",
    "invlpg": "INVLPG/op",
    "invpcid": "INVPCID/op",
}

# The order in which `kaiser.cost.model.price` lists where the cycles go.
CYCLE_TERMS = ("translation", "cr3", "invalidation", "memory_refs", "entry_exit", "kernel_work", "user_work")


class ReportError(Exception):
    """The results given to `kaiser report` cannot be read; the message names the file."""


# Metrics that may be below zero: a variant cheaper than nopti (never by more than all its cycles).
SIGNED_METRICS = {"overhead_percent": -100.0}


def _check_metrics(metrics: dict[str, float], where: str, path: Path) -> None:
    """Every metric a finite number, and no count or cost below zero (`SIGNED_METRICS` aside)."""
    for name, value in metrics.items():
        low = SIGNED_METRICS.get(name, 0.0)
        if not math.isfinite(value) or value < low:
            raise ReportError(f"{path}: {where}: {name} is {value!r}, not a finite number >= {low:g}")


@dataclass(frozen=True)
class Row:
    """One measured configuration: what was run (`config`, as text) and what it cost (`metrics`)."""

    variant: str
    pcid: bool | None
    workload: str
    config: dict[str, str]
    metrics: dict[str, float]

    @property
    def pcid_text(self) -> str:
        return "-" if self.pcid is None else ("on" if self.pcid else "off")


@dataclass
class Results:
    """Everything a report shows, whichever command produced it."""

    source: Path
    kind: Literal["bench", "sweep"]
    rows: list[Row]
    header: list[tuple[str, str]]  # (label, text) pairs for "what was run"
    clock_ghz: float | None = None
    params: list[tuple[str, str, str]] = field(default_factory=list)  # (name, value, source)
    pngs: list[tuple[str, bytes]] = field(default_factory=list)  # plots the producer drew itself
    config_keys: list[str] = field(default_factory=list)  # config columns beyond variant/pcid/workload

    @property
    def variants(self) -> list[str]:
        return _unique(r.variant for r in self.rows)

    @property
    def workloads(self) -> list[str]:
        return _unique(r.workload for r in self.rows)

    def swept(self) -> list[str]:
        """Config keys that take more than one value (the knobs a sweep varied)."""
        return [k for k in self.config_keys if k not in NOT_SWEPT and len({r.config.get(k, "") for r in self.rows}) > 1]


def _unique(items: Any) -> list[str]:
    return list(dict.fromkeys(items))


def modified(path: Path) -> str:
    """The file's modification time, UTC, to the second."""
    return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# ---- dispatch ------------------------------------------------------------------------------------
def load(path: Path) -> Results:
    """A bench JSON file, a sweep directory, or a sweep's results.csv."""
    if path.is_dir():
        csv_path = path / RESULTS_CSV
        if not csv_path.is_file():
            raise ReportError(f"{path}: a directory without {RESULTS_CSV} (give a `kaiser sweep` output directory)")
        return load_sweep(csv_path)
    try:
        check_input(path, "results")  # a regular file: not a FIFO, device or /proc file
    except InputError as exc:
        raise ReportError(str(exc)) from None
    if path.suffix.lower() == ".csv":
        return load_sweep(path)
    return load_bench(path)


# ---- kaiser bench --json -------------------------------------------------------------------------
def _read_text(path: Path) -> str:
    """Through `kaiser.inputs`: a regular file, bounded, strict UTF-8, no NUL bytes."""
    try:
        return read_text(path, "results")
    except InputError as exc:
        raise ReportError(str(exc)) from None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a report can use")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _need(obj: Any, key: str, kind: type | tuple[type, ...], where: str, path: Path) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ReportError(f"{path}: not a `kaiser bench --json` output: {where} has no {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ReportError(f"{path}: not a `kaiser bench --json` output: {where}.{key} is {type(value).__name__}")
    return value


def load_bench(path: Path) -> Results:
    """Read a `kaiser bench --json` file (ReportError naming the file and the place otherwise)."""
    text = _read_text(path)
    if not text.strip():
        raise ReportError(f"{path}: empty file (expected `kaiser bench --json` output)")
    try:
        data = json.loads(text, parse_constant=_no_constant)  # NaN, Infinity, -Infinity
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}:{exc.lineno}: not JSON (column {exc.colno}: {exc.msg})") from None
    except ValueError as exc:
        raise ReportError(f"{path}: not usable JSON ({exc})") from None
    except RecursionError:
        raise ReportError(f"{path}: not usable JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: not a `kaiser bench --json` output: top level is {type(data).__name__}, not object")
    runs = _need(data, "runs", list, "the top level", path)
    if not runs:
        raise ReportError(f"{path}: `kaiser bench --json` output with no runs")
    clock_value = data.get("clock_ghz")
    if clock_value is not None and (
        not isinstance(clock_value, int | float) or isinstance(clock_value, bool) or not 0 < clock_value < 100
    ):
        raise ReportError(f"{path}: clock_ghz is {clock_value!r}, not a clock rate in GHz")
    clock = float(clock_value) if clock_value else None
    rows: list[Row] = []
    seen: set[tuple[str, bool]] = set()
    for i, run in enumerate(runs):
        where = f"runs[{i}]"
        if not isinstance(run, dict):
            raise ReportError(f"{path}: not a `kaiser bench --json` output: {where} is {type(run).__name__}")
        base = _bench_baseline(data, run, where, path)
        if base is not None and (base.variant, bool(base.pcid)) not in seen:
            seen.add((base.variant, bool(base.pcid)))
            rows.append(base)
        row = _bench_row(run, where, path)
        if (row.variant, bool(row.pcid)) not in seen:
            seen.add((row.variant, bool(row.pcid)))
            rows.append(row)
    knobs = _dict(data.get("knobs"))
    header = [
        ("command", "kaiser bench --json"),
        ("results", str(path)),
        ("results file dated", modified(path)),
        ("variants", ", ".join(_unique(r.variant for r in rows))),
        ("PCID", ", ".join(_unique(r.pcid_text for r in rows))),
        ("workload", ", ".join(_unique(r.workload for r in rows))),
        ("knobs", " ".join(f"{k}={v}" for k, v in knobs.items()) or "-"),
        ("measured iterations", str(data.get("iterations", "-"))),
        ("replay path", str(data.get("path", "-"))),
    ]
    if clock:
        header.append(("clock", f"{clock:g} GHz"))
    caches = data.get("caches")  # `kaiser bench --caches NAME`: references priced by the level that served them
    header.append(
        (
            "data caches",
            f"{caches} ({data['cache_sources']})"
            if isinstance(caches, str) and isinstance(data.get("cache_sources"), str)
            else (str(caches) if caches else "none (every reference an L1D hit)"),
        )
    )
    params = _dict(data.get("params"))
    sources = _dict(data.get("param_sources"))
    return Results(
        source=path,
        kind="bench",
        rows=rows,
        header=header,
        clock_ghz=clock,
        params=[
            (str(k), f"{v:g}" if isinstance(v, float) else str(v), str(sources.get(k, ""))) for k, v in params.items()
        ],
    )


def _bench_baseline(data: dict[str, Any], run: dict[str, Any], where: str, path: Path) -> Row | None:
    baselines = data.get("baselines")
    if not isinstance(baselines, dict):
        return None
    base = baselines.get("pcid" if run.get("pcid") else "nopcid")
    if not isinstance(base, dict):
        return None
    row = _bench_row(base, f"baselines.{'pcid' if run.get('pcid') else 'nopcid'}", path)
    row.metrics["overhead_percent"] = 0.0
    return row


def _bench_row(run: dict[str, Any], where: str, path: Path) -> Row:
    """One `RunResult.as_dict()` (or `Comparison.as_dict()`), per iteration."""
    variant = _need(run, "variant", str, where, path)
    n = _need(run, "iterations", int, where, path)
    if n <= 0:
        raise ReportError(f"{path}: not a `kaiser bench --json` output: {where}.iterations is {n}")
    k = _need(run, "counters", dict, where, path)
    ops = _need(run, "ops", dict, where, path)
    cycles = _need(run, "cycles", dict, where, path)
    total = float(_need(cycles, "total", (int, float), f"{where}.cycles", path))

    def count(*names: str) -> float:
        return float(sum(_need(k, name, (int, float), f"{where}.counters", path) for name in names))

    def optional(obj: dict[str, Any], key: str, default: float, at: str) -> float:
        return float(_need(obj, key, (int, float), at, path)) if key in obj else default

    syscalls = optional(ops, "syscalls", 0.0, f"{where}.ops")
    m: dict[str, float] = {
        "cycles_per_op": optional(run, "cycles_per_op", total / n, where),
        "itlb_misses": count("itlb_misses") / n,
        "dtlb_misses": count("dtlb_misses") / n,
        "stlb_misses": count("stlb_misses_i", "stlb_misses_d") / n,
        "walks": count("walks_i", "walks_d") / n,
        "walk_loads": count("walk_loads") / n,
        "cr3_writes": count("cr3_writes") / n,
        "cr3_flushing": (count("cr3_writes") - count("cr3_noflush")) / n,
        "invlpg": count("invlpg") / n,
        "invpcid": float(sum(v for name, v in k.items() if name.startswith("invpcid"))) / n,
        # raw totals for the overhead-vs-rate curve
        "iterations": float(n),
        "syscalls": syscalls,
        "cycles_total": total,
    }
    for term in CYCLE_TERMS:
        if term in cycles:
            m[f"cycles.{term}"] = optional(cycles, term, 0.0, f"{where}.cycles") / n
    if "overhead_percent" in run:
        m["overhead_percent"] = optional(run, "overhead_percent", 0.0, where)
    if "baseline_cycles_per_op" in run:
        m["baseline_cycles_total"] = optional(run, "baseline_cycles_per_op", 0.0, where) * n
    if "syscalls_per_second" in run:
        m["syscalls_per_second"] = optional(run, "syscalls_per_second", 0.0, where)
    _check_metrics(m, where, path)
    knobs = _dict(run.get("knobs"))
    return Row(
        variant=variant,
        pcid=bool(run.get("pcid")),
        workload=str(run.get("workload", "-")),
        config={str(a): str(b) for a, b in knobs.items()},
        metrics=m,
    )


# ---- kaiser sweep: results.csv (+ plots/*.png) ---------------------------------------------------
# kaiser.sweep.store writes one row per configuration: the configuration (id, variant, pcid,
# workload, geometry, seed, iterations, warmup, knob_*), the replay path, the run's totals (TLB
# counters, ops, cycles_<term>, cycles_total), cycles_per_op, provenance (worker, elapsed_s,
# session) and baseline_cycles_per_op / overhead_percent against nopti at the same settings.
CONFIG_COLUMNS = ("geometry", "seed", "iterations", "warmup", "path", "la57", "kaslr")
NOT_SWEPT = {"seed", "iterations", "warmup", "path"}  # may differ between runs, but are no design knob
KNOB_PREFIX = "knob_"
BOOKKEEPING = {"id", "worker", "elapsed_s", "session", "error", "started_at"}
# Columns that are measurements whenever present (kaiser.sweep.store.flatten), whatever the rows say.
MEASURED = {*STANDARD_METRICS, "cycles_total", "baseline_cycles_per_op", "events", "syscalls"} | {
    f"cycles_{t}" for t in CYCLE_TERMS
}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _number(text: str) -> float | None:
    """A finite number, else None ("nan" and "inf" parse as floats but are no measurement)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _pcid(text: str, path: Path, line: int) -> bool | None:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    if not t:
        return None
    raise ReportError(f"{path}: line {line}: pcid {text!r} is not true/false")


def _sweep_metrics(v: dict[str, float], clock_ghz: float) -> dict[str, float]:
    """The standard per-iteration metrics from one row's totals (what is absent stays absent)."""
    n = v.get("iterations") or 1.0
    m = dict(v)

    def per_op(name: str, *parts: str) -> None:
        """`name` per iteration: from its total column, else from the sum of its parts."""
        if name in v:
            m[name] = v[name] / n
        elif parts and all(c in v for c in parts):
            m[name] = sum(v[c] for c in parts) / n

    if "cycles_per_op" not in v and "cycles_total" in v:
        m["cycles_per_op"] = v["cycles_total"] / n
    per_op("itlb_misses")
    per_op("dtlb_misses")
    per_op("stlb_misses", "stlb_misses_i", "stlb_misses_d")
    per_op("walks", "walks_i", "walks_d")
    per_op("walk_loads")
    per_op("cr3_writes")
    per_op("invlpg")
    per_op("invpcid", *[c for c in v if c.startswith("invpcid_")])
    if "cr3_writes" in v and "cr3_noflush" in v:
        m["cr3_flushing"] = (v["cr3_writes"] - v["cr3_noflush"]) / n
    for term in CYCLE_TERMS:
        if f"cycles_{term}" in v:
            m[f"cycles.{term}"] = v[f"cycles_{term}"] / n
    # System calls per second of the run's own modelled time (the tables, as `kaiser bench`), and of
    # the nopti run's at the same settings (the x axis of overhead-vs-rate, as `kaiser bench --plot`).
    if v.get("syscalls") and "syscalls_per_second" not in v and v.get("cycles_total"):
        m["syscalls_per_second"] = v["syscalls"] * clock_ghz * 1e9 / v["cycles_total"]
    base = v.get("baseline_cycles_per_op")
    if v.get("syscalls") and base:
        m["nopti_syscalls_per_second"] = v["syscalls"] * clock_ghz * 1e9 / (base * n)
    return m


def load_sweep(path: Path) -> Results:
    """Read a sweep's results.csv (or its output directory) into rows priced as `kaiser sweep` prices them."""
    from kaiser.cost.params import SKYLAKE  # what `kaiser sweep` prices with

    text = _read_text(path)
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ReportError(f"{path}: empty CSV (expected a `kaiser sweep` results.csv with a header row)")
    reader = csv.DictReader(lines)
    try:
        columns = [c.strip() for c in reader.fieldnames or []]
    except csv.Error as exc:
        raise ReportError(f"{path}:1: not CSV ({exc})") from None
    missing = [c for c in ("variant", "workload") if c not in columns]
    if missing or not {"cycles_per_op", "cycles_total"} & set(columns):
        what = f"no {missing[0]!r} column" if missing else "no 'cycles_per_op' or 'cycles_total' column"
        raise ReportError(f"{path}: not a `kaiser sweep` results.csv: {what} (header: {lines[0][:120]})")
    raw = []
    try:
        for line, rec in enumerate(reader, start=2):
            if None in rec or any(v is None for v in rec.values()):
                raise ReportError(f"{path}:{line}: expected {len(columns)} columns")
            raw.append((line, {k.strip(): (v or "").strip() for k, v in rec.items()}))
    except csv.Error as exc:  # e.g. a field over csv.field_size_limit() (128 KiB)
        raise ReportError(f"{path}:{reader.line_num + 1}: not CSV ({exc})") from None
    if not raw:
        raise ReportError(f"{path}: CSV has a header but no rows (the sweep has finished no configuration)")
    numeric = {c: all(_number(r[c]) is not None for _, r in raw if r[c]) for c in columns}
    for c in columns:  # a measured column is numbers throughout, not text that would hide it as a knob
        if numeric[c] or c in BOOKKEEPING or c in CONFIG_COLUMNS or c.startswith(KNOB_PREFIX):
            continue
        if c in MEASURED or any(_number(r[c]) is not None for _, r in raw):
            line, bad = next((n, r[c]) for n, r in raw if r[c] and _number(r[c]) is None)
            raise ReportError(f"{path}:{line}: column {c} is {bad[:40]!r}, not a finite number")
    config_cols = [
        c
        for c in columns
        if c not in ("variant", "pcid", "workload")
        and c not in BOOKKEEPING
        and (c in CONFIG_COLUMNS or c.startswith(KNOB_PREFIX) or not numeric[c])
    ]
    metric_cols = [c for c in columns if numeric[c] and c not in config_cols and c not in BOOKKEEPING]
    metric_cols = [c for c in metric_cols if c not in ("variant", "pcid", "workload")]
    rows: list[Row] = []
    for line, rec in raw:
        if not rec["variant"]:
            raise ReportError(f"{path}: line {line}: empty variant")
        values = {c: float(rec[c]) for c in metric_cols if rec[c]}
        if _number(rec.get("iterations", "")):
            values["iterations"] = float(rec["iterations"])
        _check_metrics(values, "line " + str(line), path)
        rows.append(
            Row(
                variant=rec["variant"],
                pcid=_pcid(rec.get("pcid", ""), path, line),
                workload=rec["workload"] or "-",
                config={c.removeprefix(KNOB_PREFIX): rec[c] for c in config_cols},
                metrics=_sweep_metrics(values, SKYLAKE.clock_ghz),
            )
        )
    results = Results(
        source=path,
        kind="sweep",
        rows=rows,
        header=[],
        clock_ghz=SKYLAKE.clock_ghz,
        pngs=_sweep_pngs(path.parent / "plots"),
        config_keys=[c.removeprefix(KNOB_PREFIX) for c in config_cols],
    )
    results.header = _sweep_header(results, path)
    return results


def _sweep_pngs(folder: Path) -> list[tuple[str, bytes]]:
    """The sweep's own plots, PNG files only (anything else in plots/ is not a picture we embed)."""
    out: list[tuple[str, bytes]] = []
    if folder.is_dir():
        for png in sorted(folder.glob("*.png")):
            try:  # only regular files, bounded (a FIFO named x.png would block forever)
                data = read_bytes(png, "plot", limit=PNG_LIMIT)
            except InputError:
                continue
            if data.startswith(PNG_MAGIC):
                out.append((png.name, data))
    return out


def _sessions(log: Path) -> list[tuple[str, str]]:
    """The spec and the invocations, from the sweep's sessions.log ("ID TIME spec=FILE done=N to_run=M")."""
    try:
        text = read_bytes(log, "sessions.log").decode("utf-8", errors="replace")
    except InputError:  # absent, or not a regular file: the header just goes without it
        return []
    lines = [line.split() for line in text.splitlines()]
    lines = [f for f in lines if len(f) >= 3]
    if not lines:
        return []
    specs = _unique(w.removeprefix("spec=") for f in lines for w in f[2:] if w.startswith("spec="))
    out = [("spec", ", ".join(specs))] if specs else []
    sessions = _unique(f[0] for f in lines)
    return [*out, ("sessions", f"{len(sessions)} (first {lines[0][1]}, last {lines[-1][1]})")]


def _sweep_header(res: Results, path: Path) -> list[tuple[str, str]]:
    header = [
        ("command", "kaiser sweep"),
        ("results", str(path)),
        ("results file dated", modified(path)),
        ("configurations", str(len(res.rows))),
        ("variants", ", ".join(res.variants)),
        ("PCID", ", ".join(_unique(r.pcid_text for r in res.rows))),
        ("workloads", ", ".join(res.workloads)),
    ]
    header += _sessions(path.parent / "sessions.log")
    for key in res.config_keys:
        # Per workload, the values it ran with (a knob a workload lacks is empty there: left out),
        # as `kaiser bench --set` spells them; once for all when every workload has the same.
        per: dict[str, list[str]] = {}
        for wl in res.workloads:
            got = _unique(show_value(wl, key, r.config.get(key, "")) for r in res.rows if r.workload == wl)
            if got := [v for v in got if v]:
                per[wl] = got
        if not per:
            continue
        if len(per) == len(res.workloads) and len({tuple(v) for v in per.values()}) == 1:
            header.append((key, _listed(next(iter(per.values())))))
        else:
            header.append((key, "; ".join(f"{_listed(v)} ({wl})" for wl, v in per.items())))
    return header


def _listed(values: list[str]) -> str:
    return ", ".join(values[:12]) + (f", ... ({len(values)} values)" if len(values) > 12 else "")


def show_value(workload: str, key: str, text: str) -> str:
    """A configuration value as `kaiser bench --set` spells it (sizes as 4KiB, 2MiB)."""
    from kaiser.cost.workloads import WorkloadError, get_workload, knob_size_text

    try:
        knob = {k.name: k for k in get_workload(workload).knobs}.get(key)
    except WorkloadError:
        return text
    if knob is not None and knob.show is knob_size_text and text.isdigit() and len(text) <= 30:  # int() digit limit
        return knob_size_text(int(text)) if int(text) else "0"
    return text
