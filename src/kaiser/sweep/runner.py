"""Run a sweep's missing configurations on dask, storing each result the moment it arrives.

By default a `LocalCluster` of worker *processes* (one thread each: the replay is CPU-bound
Python/numba and holds the GIL); with `scheduler="tcp://HOST:PORT"` the tasks go to an existing
cluster, which is used as it is (its workers need kaiser installed; nothing is started or
stopped there). Workers only compute; the client writes every result, so no shared filesystem is
needed.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kaiser.cost.run import run
from kaiser.sweep.spec import Config, Spec
from kaiser.sweep.store import ResultStore
from kaiser.traces.multireplay import default_workers

if TYPE_CHECKING:
    from distributed import Client


CONNECT_TIMEOUT = "20s"  # to an existing scheduler, before giving up


def run_config(config: Config, path: str | None) -> dict[str, Any]:
    """One configuration, on a worker: the run's `as_dict()` plus where and how long."""
    started = time.time()
    t0 = time.perf_counter()
    result = run(
        config.variant,
        config.workload,
        pcid=config.pcid,
        settings=dict(config.settings),
        iterations=config.iterations,
        warmup=config.warmup,
        path=path,  # type: ignore[arg-type]
        seed=config.seed,
        geometry=config.geometry,
    )
    return {
        "id": config.id,
        "config": config.canonical(),
        "geometry_name": config.geometry.name,
        "result": result.as_dict(),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "started_at": started,
        "elapsed_s": round(time.perf_counter() - t0, 4),
    }


@dataclass
class SweepState:
    """What one invocation found and did."""

    session: str
    total: int
    done_before: int
    todo: int
    ran: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    workers: int = 0
    address: str = ""


@contextmanager
def connect(scheduler: str | None, workers: int) -> Iterator[Client]:
    """A client of `scheduler`, or of a new local cluster of `workers` processes (closed after)."""
    from distributed import Client, LocalCluster

    if scheduler:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def run_sweep(
    spec: Spec,
    store: ResultStore,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    on_start: Callable[[SweepState], None] | None = None,
    on_result: Callable[[SweepState, Config, bool], None] | None = None,
) -> SweepState:
    """Run every configuration of `spec` that `store` does not have yet.

    Each arriving result is written before the next is awaited (`as_completed`); a failing
    configuration is recorded under `failed/` and the sweep goes on. `on_start` sees the counts
    and the cluster; `on_result(state, config, ok)` is called once per finished configuration.
    """
    from distributed import as_completed

    store.prepare()
    store.clean()
    have = store.load()
    todo = [c for c in spec.configs if c.id not in have]
    state = SweepState(uuid.uuid4().hex[:12], len(spec.configs), len(spec.configs) - len(todo), len(todo))
    store.log_session(state.session, state.done_before, state.todo, spec.file)
    if not todo:
        if on_start:
            on_start(state)
        return state
    with connect(scheduler, workers or default_workers()) as client:
        state.workers = len(client.scheduler_info(n_workers=-1)["workers"])
        state.address = str(client.scheduler.address) if client.scheduler else ""
        if on_start:
            on_start(state)
        by_key: dict[Any, Config] = {}
        futures = []
        for config in todo:
            fut = client.submit(run_config, config, spec.path, key=f"kaiser-sweep-{config.id}-{state.session}")
            by_key[fut.key] = config
            futures.append(fut)
        try:
            for fut in as_completed(futures):
                config = by_key[fut.key]
                ok = fut.status == "finished"
                if ok:
                    record = fut.result()
                    record["session"] = state.session
                    record["finished_at"] = time.time()
                    store.write(record)
                    state.ran += 1
                else:
                    exc = fut.exception()
                    error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                    store.write_failure(config.id, error, state.session)
                    state.failed.append((config.id, error))
                fut.release()
                if on_result:
                    on_result(state, config, ok)
        finally:
            for fut in futures:
                fut.cancel()
    return state
