"""What a recording says per transition kind: the median per call of what the kernel did, split
by region, and the user side between transitions (`kaiser recording info`).

Kinds: each syscall by name; `context_switch` (a transition in which `__switch_to_asm` ran: it
entered as one process and left as another, whichever syscall entered); `interrupt` (every
device or APIC vector); each exception by name (`page_fault`). The JSON key names are a contract
(docs/recording.md).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from typing import Any, Final

import numpy as np

from kaiser.record.format import (
    CR3,
    FETCH,
    LOAD,
    OPS,
    REGIONS,
    STORE,
    RecordingReader,
    Transition,
    UserRun,
    UserSummary,
)
from kaiser.record.regions import PAGE_2M, PAGE_4K, Symbol

METRICS: Final = (
    "kernel_instructions",
    "kernel_loads",
    "kernel_stores",
    "code_pages_4k",
    "data_pages_4k",
    "code_pages_2m",
    "data_pages_2m",
    "cr3_writes",
)
USER_METRICS: Final = (
    "user_instructions",
    "user_loads",
    "user_stores",
    "code_pages_4k",
    "data_pages_4k",
    "code_pages_2m",
    "data_pages_2m",
)
# A transition's references by region: "user" holds the kernel's own accesses to user memory
# (copy_to_user, copy_from_user, the rseq and robust-list updates on the way out).
KERNEL_REGIONS: Final = REGIONS


def _counts(refs: np.ndarray) -> tuple[int, ...]:
    op, va = refs["op"], refs["vaddr"]
    code, data = va[op == FETCH], va[(op == LOAD) | (op == STORE)]
    return (
        int(np.count_nonzero(op == FETCH)),
        int(np.count_nonzero(op == LOAD)),
        int(np.count_nonzero(op == STORE)),
        len(np.unique(code >> np.uint64(PAGE_4K))),
        len(np.unique(data >> np.uint64(PAGE_4K))),
        len(np.unique(code >> np.uint64(PAGE_2M))),
        len(np.unique(data >> np.uint64(PAGE_2M))),
        int(np.count_nonzero(op == CR3)),
    )


def transition_metrics(refs: np.ndarray) -> dict[str, Any]:
    """One transition's counts: the totals and each region's (one pass: every page is keyed by
    region and page number, so a region's distinct pages are its share of the unique keys)."""
    n = len(REGIONS)
    op = refs["op"].astype(np.int64)
    region = refs["region"].astype(np.int64)
    per_op = np.bincount(op * n + region, minlength=len(OPS) * n).reshape(len(OPS), n)
    code, data = op == FETCH, (op == LOAD) | (op == STORE)

    def pages(mask: np.ndarray, shift: int) -> np.ndarray:
        keys = (region[mask].astype(np.uint64) << np.uint64(56)) | (refs["vaddr"][mask] >> np.uint64(shift))
        return np.bincount((np.unique(keys) >> np.uint64(56)).astype(np.int64), minlength=n)

    table = np.stack(
        [
            per_op[FETCH],
            per_op[LOAD],
            per_op[STORE],
            pages(code, PAGE_4K),
            pages(data, PAGE_4K),
            pages(code, PAGE_2M),
            pages(data, PAGE_2M),
            per_op[CR3],
        ]
    )
    total = dict(zip(METRICS, _counts(refs), strict=True))
    by_region = {name: dict(zip(METRICS, table[:, tag].tolist(), strict=True)) for tag, name in enumerate(REGIONS)}
    return {"total": total, "by_region": by_region}


def kind_of(t: Transition) -> str:
    """The kind a recorded transition counts under: context_switch, interrupt, or its own name
    (a syscall's, or page_fault)."""
    if t.switched:
        return "context_switch"
    if t.kind == "interrupt":
        return "interrupt"
    return t.name


def _median(values: list[int]) -> int | float:
    m = float(np.median(values)) if values else 0.0
    return int(m) if m.is_integer() else m


def summarize(path: str | os.PathLike[str], *, symbols: bool = False) -> dict[str, Any]:
    """The `kaiser recording info --json` object of one recording."""
    per_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    nr: dict[str, int] = {}
    entered_by: dict[str, Counter[str]] = defaultdict(Counter)
    paths: dict[str, Counter[bytes]] = defaultdict(Counter)
    example: dict[bytes, np.ndarray] = {}
    memo: dict[bytes, dict[str, Any]] = {}
    size: dict[bytes, int] = {}
    user: list[tuple[int, ...]] = []
    with RecordingReader(path) as reader:
        header = reader.header
        for rec in reader.records():
            if isinstance(rec, Transition):
                key = rec.refs.tobytes()
                if key not in memo:
                    memo[key] = transition_metrics(rec.refs)
                kind = kind_of(rec)
                per_kind[kind].append(memo[key])
                entered_by[kind][rec.name] += 1
                if rec.nr >= 0:
                    nr[kind] = rec.nr
                if symbols:
                    code_key = _page_key(rec.refs)
                    paths[kind][code_key] += 1
                    example.setdefault(code_key, rec.refs)
                    size[code_key] = memo[key]["total"]["kernel_instructions"]
            elif isinstance(rec, UserRun):
                c = _counts(rec.refs)
                user.append(c[:7])
            elif isinstance(rec, UserSummary):
                user.append((rec.instructions, rec.loads, rec.stores, 0, 0, 0, 0))
    transitions = {}
    for kind, items in sorted(per_kind.items(), key=lambda kv: -len(kv[1])):
        median = {m: _median([i["total"][m] for i in items]) for m in METRICS}
        by_region = {r: {m: _median([i["by_region"][r][m] for i in items]) for m in METRICS} for r in KERNEL_REGIONS}
        entry: dict[str, Any] = {
            "calls": len(items),
            "syscall_nr": nr.get(kind),
            "entered_by": dict(entered_by[kind].most_common()),
            "median": median,
            "by_region": by_region,
        }
        if symbols:
            # the most common set of pages; among equally common ones (every fault differs), the
            # one whose instruction count is nearest the median (not one with a nested interrupt)
            top = max(paths[kind].values())
            common = min(
                (k for k, c in paths[kind].items() if c == top),
                key=lambda k: abs(size[k] - median["kernel_instructions"]),
            )
            entry["pages"] = pages_of(example[common], header)
        transitions[kind] = entry
    out = {
        "file": str(path),
        "kernel_release": header["kernel_release"],
        "kernel_version": header["kernel_version"],
        "cmdline": header["cmdline"],
        "cpu_model": header["cpu_model"],
        "workload": header["workload"],
        "calls": header["calls"],
        "pti": header["pti"],
        "kaslr": header["kaslr"],
        "transitions": transitions,
        "user": {
            "runs": len(user),
            "median": {m: _median([u[i] for u in user]) for i, m in enumerate(USER_METRICS)},
        },
    }
    return out


def _page_key(refs: np.ndarray) -> bytes:
    """The set of 4 KiB pages a transition touched (what --symbols lists), as a key."""
    pages = np.unique(refs["vaddr"] >> np.uint64(PAGE_4K))
    return pages.tobytes()


def pages_of(refs: np.ndarray, header: dict[str, Any]) -> list[dict[str, Any]]:
    """Every 4 KiB page one transition touched: region, how (code/data), references, and the
    kallsyms names on it (image and per-CPU pages; the direct map and stacks have none)."""
    syms = [Symbol(int(a), str(t), str(n)) for a, t, n in header["symbols"]]
    addrs = np.array([s.address for s in syms], dtype=np.uint64)
    page = refs["vaddr"] >> np.uint64(PAGE_4K)
    out = []
    for p in np.unique(page).tolist():
        mine = refs[page == np.uint64(p)]
        region = REGIONS[int(mine["region"][0])]
        ops = set(mine["op"].tolist())
        how = "+".join(n for n, o in (("code", FETCH), ("load", LOAD), ("store", STORE)) if o in ops)
        names: list[str] = []
        if region in ("entry_text", "kernel_text", "kernel_data", "percpu"):
            # the functions that ran and the objects read or written, not every symbol on the page
            idx = np.searchsorted(addrs, mine["vaddr"][mine["op"] != CR3], side="right") - 1
            names = list(dict.fromkeys(syms[i].name for i in idx.tolist() if i >= 0))
        out.append({"page": p << PAGE_4K, "region": region, "use": how, "refs": len(mine), "symbols": names})
    return out
