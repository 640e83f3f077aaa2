"""Sweep specs: the cartesian product, stable ids, and one-line errors naming file, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kaiser.cli.sweep import sweep_command
from kaiser.linux.variants import VARIANTS
from kaiser.sweep.spec import SpecError, load_spec, parse_spec, structures
from kaiser.x86.tlb_geometry import SKYLAKE_CLIENT

FILE = Path("spec.toml")
GOOD = """
[sweep]
variants = ["nopti", "linux"]
pcid = [true, false]
seeds = [0, 1]
iterations = 10
warmup = 2

[[workload]]
name = "syscall-loop"
knobs = { reads = [0, 64], buffer = "1MiB" }

[[workload]]
name = "read"
iterations = 5
knobs = { size = ["4KiB", "16KiB", "64KiB"] }

[[geometry]]
preset = "skylake-client"

[[geometry]]
preset = "skylake-client"
set = { stlb_4k_2m = { entries = [384, 768] }, dtlb_4k = { ways = 8 } }
"""


def test_product_and_ids() -> None:
    spec = parse_spec(GOOD, FILE)
    # variants 2 x pcid 2 x seeds 2 x (2 + 3 workload settings) x (1 + 2 geometries)
    assert len(spec.configs) == 2 * 2 * 2 * 5 * 3 and spec.duplicates == 0
    ids = [c.id for c in spec.configs]
    assert len(set(ids)) == len(ids) and all(len(i) == 16 for i in ids)
    assert ids == [c.id for c in parse_spec(GOOD, FILE).configs]  # stable across parses
    by_wl = {c.workload: c for c in spec.configs}
    assert by_wl["read"].iterations == 5 and by_wl["syscall-loop"].iterations == 10
    names = {c.geometry.name for c in spec.configs}
    assert names == {
        "skylake-client",
        "skylake-client stlb_4k_2m=384x12 dtlb_4k=64x8",
        "skylake-client stlb_4k_2m=768x12 dtlb_4k=64x8",
    }
    small = next(c for c in spec.configs if "384" in c.geometry.name)
    assert structures(small.geometry)["stlb_4k_2m"].entries == 384
    assert structures(small.geometry)["dtlb_4k"].ways == 8
    assert structures(small.geometry)["itlb_4k"] == structures(SKYLAKE_CLIENT)["itlb_4k"]


def test_id_is_the_configuration_not_its_spelling() -> None:
    a = parse_spec(GOOD, FILE)
    b = parse_spec(GOOD.replace('"4KiB"', "4096").replace('buffer = "1MiB"', 'buffer = "0x100000"'), FILE)
    assert [c.id for c in a.configs] == [c.id for c in b.configs]
    c = parse_spec(GOOD.replace("iterations = 10", "iterations = 11"), FILE)
    assert {x.id for x in c.configs} != {x.id for x in a.configs}
    # A knob left at its default and the same value written out are the same configuration.
    d = parse_spec(GOOD.replace('buffer = "1MiB"', 'buffer = "1MiB", stride = "4KiB"'), FILE)
    assert [x.id for x in d.configs] == [x.id for x in a.configs]


def test_defaults_all_variants_and_duplicates() -> None:
    spec = parse_spec('[sweep]\nvariants = "all"\n[[workload]]\nname = "null-syscall"\n', FILE)
    assert len(spec.configs) == len(VARIANTS) * 2  # pcid on/off by default, one seed, one geometry
    assert {c.geometry.name for c in spec.configs} == {SKYLAKE_CLIENT.name}
    assert spec.path is None  # auto: the engine when importable
    twice = '[sweep]\nvariants = ["linux"]\npcid = true\n[[workload]]\nname = "pipe"\n[[workload]]\nname = "pipe"\n'
    spec = parse_spec(twice, FILE)
    assert len(spec.configs) == 1 and spec.duplicates == 1


BAD = [
    ("[sweep\n", "not valid TOML"),  # named at its line: FILE:1:
    ('[[workload]]\nname = "pipe"\n', "sweep: missing"),
    ('[sweep]\nvariants = ["linux"]\n', "workload: missing"),
    ('[sweep]\nvariants = ["linux"]\ncolour = 1\n[[workload]]\nname = "pipe"\n', "sweep.colour: unknown key"),
    ('[sweep]\nvariants = ["linux"]\n[[workload]]\nname = "pipe"\n[extra]\n', "extra: unknown key"),
    (
        '[sweep]\nvariants = ["linux", "kpti"]\n[[workload]]\nname = "pipe"\n',
        "sweep.variants[1]: unknown variant 'kpti'",
    ),
    ('[sweep]\nvariants = []\n[[workload]]\nname = "pipe"\n', "sweep.variants: empty list"),
    ('[sweep]\nvariants = ["linux", "linux"]\n[[workload]]\nname = "pipe"\n', "sweep.variants[1]: repeats"),
    (
        '[sweep]\nvariants = ["linux"]\npcid = "yes"\n[[workload]]\nname = "pipe"\n',
        "sweep.pcid: expected true or false",
    ),
    (
        '[sweep]\nvariants = ["linux"]\nseeds = [0, 1.5]\n[[workload]]\nname = "pipe"\n',
        "sweep.seeds[1]: expected an integer",
    ),
    (
        '[sweep]\nvariants = ["linux"]\niterations = 0\n[[workload]]\nname = "pipe"\n',
        "sweep.iterations: must be at least 1",
    ),
    ('[sweep]\nvariants = ["linux"]\nwarmup = -1\n[[workload]]\nname = "pipe"\n', "sweep.warmup: must be at least 0"),
    ('[sweep]\nvariants = ["linux"]\npath = "fast"\n[[workload]]\nname = "pipe"\n', "sweep.path: 'fast' is not one of"),
    ('[sweep]\nvariants = ["linux"]\n[[workload]]\nname = "grep"\n', "workload[0].name: unknown workload 'grep'"),
    ('[sweep]\nvariants = ["linux"]\n[[workload]]\nknobs = {}\n', "workload[0].name: missing"),
    ('[sweep]\nvariants = ["linux"]\n[[workload]]\nname = "pipe"\nrepeat = 2\n', "workload[0].repeat: unknown key"),
    (
        '[sweep]\nvariants = ["linux"]\n[[workload]]\nname = "pipe"\nknobs = { syscall = "getppid" }\n',
        "workload[0].knobs.syscall: workload 'pipe' has no such knob",
    ),
    (
        '[sweep]\nvariants = ["linux"]\n[[workload]]\nname = "pipe"\nknobs = { reads = [1, "lots"] }\n',
        "workload[0].knobs.reads[1]: 'lots'",
    ),
    (
        '[sweep]\nvariants = ["linux"]\n[[workload]]\nname = "pipe"\nknobs = { buffer = ["4KiB", 4096] }\n',
        "workload[0].knobs.buffer[1]: repeats workload[0].knobs.buffer[0]",
    ),
    (
        '[sweep]\nvariants = ["linux"]\n[[workload]]\nname = "pipe"\nknobs = { reads = true }\n',
        "workload[0].knobs.reads: expected a string or an integer",
    ),
    (
        '[sweep]\nvariants = ["linux"]\n[[workload]]\nname = "syscall-loop"\nknobs = { syscall = "fork" }\n',
        "workload[0].knobs.syscall: 'fork'",
    ),
    (
        '[sweep]\nvariants = ["linux"]\n[[workload]]\nname = "pipe"\n[[geometry]]\npreset = "zen4"\n',
        "geometry[0].preset: unknown preset 'zen4'",
    ),
    (
        '[sweep]\nvariants = ["linux"]\n[[workload]]\nname = "pipe"\n[[geometry]]\npreset = "skylake-client"\n'
        "set = { l3 = { entries = 8 } }\n",
        "geometry[0].set.l3: preset 'skylake-client' has no such structure",
    ),
    (
        '[sweep]\nvariants = ["linux"]\n[[workload]]\nname = "pipe"\n[[geometry]]\npreset = "skylake-client"\n'
        "set = { stlb_4k_2m = { entries = 1000 } }\n",
        "geometry[0].set: STLB 4K+2M: 1000 entries do not split into 12-way sets",
    ),
    (
        '[sweep]\nvariants = ["linux"]\n[[workload]]\nname = "pipe"\n[[geometry]]\npreset = "skylake-client"\n'
        "set = { stlb_4k_2m = { size = 8 } }\n",
        "geometry[0].set.stlb_4k_2m.size: unknown key",
    ),
    (
        '[sweep]\nvariants = ["linux"]\n[[workload]]\nname = "pipe"\n[[geometry]]\npreset = "skylake-client"\n'
        '[[geometry]]\npreset = "skylake-client"\n',
        "geometry: two geometries are labelled 'skylake-client'",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[b[1].split(":")[0] for b in BAD])
def test_validation_errors_name_file_key_and_problem(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(text, FILE)
    message = str(info.value)
    assert message.startswith((f"{FILE}: ", f"{FILE}:1: ")) and expected in message, message
    assert "\n" not in message


def test_cli_bad_spec_is_one_line_exit_2(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(sweep_command)
    spec = tmp_path / "bad.toml"
    spec.write_text('[sweep]\nvariants = ["linux"]\n[[workload]]\nname = "pipe"\nknobs = { reads = "x" }\n')
    result = CliRunner().invoke(app, [str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{spec}: workload[0].knobs.reads: 'x'" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()
    missing = CliRunner().invoke(app, [str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "nope.toml: sweep spec: no such file" in missing.output


def test_example_spec_has_at_least_100_configurations() -> None:
    spec = load_spec(Path(__file__).parents[2] / "examples" / "sweep-small.toml")
    assert len(spec.configs) >= 100 and spec.duplicates == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[sweep]\nvariants = ["linux"]\nseeds = [' + ", ".join(map(str, range(400))) + "]\n"
            '[[workload]]\nname = "syscall-loop"\nknobs = { reads = [' + ", ".join(map(str, range(300))) + "] }\n",
            "sweep: 240,000 combinations; a sweep has at most 100,000 configurations",
        ),
        (
            '[sweep]\nvariants = ["linux"]\n[[workload]]\nname = "syscall-loop"\nknobs = { reads = ['
            + ", ".join(map(str, range(400)))
            + "], stride = ["
            + ", ".join(str(4096 * (i + 1)) for i in range(400))
            + "] }\n",
            "workload[0].knobs: 160,000 combinations",
        ),
        (
            '[sweep]\nvariants = ["linux"]\niterations = 99999999999999999999\n[[workload]]\nname = "pipe"\n',
            "sweep.iterations: must be at most 100000",
        ),
        (
            '[sweep]\nvariants = ["linux"]\nseeds = [-1]\n[[workload]]\nname = "pipe"\n',
            "sweep.seeds[0]: must be at least 0",
        ),
        (
            '[sweep]\nvariants = ["linux"]\n[[workload]]\nname = "syscall-loop"\nknobs = { buffer = "'
            + "7" * 5000
            + 'MiB" }\n',
            "is not a size",
        ),
    ],
    ids=["product", "knob-product", "iterations", "seed", "5000-digit-size"],
)
def test_a_spec_asking_for_too_much_is_refused_before_the_work(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(text, FILE)
    assert expected in str(info.value), str(info.value)
