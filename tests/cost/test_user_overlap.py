"""A user phase's independent loads are priced overlapped (kaiser.cost.model's user_overlap): the
user-load counters are the user spans' own, the overlap only lowers the price, and with no
overlap (one load a latency, one miss and one walk at a time) the price is the serial one."""

from __future__ import annotations

import pytest

from kaiser.cost.model import price
from kaiser.cost.params import SKYLAKE, for_caches
from kaiser.cost.run import run
from kaiser.x86.cache_geometry import get_hierarchy

SMALL = {"iterations": 8, "warmup": 2}


def _no_overlap(params, caches: bool):  # type: ignore[no-untyped-def]
    l1 = params.l1_hit if caches else params.mem_ref
    return params.with_overrides(load_ports=1 / l1, fill_buffers=1.0, page_walkers=1.0)


@pytest.mark.parametrize("caches", [None, "skylake-client"])
@pytest.mark.parametrize(
    ("variant", "pcid", "settings"),
    [
        ("linux", False, {"reads": "64", "stride": "4KiB", "buffer": "256KiB"}),
        ("linux-4.15", True, {"reads": "300", "stride": "64", "buffer": "1MiB"}),
        ("nopti", False, {"reads": "40", "stride": "2MiB", "buffer": "100MiB"}),
    ],
)
def test_overlap_lowers_only_the_user_loads_price(
    caches: str | None, variant: str, pcid: bool, settings: dict[str, str]
) -> None:
    hier = get_hierarchy(caches) if caches else None
    params = for_caches(SKYLAKE, caches) if caches else SKYLAKE
    r = run(variant, "syscall-loop", pcid=pcid, settings=settings, params=params, caches=hier, **SMALL)  # type: ignore[arg-type]
    u = r.user_counters
    assert u is not None and u.dtlb_hits + u.dtlb_misses == r.iterations * int(settings["reads"])
    assert u.itlb_hits + u.itlb_misses == 0  # the loop's fetch is outside the user spans
    on = hier is not None
    serial = price(r.counters, r.ops, params, caches=on, recorded=r.recorded_counters)
    got = price(r.counters, r.ops, params, caches=on, recorded=r.recorded_counters, user=u)
    assert got.as_dict() == pytest.approx(r.cycles.as_dict())
    assert got.total < serial.total
    changed = {k for k in serial.terms if got.terms[k] != pytest.approx(serial.terms[k])}
    assert changed <= {"translation", "memory_refs", "dram_bandwidth"}
    flat = _no_overlap(params, on)  # no overlap at all: exactly the serial price
    assert price(r.counters, r.ops, flat, caches=on, recorded=r.recorded_counters, user=u).as_dict() == pytest.approx(
        price(r.counters, r.ops, flat, caches=on, recorded=r.recorded_counters).as_dict()
    )


def test_no_user_loads_no_user_counters() -> None:
    """reads=0 (the null call, every fit row): nothing is overlapped, the price is the serial one."""
    r = run("linux-4.15", "null-syscall", pcid=False, **SMALL)  # type: ignore[arg-type]
    assert r.user_counters is None
    assert r.cycles.as_dict() == price(r.counters, r.ops, SKYLAKE, recorded=r.recorded_counters).as_dict()
