"""A sweep spec (TOML): the cartesian product of variants x PCID x workloads x TLB geometries x seeds.

```toml
[sweep]
variants = ["nopti", "linux", "kaiser-rfc"]   # or "all"
pcid = [true, false]                           # default: both
seeds = [0, 1]                                 # default: [0]
iterations = 100                               # default 200; measured iterations per run
warmup = 20                                    # default 50
path = "auto"                                  # auto | engine | reference

[[workload]]
name = "syscall-loop"
iterations = 60                                # optional, overrides [sweep] for this workload
knobs = { reads = [0, 64, 512], buffer = "4MiB" }   # `--set` values; a list sweeps the knob

[[geometry]]                                   # none given: the default geometry alone
preset = "skylake-client"
name = "small-stlb"                            # optional label
set = { stlb_4k_2m = { entries = [768, 1536] } }   # structure slug -> entries/ways (lists sweep)
```

Every problem is a `SpecError` whose message is one line: `FILE: KEY: problem`. Each
configuration has a stable id, a hash of its canonical JSON (resolved knob values, the geometry's
numbers, seed, iterations, warm-up), so a rerun recognises the configurations it already has.
The replay path is not part of the id: both paths agree exactly (tests/cost), so a result
computed by either stands for the configuration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaiser.cost.run import engine_available
from kaiser.cost.workloads import Knob, Workload, WorkloadError, get_workload
from kaiser.inputs import InputError, read_text
from kaiser.linux.variants import VARIANTS, UnknownVariant, get_variant
from kaiser.x86 import tlb_geometry
from kaiser.x86.tlb_geometry import DEFAULT_GEOMETRY, CacheGeometry, GeometryError, TlbGeometry

DEFAULTS: dict[str, Any] = {"pcid": [True, False], "seeds": [0], "iterations": 200, "warmup": 50, "path": "auto"}
PATHS = ("auto", "engine", "reference")
SPEC_LIMIT = 1 << 20  # CHOSEN: the example spec is 2 KiB; a megabyte of TOML is not a sweep spec
# CHOSEN: the example sweep is 280 configurations; 100,000 is days of work, and a spec asking for
# more (a product of long lists) is refused before the product is built, not after memory runs out.
MAX_CONFIGS = 100_000
ITERATIONS_MAX = 100_000  # as `kaiser bench --iterations` (cli/bench.py)
SEED_MAX = (1 << 32) - 1  # as every command's --seed (cli/options.py)
TOP_KEYS = ("sweep", "workload", "geometry")
SWEEP_KEYS = ("variants", "pcid", "seeds", "iterations", "warmup", "path")
WORKLOAD_KEYS = ("name", "knobs", "iterations", "warmup")
GEOMETRY_KEYS = ("preset", "name", "set")
OVERRIDE_KEYS = ("entries", "ways")
GROUPS = ("itlb", "dtlb", "stlb", "psc")


class SpecError(ValueError):
    """A spec that cannot be run; the message is one line naming the file, the key and the problem."""


def presets() -> dict[str, TlbGeometry]:
    """Named TLB geometries: every `TlbGeometry` constant of `kaiser.x86.tlb_geometry`."""
    return {g.name: g for g in vars(tlb_geometry).values() if isinstance(g, TlbGeometry)}


def slug(structure: CacheGeometry) -> str:
    """The spec's name for one structure: 'STLB 4K+2M' -> 'stlb_4k_2m', 'PDE cache' -> 'pde_cache'."""
    return re.sub(r"[^a-z0-9]+", "_", structure.name.lower()).strip("_")


def structures(geometry: TlbGeometry) -> dict[str, CacheGeometry]:
    """Every TLB structure of `geometry` by its slug (the names a spec's sizes use)."""
    return {slug(s): s for group in GROUPS for s in getattr(geometry, group)}


def with_sizes(geometry: TlbGeometry, name: str, sizes: dict[str, tuple[int, int]]) -> TlbGeometry:
    """`geometry` renamed, with the structures named by slug resized to (entries, ways)."""

    def resize(s: CacheGeometry) -> CacheGeometry:
        if slug(s) not in sizes:
            return s
        entries, ways = sizes[slug(s)]
        return dataclasses.replace(s, entries=entries, ways=ways)

    groups = {g: tuple(resize(s) for s in getattr(geometry, g)) for g in GROUPS}
    return TlbGeometry(name=name, **groups)


@dataclass(frozen=True)
class Config:
    """One run of the sweep: everything `kaiser.cost.run.run` needs, and nothing about where it runs."""

    variant: str
    pcid: bool
    workload: str
    settings: tuple[tuple[str, str], ...]  # the knobs the spec set, as `--set` text
    knobs: tuple[tuple[str, Any], ...]  # every knob of the workload, resolved (ints, floats, strs)
    geometry: TlbGeometry
    seed: int
    iterations: int
    warmup: int

    def canonical(self) -> dict[str, Any]:
        """What identifies the configuration (the geometry by its numbers, not its label)."""
        geometry = dataclasses.asdict(self.geometry)
        geometry.pop("name")
        return {
            "variant": self.variant,
            "pcid": self.pcid,
            "workload": self.workload,
            "knobs": dict(self.knobs),
            "geometry": geometry,
            "seed": self.seed,
            "iterations": self.iterations,
            "warmup": self.warmup,
        }

    @property
    def id(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def baseline_key(self) -> str:
        """Equal for configurations that differ only in the variant (the nopti baseline's match)."""
        rest = {k: v for k, v in self.canonical().items() if k != "variant"}
        return json.dumps(rest, sort_keys=True, separators=(",", ":"))

    def columns(self) -> dict[str, Any]:
        """The configuration as result-table columns."""
        return {
            "id": self.id,
            "variant": self.variant,
            "pcid": self.pcid,
            "workload": self.workload,
            "geometry": self.geometry.name,
            "seed": self.seed,
            "iterations": self.iterations,
            "warmup": self.warmup,
            **{f"knob_{k}": v for k, v in self.knobs},
        }


@dataclass(frozen=True)
class Spec:
    """A parsed spec: its configurations in a stable order (duplicates dropped, counted)."""

    file: Path
    configs: tuple[Config, ...]
    path: str | None  # replay path for run(): None means the engine if importable
    duplicates: int = 0

    def by_id(self) -> dict[str, Config]:
        return {c.id: c for c in self.configs}


# ---- parsing ---------------------------------------------------------------------------------------
class _Ctx:
    def __init__(self, file: Path) -> None:
        self.file = file

    def fail(self, key: str, problem: str) -> SpecError:
        return SpecError(f"{self.file}: {key}: {problem}")

    def table(self, value: Any, key: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_kind(value)}")
        for k in value:
            if k not in allowed:
                raise self.fail(f"{key}.{k}" if key else k, f"unknown key; valid keys: {', '.join(allowed)}")
        for k in required:
            if k not in value:
                raise self.fail(f"{key}.{k}" if key else k, "missing (required)")
        return value

    def values(self, value: Any, key: str, types: tuple[type, ...], what: str) -> list[tuple[str, Any]]:
        """A scalar or a non-empty list of scalars of `types`, as (key of the item, item) pairs."""
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not value:
            raise self.fail(key, "empty list")
        out = []
        for i, item in enumerate(items):
            k = f"{key}[{i}]" if isinstance(value, list) else key
            ok = isinstance(item, types) and not (isinstance(item, bool) and bool not in types)
            if not ok:
                raise self.fail(k, f"expected {what}, got {_kind(item)}")
            out.append((k, item))
        return out

    def count(self, value: Any, key: str, minimum: int, maximum: int = ITERATIONS_MAX) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {_kind(value)}")
        if value < minimum:
            raise self.fail(key, f"must be at least {minimum}, not {value}")
        if value > maximum:
            raise self.fail(key, f"must be at most {maximum}, not {value}")
        return value

    def product(self, key: str, sizes: list[int]) -> None:
        """Refuse a product of axes with more than MAX_CONFIGS combinations, before building it."""
        n = math.prod(sizes)
        if n > MAX_CONFIGS:
            raise self.fail(key, f"{n:,} combinations; a sweep has at most {MAX_CONFIGS:,} configurations")


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "a list", dict: "a table"}
    return next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)


def _unique(ctx: _Ctx, key: str, items: list[tuple[str, Any]], norm: Any = None) -> list[Any]:
    seen: dict[Any, str] = {}
    for k, v in items:
        n = norm(v) if norm else v
        if n in seen:
            raise ctx.fail(k, f"repeats {seen[n]} ({v!r})")
        seen[n] = k
    return [v for _, v in items]


def _variants(ctx: _Ctx, value: Any) -> list[str]:
    if value == "all":
        return list(VARIANTS)
    items = ctx.values(value, "sweep.variants", (str,), 'a variant name (or "all")')
    for k, name in items:
        try:
            get_variant(name)
        except UnknownVariant as exc:
            raise ctx.fail(k, str(exc)) from None
    return _unique(ctx, "sweep.variants", items)


def _knob_values(ctx: _Ctx, key: str, knob: Knob, value: Any) -> list[str]:
    items = ctx.values(value, key, (str, int), "a string or an integer (or a list of them)")
    texts = [(k, str(v)) for k, v in items]
    for k, text in texts:
        try:
            knob.parse(text)
        except WorkloadError as exc:
            raise ctx.fail(k, f"{text!r}: {exc}") from None
    return _unique(ctx, key, texts, knob.parse)


def _workload(ctx: _Ctx, i: int, raw: Any, sweep: dict[str, Any]) -> list[tuple[Workload, dict[str, str], int, int]]:
    """One [[workload]] block: (workload, settings, iterations, warmup) per knob combination."""
    key = f"workload[{i}]"
    table = ctx.table(raw, key, WORKLOAD_KEYS, required=("name",))
    if not isinstance(table["name"], str):
        raise ctx.fail(f"{key}.name", f"expected a workload name, got {_kind(table['name'])}")
    try:
        wl = get_workload(table["name"])
    except WorkloadError as exc:
        raise ctx.fail(f"{key}.name", str(exc)) from None
    knobs = table.get("knobs", {})
    if not isinstance(knobs, dict):
        raise ctx.fail(f"{key}.knobs", f"expected a table of knob = value(s), got {_kind(knobs)}")
    by_name = {k.name: k for k in wl.knobs}
    axes: list[list[tuple[str, str]]] = []
    for name, value in knobs.items():
        if name not in by_name:
            raise ctx.fail(
                f"{key}.knobs.{name}", f"workload {wl.name!r} has no such knob; valid: {', '.join(wl.knob_names())}"
            )
        axes.append([(name, text) for text in _knob_values(ctx, f"{key}.knobs.{name}", by_name[name], value)])
    iterations = ctx.count(table.get("iterations", sweep["iterations"]), f"{key}.iterations", 1)
    warmup = ctx.count(table.get("warmup", sweep["warmup"]), f"{key}.warmup", 0)
    ctx.product(f"{key}.knobs", [len(a) for a in axes])
    out = []
    for combo in itertools.product(*axes):
        settings = dict(combo)
        try:
            wl.resolve(settings)
        except WorkloadError as exc:
            raise ctx.fail(f"{key}.knobs", str(exc)) from None
        out.append((wl, settings, iterations, warmup))
    return out


def _geometry(ctx: _Ctx, i: int, raw: Any) -> list[TlbGeometry]:
    """One [[geometry]] block: a preset, optionally with structures resized (lists sweep)."""
    key = f"geometry[{i}]"
    table = ctx.table(raw, key, GEOMETRY_KEYS, required=("preset",))
    known = presets()
    if table["preset"] not in known:
        raise ctx.fail(f"{key}.preset", f"unknown preset {table['preset']!r}; known: {', '.join(known)}")
    base = known[table["preset"]]
    label = table.get("name", base.name)
    if not isinstance(label, str) or not label:
        raise ctx.fail(f"{key}.name", f"expected a non-empty string, got {_kind(label)}")
    overrides = table.get("set", {})
    if not isinstance(overrides, dict):
        raise ctx.fail(f"{key}.set", f"expected a table of structure = {{entries, ways}}, got {_kind(overrides)}")
    parts = structures(base)
    axes: list[list[tuple[str, int, int]]] = []
    for name, sizes in overrides.items():
        k = f"{key}.set.{name}"
        if name not in parts:
            raise ctx.fail(k, f"preset {base.name!r} has no such structure; valid: {', '.join(parts)}")
        sizes = ctx.table(sizes, k, OVERRIDE_KEYS)
        if not sizes:
            raise ctx.fail(k, "give entries and/or ways")
        entries = [
            v for _, v in ctx.values(sizes.get("entries", parts[name].entries), f"{k}.entries", (int,), "an integer")
        ]
        ways = [v for _, v in ctx.values(sizes.get("ways", parts[name].ways), f"{k}.ways", (int,), "an integer")]
        axes.append([(name, e, w) for e in entries for w in ways])
    ctx.product(f"{key}.set", [len(a) for a in axes])
    combos = list(itertools.product(*axes))
    out = []
    for combo in combos:
        suffix = " ".join(f"{name}={e}x{w}" for name, e, w in combo)
        name = label if len(combos) == 1 and "name" in table else f"{label} {suffix}".strip()
        try:
            out.append(with_sizes(base, name, {n: (e, w) for n, e, w in combo}))
        except GeometryError as exc:
            raise ctx.fail(f"{key}.set", str(exc)) from None
    return out


def parse_spec(text: str, file: Path) -> Spec:
    """Parse and validate spec `text` (read from `file`, named in errors)."""
    ctx = _Ctx(file)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r" \(at line (\d+), column \d+\)$|\(at end of document\)$", str(exc))
        line = m.group(1) if m and m.group(1) else str(text.count("\n") + 1) if m else None
        raise SpecError(f"{file}:{line}: not valid TOML: {exc}" if line else f"{file}: not valid TOML: {exc}") from None
    except RecursionError:
        raise SpecError(f"{file}: not valid TOML: nested too deeply") from None
    except ValueError as exc:  # tomllib's int() of a number past Python's digit limit
        raise SpecError(f"{file}: not valid TOML: {exc}") from None
    ctx.table(raw, "", TOP_KEYS, required=("sweep", "workload"))
    sweep = {**DEFAULTS, **ctx.table(raw["sweep"], "sweep", SWEEP_KEYS, required=("variants",))}
    variants = _variants(ctx, sweep["variants"])
    pcids = _unique(ctx, "sweep.pcid", ctx.values(sweep["pcid"], "sweep.pcid", (bool,), "true or false"))
    seeds = _unique(ctx, "sweep.seeds", ctx.values(sweep["seeds"], "sweep.seeds", (int,), "an integer"))
    for i, seed in enumerate(seeds):
        ctx.count(seed, f"sweep.seeds[{i}]", 0, SEED_MAX)
    ctx.count(sweep["iterations"], "sweep.iterations", 1)
    ctx.count(sweep["warmup"], "sweep.warmup", 0)
    path = sweep["path"]
    if path not in PATHS:
        raise ctx.fail("sweep.path", f"{path!r} is not one of {', '.join(PATHS)}")
    if path == "engine" and not engine_available():
        raise ctx.fail("sweep.path", "the compiled engine (kaiser.x86.engine) is not installed; use auto or reference")
    blocks = raw["workload"]
    if not isinstance(blocks, list) or not blocks:
        raise ctx.fail("workload", "expected one or more [[workload]] tables")
    workloads = []
    for i, b in enumerate(blocks):
        workloads += _workload(ctx, i, b, sweep)
        ctx.product(f"workload[{i}]", [len(workloads)])  # so far: the blocks add up too
    gblocks = raw.get("geometry", [])
    if not isinstance(gblocks, list):
        raise ctx.fail("geometry", "expected [[geometry]] tables")
    geometries = []
    for i, b in enumerate(gblocks):
        geometries += _geometry(ctx, i, b)
        ctx.product(f"geometry[{i}]", [len(geometries)])
    geometries = geometries or [DEFAULT_GEOMETRY]
    names = [g.name for g in geometries]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ctx.fail("geometry", f"two geometries are labelled {dup!r}; give each a distinct name")
    ctx.product("sweep", [len(workloads), len(geometries), len(pcids), len(seeds), len(variants)])
    configs: dict[str, Config] = {}
    for (wl, settings, iterations, warmup), geometry, pcid, seed, variant in itertools.product(
        workloads, geometries, pcids, seeds, variants
    ):
        knobs = wl.resolve(settings)
        config = Config(
            variant,
            pcid,
            wl.name,
            tuple(settings.items()),
            tuple((k.name, knobs[k.name]) for k in wl.knobs),
            geometry,
            seed,
            iterations,
            warmup,
        )
        configs.setdefault(config.id, config)
    total = len(workloads) * len(geometries) * len(pcids) * len(seeds) * len(variants)
    return Spec(file, tuple(configs.values()), None if path == "auto" else path, total - len(configs))


def load_spec(file: Path) -> Spec:
    """Read (`kaiser.inputs`: a regular file, bounded, strict UTF-8) and parse a spec file; an
    unreadable one is a `SpecError` too."""
    try:
        text = read_text(file, "sweep spec", limit=SPEC_LIMIT)
    except InputError as exc:
        raise SpecError(str(exc)) from None
    return parse_spec(text, file)
