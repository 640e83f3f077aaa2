"""How fast the KASLR attack runs (`kaiser bench attack`): the engine path against the reference
path on the same layouts in one process, checked to be the same probe for probe, and the whole
`kaiser attack kaslr` experiment (every variant, 20 layouts) on the engine, timed as a user
waits for it (wall clock and CPU, with the machine's load, since other processes share it)."""

from __future__ import annotations

import os
import resource
import time
from typing import Any

from kaiser.attacks.timing import KaslrRun, run_kaslr, run_variants


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the attack's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed_runs(variant: str, seeds: list[int], path: str) -> tuple[list[KaslrRun], list[list[Any]], float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    runs, logs = [], []
    for seed in seeds:
        log: list[Any] = []
        runs.append(run_kaslr(variant, seed=seed, path=path, log=log))
        logs.append(log)
    return runs, logs, time.perf_counter() - wall, time.process_time() - cpu


def _comparable(run: KaslrRun) -> dict[str, object]:
    out = run.as_dict()
    out.pop("seconds")
    return out


def compare_paths(variant: str, seeds: list[int]) -> dict[str, Any]:
    """The attack on `seeds`' layouts of `variant` on both paths: seconds, probes, microseconds
    per probe (a system call and a probe), the ratio, and whether every probe's latency and
    measured cycles and every guess are the same."""
    run_kaslr(variant, seed=seeds[0], regions=("text",))  # untimed: loads the compiled engine
    runs_e, logs_e, wall_e, cpu_e = _timed_runs(variant, seeds, "engine")
    runs_r, logs_r, wall_r, cpu_r = _timed_runs(variant, seeds, "reference")
    probes = sum(r.probes for r in runs_e)
    same = logs_e == logs_r and [_comparable(r) for r in runs_e] == [_comparable(r) for r in runs_r]

    def row(wall: float, cpu: float) -> dict[str, float]:
        return {"seconds": wall, "cpu_seconds": cpu, "us_per_probe": 1e6 * cpu / max(probes, 1)}

    return {
        "variant": variant,
        "seeds": seeds,
        "probes": probes,
        "engine": row(wall_e, cpu_e),
        "reference": row(wall_r, cpu_r),
        "ratio_cpu": cpu_r / cpu_e if cpu_e else 0.0,
        "identical": same,
    }


def whole_attack(variants: list[str], seeds: list[int], jobs: int) -> dict[str, Any]:
    """`kaiser attack kaslr --variant ... -n ...` on the engine with `jobs` processes: wall and CPU
    seconds, the load average when it started, and per variant the layouts whose text base the
    attacker found."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    wall, cpu = time.perf_counter(), _cpu_seconds()
    summaries = run_variants(variants, seeds, jobs=jobs, path="engine")
    return {
        "variants": variants,
        "layouts": len(seeds),
        "jobs": jobs,
        "load_average": load,
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": _cpu_seconds() - cpu,
        "probes": sum(r.probes for s in summaries for r in s.runs),
        "text_matched": {s.variant: s.matched("text") for s in summaries},
    }
