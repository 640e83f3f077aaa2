"""A sweep's output directory: one JSON file per finished configuration, and the consolidated CSV.

```
OUT/results/<id>.json    one finished configuration (written to a temporary name, then renamed)
OUT/failed/<id>.json     a configuration whose run raised (rerun on the next invocation)
OUT/results.csv          one row per configuration of the spec, rewritten on start and at the end
OUT/sessions.log         one line per invocation: session id, time, done before, to run
```

A finished result is on disk before the next one is waited for, and a file is either absent or
complete (rename is atomic on POSIX), so killing a sweep at any moment loses no finished result;
a rerun loads what is there and runs only the rest. The per-configuration files are the truth;
`results.csv` is derived from them.

Every result file carries `sha256`, the SHA-256 of the rest of its record in canonical JSON
(sorted keys, no spaces). A rerun reuses a file only when it is a regular file of JSON naming its
own id with a matching checksum; any other (emptied, torn, edited, from an older kaiser without a
checksum) is recomputed, and `ResultStore.rejected` says which and why.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kaiser.cost.model import overhead_percent, rate_per_second
from kaiser.inputs import InputError, check_input, read_bytes
from kaiser.linux.variants import BASELINE
from kaiser.sweep.spec import Config

TMP_PREFIX = ".tmp-"
CHECKSUM = "sha256"
RESULT_LIMIT = 16 << 20  # CHOSEN: a result record is a few KiB; larger is not one of ours


def checksum(record: dict[str, Any]) -> str:
    """SHA-256 of `record` without its checksum field, in canonical JSON (sorted keys, compact)."""
    body = json.loads(json.dumps({k: v for k, v in record.items() if k != CHECKSUM}))  # as it will read back
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_record(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(record, "") if the result file at `path` can be reused, else (None, why not)."""
    try:
        data = read_bytes(path, "result", limit=RESULT_LIMIT)
    except InputError as exc:
        return None, exc.reason
    if not data.strip():
        return None, "empty file"
    try:
        record = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None, "not JSON (torn or corrupted)"
    if not isinstance(record, dict):
        return None, "not a result record"
    if record.get("id") != path.stem:
        return None, f"names configuration {str(record.get('id'))[:20]!r}, not its own"
    if CHECKSUM not in record:
        return None, "no checksum (written by an older kaiser, or edited)"
    if record[CHECKSUM] != checksum(record):
        return None, "checksum mismatch (edited or corrupted)"
    return record, ""


def write_atomic(path: Path, text: str) -> None:
    """`path` holds either its old content or all of `text`, never a part (temp file, fsync, rename)."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ResultStore:
    """The records of one output directory, keyed by configuration id."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.results = out / "results"
        self.failed = out / "failed"
        self.rejected: dict[str, str] = {}  # after `load`: id -> why its file was not reused

    def prepare(self) -> None:
        """Create the directories (loading works without them: an absent directory has no results)."""
        self.results.mkdir(parents=True, exist_ok=True)
        self.failed.mkdir(parents=True, exist_ok=True)

    def clean(self) -> int:
        """Remove temporary files a killed run left behind; how many there were."""
        stale = [p for d in (self.out, self.results, self.failed) if d.is_dir() for p in d.glob(f"{TMP_PREFIX}*")]
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)

    def load(self) -> dict[str, dict[str, Any]]:
        """Every result record by id that passes `check_record`; the others (to be recomputed)
        are in `self.rejected` with the reason."""
        out: dict[str, dict[str, Any]] = {}
        self.rejected = {}
        for p in sorted(self.results.glob("*.json")) if self.results.is_dir() else []:
            record, why = check_record(p)
            if record is None:
                self.rejected[p.stem] = why
            else:
                out[p.stem] = record
        return out

    def write(self, record: dict[str, Any]) -> Path:
        """Store one finished configuration; clears an earlier failure of it."""
        path = self.results / f"{record['id']}.json"
        record = {**record, CHECKSUM: checksum(record)}
        write_atomic(path, json.dumps(record, indent=1))
        (self.failed / path.name).unlink(missing_ok=True)
        return path

    def write_failure(self, config_id: str, error: str, session: str) -> None:
        record = {"id": config_id, "error": error, "session": session, "at": time.time()}
        write_atomic(self.failed / f"{config_id}.json", json.dumps(record, indent=1))

    def log_session(self, session: str, done: int, todo: int, spec: Path) -> None:
        log = self.out / "sessions.log"
        if os.path.lexists(log):  # appending to a FIFO would block; to a device, write who knows where
            check_input(log, "sessions.log")
        with open(log, "a") as f:
            f.write(f"{session} {time.strftime('%Y-%m-%dT%H:%M:%S')} spec={spec} done={done} to_run={todo}\n")

    def write_csv(self, rows: list[dict[str, Any]]) -> Path:
        path = self.out / "results.csv"
        write_atomic(path, to_csv(rows))
        return path


# ---- rows ------------------------------------------------------------------------------------------
def flatten(config: Config, record: dict[str, Any]) -> dict[str, Any]:
    """One result-table row: configuration columns, counts (totals over the measured iterations),
    cycles (by term, total and per op), system calls per second of modelled time, and which worker
    ran it in how long (the session that ran it stays in the JSON record: a rerun must not make a
    column that looks swept)."""
    result = record["result"]
    counters = result["counters"]
    ops = {k: v for k, v in result["ops"].items() if not isinstance(v, dict)}
    return {
        **config.columns(),
        "path": result["path"],
        "events": result["events"],
        **counters,
        "stlb_misses": counters["stlb_misses_i"] + counters["stlb_misses_d"],
        "walks": counters["walks_i"] + counters["walks_d"],
        **ops,
        **{f"cycles_{k}": v for k, v in result["cycles"].items()},
        "cycles_per_op": result["cycles_per_op"],
        "syscalls_per_second": rate_per_second(ops["syscalls"], result["cycles"]["total"]),
        "worker": record.get("worker", ""),
        "elapsed_s": record.get("elapsed_s", ""),
    }


def table(configs: Iterable[Config], records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the configurations that have a record, in spec order, with the overhead against
    nopti at the same other settings where the sweep has that run (else left empty)."""
    have = [(c, records[c.id]) for c in configs if c.id in records]
    base = {c.baseline_key: flatten(c, r)["cycles_total"] for c, r in have if c.variant == BASELINE}
    rows = []
    for c, r in have:
        row = flatten(c, r)
        b = base.get(c.baseline_key)
        row["baseline_cycles_per_op"] = b / c.iterations if b is not None else None
        row["overhead_percent"] = overhead_percent(row["cycles_total"], b) if b is not None else None
        rows.append(row)
    return rows


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """The union of the rows' keys in first-seen order, with the knob columns kept together."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    first = list(rows[0]) if rows else []
    knob_at = next((i for i, n in enumerate(first) if n.startswith("knob_")), len(first))
    knobs = [n for n in names if n.startswith("knob_")]
    rest = [n for n in names if not n.startswith("knob_")]
    return rest[:knob_at] + knobs + rest[knob_at:]


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV text, with every column any row has."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def read_csv(path: Path) -> list[dict[str, str]]:
    """A results.csv as rows of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
