"""The permission matrix: our walker against the independent spec model in `spec_oracle.py`.

Each case (a `Flags` vector, kvm-unit-tests `x86/access.c` style, extended per facts/x86-paging.md §1.6/§1.8) is
materialised into real tables in a `PhysicalMemory` with raw `write_u64` (reserved bits cannot be made through
the editing API on purpose), run through `kaiser.x86.walker.translate`, and compared on: fault or not, vector,
exact error code, CR2, physical address and page size, the entry the walk ended at, and the value of every entry
of the walk afterwards (A/D exact, see the oracle's docstring).

Default run: a seeded random sample of the whole legal space (all axes at once) plus every single-axis flip of a
few base cases, plus checks of the enumerator and the oracle themselves.

Slow run (`-m slow`): the product of all axes is astronomically large (~10^9 legal vectors), so "the whole legal
space" is defined as the union of
  * ACCESS_C — access.c's own legal space: its 30 axes (no `fep`), with `cr4.smep` excluded from the main loop as
    `ac_test_legal` does, and `pte.36`/`pde.36` removed by `invalid_mask` because MAXPHYADDR is 46 (~8.5 M cases);
  * one space per extension axis group, each enumerated fully on its own, crossed with the CORE axes (access.c's
    rights/presence/PS/XD/PKU/access/CPU axes; the A/D, `twice` and reserved-probe axes are left out there, as
    ACCESS_C covers them fully and they are orthogonal to the extensions). Every other axis keeps its default.
Counts and the time are printed (`-s`); each space runs on all cores in shards.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import time
from collections.abc import Iterable, Sequence

import pytest

from kaiser.x86.bits import CR0, CR4, EFER, RFLAGS, make_cr3
from kaiser.x86.cpu import CpuFeatures, CpuState
from kaiser.x86.physmem import PhysicalMemory
from kaiser.x86.rights import Op
from kaiser.x86.walker import PF_VECTOR, Fault, translate

try:
    from . import spec_oracle as so
except ImportError:  # rootdir-style import (tests/x86 is not a package)
    import spec_oracle as so  # type: ignore[no-redef]


# ---- the builder -------------------------------------------------------------------------------------------------
def cpu_state(f: so.Flags) -> CpuState:
    """The register state a vector describes."""
    cr0 = CR0.PE | CR0.PG | (CR0.WP if f.cr0_wp else 0)
    cr4 = CR4.PAE | CR4.PGE
    cr4 |= (CR4.SMEP if f.cr4_smep else 0) | (CR4.SMAP if f.cr4_smap else 0) | (CR4.PKE if f.cr4_pke else 0)
    cr4 |= CR4.LA57 if f.la57 else 0
    efer = EFER.LME | EFER.LMA | (EFER.NXE if f.efer_nx else 0)
    rflags = 0x2 | (RFLAGS.AC if f.eflags_ac else 0)
    root = so.TABLE_PML5 if f.la57 else so.TABLE_PML4
    return CpuState(
        cr3=make_cr3(root),
        cr0=int(cr0),
        cr4=int(cr4),
        efer=int(efer),
        rflags=int(rflags),
        pkru=so.pkru(f),
        cpl=3 if f.user else 0,
    )


def build(f: so.Flags) -> tuple[PhysicalMemory, CpuState, CpuFeatures, tuple[so.Entry, ...]]:
    """Fresh memory holding exactly the entries of `f`'s walk (raw writes), and the CPU."""
    mem = PhysicalMemory(1 << f.maxphyaddr, maxphyaddr=f.maxphyaddr)
    es = so.entries(f)
    for e in es:
        mem.write_u64(e.slot, e.value)
    return mem, cpu_state(f), CpuFeatures(maxphyaddr=f.maxphyaddr), es


def check(f: so.Flags) -> list[str]:
    """Run one case on the walker; the list of disagreements with the oracle (empty if none)."""
    mem, state, features, es = build(f)
    want = so.expect(f, es)
    va = so.va_of(f)
    op = Op.FETCH if f.fetch else Op.WRITE if f.write else Op.READ
    try:
        if f.twice:
            translate(mem, state.replace(cpl=0), va, Op.READ, features=features)
        got = translate(mem, state, va, op, implicit=f.implicit, features=features)
    except Exception as exc:  # noqa: BLE001 - any crash is a disagreement
        return [f"walker raised {exc!r}"]
    bad: list[str] = []
    if isinstance(got, Fault):
        if not want.fault:
            bad.append(f"unexpected fault {got.describe()}")
        elif got.vector != PF_VECTOR or got.error_code != want.error_code or got.cr2 != want.cr2:
            bad.append(
                f"fault vector={got.vector} error={got.error_code:#x} cr2={got.cr2!r}, "
                f"want #PF error={want.error_code:#x} cr2={want.cr2:#x} ({got.reason})"
            )
        where = got.entry.level.entry if got.entry else None
        if where != want.level:
            bad.append(f"walk stopped at {where}, want {want.level}")
    else:
        if want.fault:
            bad.append(f"no fault, want error={want.error_code:#x}")
        elif (got.pa, got.page_size) != (want.pa, want.page_size):
            bad.append(f"pa={got.pa:#x}/{got.page_size:#x}, want {want.pa:#x}/{want.page_size:#x}")
        elif got.entries[-1].level.entry != want.level:
            bad.append(f"leaf at {got.entries[-1].level.entry}, want {want.level}")
    for e, value in zip(es, want.after, strict=True):
        now = mem.read_u64(e.slot)
        if now != value:
            bad.append(f"{e.name} after {now:#x}, want {value:#x} (was {e.value:#x}; diff {now ^ value:#x})")
    return bad


def check_all(cases: Iterable[so.Flags], *, limit: int = 20) -> tuple[int, list[str]]:
    """Run cases; (count, first `limit` failure descriptions)."""
    n = 0
    failures: list[str] = []
    for f in cases:
        n += 1
        bad = check(f)
        if bad and len(failures) < limit:
            failures.append(f"[{f}] " + "; ".join(bad))
    return n, failures


# ---- spaces ------------------------------------------------------------------------------------------------------
ACCESS_C = tuple(a for a in so.ACCESS_C_AXES if a not in ("cr4_smep", "pte_36", "pde_36"))
# Rights, presence, page size, XD, PKU, the access and the CPU: what every extension can interact with.
CORE = (
    "pte_rw",
    "pte_user",
    "pte_nx",
    "pte_p",
    "pde_rw",
    "pde_user",
    "pde_pse",
    "pde_nx",
    "pde_p",
    "pdpte_ro",
    "pkru_ad",
    "pkru_wd",
    "pkey1",
    "user",
    "write",
    "fetch",
    "efer_nx",
    "cr0_wp",
    "cr4_pke",
)
# Upper-level rights only meet PKU through "is this a user-mode address": key 1 fully disabled (AD) is enough.
CORE_AD = tuple(a for a in CORE if a != "pkru_wd")
# MAXPHYADDR only decides reserved vs. address bits: presence, page size, XD-as-reserved and the access kind.
CORE_ADDR = ("pte_p", "pte_nx", "pde_p", "pde_pse", "pde_nx", "user", "write", "fetch", "efer_nx", "twice")
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "smep": CORE + ("cr4_smep",),
    "smap_ac_implicit": CORE + ("cr4_smap", "eflags_ac", "implicit"),
    "upper_rights": CORE_AD + ("pml4e_ro", "pml4e_sup", "pml4e_nx", "pdpte_sup", "pdpte_nx"),
    "gbpage": CORE + ("pdpte_ps", "pdpte_29", "pdpte_sup", "pdpte_nx"),
    "reserved_ps": CORE + ("pml4e_ps", "la57", "pml5e_ps"),
    "la57": CORE + ("la57",),
    "global_pat": CORE + ("g", "pde_pat"),
    "maxphyaddr": CORE_ADDR + ("maxphyaddr", "pte_51", "pte_36", "pde_51", "pde_36", "pde_13", "pde_pat"),
}
SPACES: dict[str, tuple[str, ...]] = {"access_c": ACCESS_C}
SPACES.update({f"ext:{name}": axes for name, axes in EXTENSIONS.items()})


def space(name: str) -> Iterable[so.Flags]:
    return so.enumerate_space(SPACES[name])


# ---- default run -------------------------------------------------------------------------------------------------
SAMPLE_SEED = 0x6B616973  # "kais"
SAMPLE_SIZE = 15_000  # the exhaustive spaces above and the slow run below cover the rest


def test_random_sample_of_legal_space() -> None:
    rng = random.Random(SAMPLE_SEED)
    t0 = time.perf_counter()
    n, failures = check_all(so.random_legal(rng) for _ in range(SAMPLE_SIZE))
    print(f"\nrandom sample: {n} cases in {time.perf_counter() - t0:.1f} s")
    assert not failures, "\n".join(failures)


BASE_CASES = {
    "user_write_4k": so.Flags(
        pte_p=True,
        pte_rw=True,
        pte_user=True,
        pde_p=True,
        pde_rw=True,
        pde_user=True,
        user=True,
        write=True,
        efer_nx=True,
        cr0_wp=True,
    ),
    "kernel_read_2m_pke": so.Flags(
        pde_p=True, pde_pse=True, pde_user=True, pkey1=True, cr4_pke=True, cr4_smap=True, efer_nx=True, cr0_wp=True
    ),
    "kernel_fetch_1g": so.Flags(pdpte_ps=True, fetch=True, efer_nx=True, cr4_smep=True),
    "implicit_write_5level": so.Flags(
        pte_p=True,
        pte_user=True,
        pde_p=True,
        pde_rw=True,
        pde_user=True,
        la57=True,
        implicit=True,
        user=True,
        write=True,
        twice=True,
        cr4_smap=True,
        eflags_ac=True,
        maxphyaddr=52,
    ),
}


def single_flips(base: so.Flags) -> list[so.Flags]:
    """Every legal vector that differs from `base` in exactly one axis."""
    out = []
    for axis in so.AXES:
        values: Sequence[object] = so.MAXPHYADDRS if axis == "maxphyaddr" else (not getattr(base, axis),)
        for v in values:
            if v == getattr(base, axis):
                continue
            f = so.dataclasses.replace(base, **{axis: v})
            if so.legal(f):
                out.append(f)
    return out


@pytest.mark.parametrize("name", sorted(BASE_CASES))
def test_single_flag_flips(name: str) -> None:
    base = BASE_CASES[name]
    assert so.legal(base)
    cases = [base, *single_flips(base)]
    n, failures = check_all(cases)
    print(f"\n{name}: base + {n - 1} single-axis flips")
    assert n > 20
    assert not failures, "\n".join(failures)


def test_enumerator_is_exactly_the_legal_subset() -> None:
    """The pruned depth-first enumerator equals brute-force filtering of the product, on a small axis set that
    exercises every legality rule."""
    free = (
        "maxphyaddr",
        "efer_nx",
        "pde_pse",
        "pde_13",
        "pde_nx",
        "pte_nx",
        "pte_36",
        "pde_51",
        "pdpte_ps",
        "pdpte_29",
        "pml5e_ps",
        "la57",
        "fetch",
        "write",
        "implicit",
        "pkru_wd",
        "cr4_pke",
    )
    got = list(so.enumerate_space(free))
    brute = []
    for combo in itertools.product(*[so.MAXPHYADDRS if a == "maxphyaddr" else (False, True) for a in free]):
        f = so.Flags(**dict(zip(free, combo, strict=True)))  # type: ignore[arg-type]
        if so.legal(f):
            brute.append(f)
    assert len(got) == len(set(got))
    assert set(got) == set(brute)
    assert 0 < len(got) < 3**1 * 2 ** (len(free) - 1)


def test_oracle_spot_checks() -> None:
    """Hand-derived cases (SDM §4.6/§4.7), so a wrong oracle is not trusted blindly."""
    ok = BASE_CASES["user_write_4k"]
    e = so.expect(ok)
    assert not e.fault and e.pa == so.PAGE_4K | 0xABC and e.page_size == 4096
    assert e.after[-1] == so.entries(ok)[-1].value | so.A | so.D
    # User write to a read-only PTE: P|W|U, no A/D on the leaf, A on the upper entries.
    e = so.expect(so.dataclasses.replace(ok, pte_rw=False))
    assert e.fault and e.error_code == 0b111 and e.after[-1] == so.entries(ok)[-1].value & ~so.RW
    assert all(v & so.A for v in e.after[:-1])
    # Non-present PDE: P=0 but W|U; PTE untouched.
    e = so.expect(so.dataclasses.replace(ok, pde_p=False))
    assert e.fault and e.error_code == 0b110 and e.level == "PDE"
    # XD with NXE=0 is a reserved bit: P|RSVD.
    e = so.expect(so.dataclasses.replace(ok, pte_nx=True, efer_nx=False))
    assert e.fault and e.error_code == 0b1111
    # Supervisor fetch of a user page with SMEP and NXE=0 reports I/D.
    f = so.Flags(pte_p=True, pte_user=True, pde_p=True, pde_user=True, fetch=True, cr4_smep=True)
    assert so.expect(f).error_code == 0b10001
    # PK: user read, key 1 AD -> P|U|PK; implicit supervisor read at CPL 3 with SMAP and AC blocked: P only.
    f = so.Flags(
        pte_p=True, pte_user=True, pde_p=True, pde_user=True, user=True, pkey1=True, cr4_pke=True, pkru_ad=True
    )
    assert so.expect(f).error_code == 0b100101
    f = so.Flags(
        pte_p=True, pte_user=True, pde_p=True, pde_user=True, user=True, implicit=True, cr4_smap=True, eflags_ac=True
    )
    assert so.expect(f).error_code == 0b1
    assert not so.expect(so.dataclasses.replace(f, user=False)).fault


# ---- slow run ----------------------------------------------------------------------------------------------------
SHARD_AXES = ("user", "write", "cr0_wp", "pde_p", "efer_nx", "pte_p")


def shards(name: str, count: int = 4) -> list[dict[str, bool]]:
    """Split a space by fixing its first `count` SHARD_AXES: each shard enumerates only its own part."""
    axes = [a for a in SHARD_AXES if a in SPACES[name]][:count]
    return [dict(zip(axes, bits, strict=True)) for bits in itertools.product((False, True), repeat=len(axes))]


def _shard(args: tuple[str, dict[str, bool]]) -> tuple[int, list[str]]:
    name, fixed = args
    free = [a for a in SPACES[name] if a not in fixed]
    return check_all(so.enumerate_space(free, so.Flags(**fixed)), limit=5)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SPACES))
def test_whole_legal_space(name: str) -> None:
    workers = os.cpu_count() or 1
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        results = pool.map(_shard, [(name, fixed) for fixed in shards(name)], chunksize=1)
    n = sum(r[0] for r in results)
    failures = [msg for r in results for msg in r[1]]
    print(f"\n{name}: {n} cases in {time.perf_counter() - t0:.1f} s on {workers} processes")
    assert n > 0
    assert not failures, "\n".join(failures[:20])
