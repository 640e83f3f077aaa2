#!/usr/bin/env python3
"""Cut the page-table dumps out of a kaiser-realdumps serial console log (stdlib only).

    extract.py CONSOLE_LOG OUT_DIR --config NAME --qemu-cmd "..." --cpu MODEL [--date ISO]

The initramfs `init` prints each section between ``@@KAISER-BEGIN <name>@@`` and
``@@KAISER-END <name> rc=<n>@@``. Writes OUT_DIR/{kernel,current_kernel,current_user,
current_kernel-ldt,current_user-ldt}.txt (exactly the kernel's text, LF line ends) and
OUT_DIR/meta.json. Refuses (exit 1) on a missing section, a non-zero status, or a line inside a dump
that is not ptdump text (a stray console message would corrupt a fixture).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import re
import sys
from pathlib import Path

DUMPS = ("kernel", "current_kernel", "current_user", "current_kernel-ldt", "current_user-ldt")
BEGIN = re.compile(r"@@KAISER-BEGIN (\S+)@@")
END = re.compile(r"@@KAISER-END (\S+) rc=(\d+)@@")
PTDUMP_LINE = re.compile(
    r"0x[0-9a-f]{16}-0x[0-9a-f]{16}    *\d+[BKMGTPE] .{30}(pgd|p4d|pud|pmd|pte)"
    r"|---\[ .+ \]---"
    r"|\.\.\. \d+ entr(y|ies) skipped \.\.\. "
)
DMESG_KEEP = re.compile(
    r"isolation|PTI|pti|W\+X|x86/mm|Meltdown|Spectre|espfix|PCID|Command line|Linux version|smpboot|"
    r"ptdump_mod|LDT|vsyscall|KASLR|RANDOMIZE|Memory:",
)
FLAGS_OF_INTEREST = ("pti", "pcid", "invpcid", "pge", "pse", "smep", "smap", "nx", "la57", "pdpe1gb")


def sections(text: str) -> dict[str, tuple[int, list[str]]]:
    out: dict[str, tuple[int, list[str]]] = {}
    current: str | None = None
    body: list[str] = []
    for raw in text.split("\n"):
        line = raw.rstrip("\r")
        if current is None:
            m = BEGIN.search(line)
            if m:
                current, body = m.group(1), []
            continue
        m = END.search(line)
        if m:
            if m.group(1) != current:
                raise SystemExit(f"extract: END {m.group(1)} inside section {current}")
            out[current] = (int(m.group(2)), body)
            current = None
            continue
        body.append(line)
    if current is not None:
        raise SystemExit(f"extract: section {current} has no END line (console log truncated?)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--config", required=True)
    ap.add_argument("--qemu-cmd", required=True)
    ap.add_argument("--cpu", required=True)
    ap.add_argument("--date", default=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat())
    args = ap.parse_args()

    text = args.log.read_bytes().decode("utf-8", errors="replace")
    secs = sections(text)
    if "@@KAISER-MODULE rc=0@@" not in text:
        raise SystemExit("extract: ptdump_mod did not load (see the console log)")
    missing = [name for name in ("facts", *DUMPS) if name not in secs]
    if missing:
        raise SystemExit(f"extract: missing section(s): {', '.join(missing)}")
    facts: dict[str, str] = {}
    for line in secs["facts"][1]:
        key, _, value = line.partition("=")
        facts[key] = value
    args.out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in DUMPS:
        rc, body = secs[name]
        while body and not body[-1]:
            body.pop()
        if rc != 0 or not body:
            raise SystemExit(f"extract: section {name} failed (rc={rc}, {len(body)} lines)")
        for n, line in enumerate(body, 1):
            if not PTDUMP_LINE.fullmatch(line):
                raise SystemExit(f"extract: {name} line {n} is not ptdump text: {line[:80]!r}")
        data = "".join(line + "\n" for line in body).encode()
        (args.out / f"{name}.txt").write_bytes(data)
        files[f"{name}.txt"] = {"bytes": len(data), "lines": len(body), "sha256": hashlib.sha256(data).hexdigest()}
    flags = set(facts.get("cpu_flags", "").split())
    dmesg = [line for line in secs.get("dmesg", (0, []))[1] if DMESG_KEEP.search(line)]
    meta = {
        "kernel_version": facts.get("uname_r", ""),
        "proc_version": facts.get("proc_version", ""),
        "kernel_cmdline": facts.get("cmdline", ""),
        "config": args.config,
        "qemu_command": args.qemu_cmd,
        "qemu_cpu_model": args.cpu,
        "guest_cpu": {
            "vendor": facts.get("cpu_vendor", ""),
            "model_name": facts.get("cpu_model", ""),
            "nproc": int(facts.get("nproc", "0") or 0),
            "flags_of_interest": {f: f in flags for f in FLAGS_OF_INTEREST},
            "bugs": facts.get("cpu_bugs", "").split(),
            "meltdown": facts.get("meltdown", ""),
        },
        "mem_total": facts.get("mem_total", ""),
        "init_mm": facts.get("init_mm", ""),
        "date": args.date,
        "files": files,
        "dmesg_excerpt": dmesg,
        "note": "captured by tools/realdumps/regenerate.sh; *-ldt files are read by a process that "
        "called modify_ldt() first",
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"extract: {args.out}: " + ", ".join(f"{k} {v['lines']} lines" for k, v in files.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
