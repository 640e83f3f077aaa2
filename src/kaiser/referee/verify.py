"""Differential test: our walker against Unicorn (QEMU TCG) on random page tables.

For every case both sides start from the same frames. Compared: fault or not, the vector, CR2,
the value read (load) or the bytes written (store), the marker a fetched `mov eax, imm32` leaves,
and every byte of every frame afterwards, which includes the A and D bits of each entry on the
walk (SDM Vol. 3A §4.8). Unicorn hides the #PF error code, so the referee recomputes one from what
it can see (`observed_error_code`) and compares it with the walker's.
"""

from __future__ import annotations

import random
import re
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kaiser.referee import layout
from kaiser.referee.cases import Case, Probabilities, generate_case
from kaiser.referee.machine import Observation, UnicornMachine
from kaiser.x86.bits import PF_VECTOR, PFEC, PTE, describe, describe_entry
from kaiser.x86.cpu import CpuFeatures
from kaiser.x86.geometry import mode_for
from kaiser.x86.physmem import PhysicalMemory
from kaiser.x86.rights import Op
from kaiser.x86.walker import Fault, Translation, translate

FEATURES = CpuFeatures(maxphyaddr=layout.MAXPHYADDR)
Walker = Callable[..., Translation | Fault]
Progress = Callable[[int, int], None]

QEMU_1G_ACCESSED = "qemu-1g-leaf-accessed-on-fault"
KNOWN_DEVIATIONS: dict[str, str] = {
    QEMU_1G_ACCESSED: (
        "QEMU's handle_mmu_fault sets A in a PDPTE before testing PS, so an access that then faults on the "
        "1 GiB leaf (bits 29:13 reserved, rights, protection key) leaves PDPTE.A=1; SDM Vol. 3A §4.8 sets A "
        "only in entries used by a translation, and real hardware leaves a faulting leaf unchanged "
        "(kvm-unit-tests x86/access.c checks the leaf exactly)."
    ),
}

# -- an independent reading of the entry format, for the recomputed error code --------------------


def _referee_reserved(depth: int, levels: int, value: int, nxe: bool) -> int:
    """Reserved bits of a present entry, written from SDM Vol. 3A Tables 4-14..4-20 separately from
    `kaiser.x86.rights.reserved_mask` (depth 0 = top level; a leaf only at PDPTE/PDE with PS, or PTE)."""
    bits = sum(1 << b for b in range(layout.MAXPHYADDR, 52))  # 51:MAXPHYADDR
    if not nxe:
        bits |= 1 << 63
    from_bottom = levels - 1 - depth  # 0 PTE, 1 PDE, 2 PDPTE, 3 PML4E, 4 PML5E
    if from_bottom >= 3:
        bits |= 1 << 7  # PS must be 0 in PML4E/PML5E
    elif from_bottom in (1, 2) and value & (1 << 7):
        top = 20 if from_bottom == 1 else 29
        bits |= sum(1 << b for b in range(13, top + 1))
    return bits


@dataclass(frozen=True)
class PathVerdict:
    """How the walk of the initial tables ends, read by the referee itself: 'not-present',
    'reserved', or 'leaf' (a present leaf: any fault there is a protection fault)."""

    kind: str
    depth: int
    user_address: bool  # U/S=1 in every entry read


def classify_path(case: Case) -> PathVerdict:
    """Which kind of walk `case` takes (user or supervisor path, where it stops), for the report's tallies."""
    levels = len(mode_for(case.la57).levels)
    user = True
    for depth, slot in enumerate(case.walk_slots):
        value = case.entry(slot)
        if not value & 1:
            return PathVerdict("not-present", depth, user)
        if value & _referee_reserved(depth, levels, value, case.state.nxe):
            return PathVerdict("reserved", depth, user)
        user = user and bool(value & 4)
        if depth == levels - 1 or (depth >= levels - 3 and value & (1 << 7)):
            return PathVerdict("leaf", depth, user)
    raise AssertionError("the generator always ends a walk")


def _without_other_violations(case: Case) -> tuple[dict[int, bytes], int]:
    """Frames with R/W=1 in every walked entry and CR4 without SMAP: for a data access to a user-mode
    address only a protection key can still refuse it (SDM Vol. 3A §4.6.1, §4.6.2)."""
    frames = dict(case.frames)
    for slot in case.walk_slots:
        page = bytearray(frames[slot & ~0xFFF])
        struct.pack_into("<Q", page, slot & 0xFFF, case.entry(slot) | int(PTE.RW))
        frames[slot & ~0xFFF] = bytes(page)
    return frames, case.state.cr4 & ~(1 << 21)


# -- results ---------------------------------------------------------------------------------------


@dataclass
class CaseResult:
    """The comparison of one case. `kinds` is empty when both sides agree."""

    case: Case
    ours: Translation | Fault
    theirs: Observation
    kinds: list[str]
    deviation: str | None
    recomputed_error: int | None
    pk_observed: bool | None
    ours_frames: dict[int, bytes] = field(repr=False)

    @property
    def agrees(self) -> bool:
        return not self.kinds and self.deviation is None

    def detail(self) -> dict[str, Any]:
        """Everything needed to reproduce and read the case."""
        case, ours, theirs = self.case, self.ours, self.theirs
        s = case.state
        mode = mode_for(case.la57)
        walk = []
        for depth, slot in enumerate(case.walk_slots):
            before = case.entry(slot)
            ours_after = _word(self.ours_frames, slot)
            theirs_after = _word(theirs.frames, slot)
            walk.append(
                {
                    "level": mode.levels[depth].entry,
                    "address": f"{slot:#x}",
                    "before": f"{before:#018x}",
                    "before_decoded": describe_entry(before),
                    "ours_after": f"{ours_after:#018x}",
                    "unicorn_after": f"{theirs_after:#018x}",
                }
            )
        if isinstance(ours, Fault):
            our_outcome: dict[str, Any] = {
                "fault": ours.describe(),
                "vector": ours.vector,
                "cr2": None if ours.cr2 is None else f"{ours.cr2:#x}",
                "error_code": f"{ours.error_code:#x}",
                "error_code_decoded": describe(PFEC, ours.error_code),
            }
        else:
            our_outcome = {"pa": f"{ours.pa:#x}", "page_size": ours.page_size}
        return {
            "index": case.index,
            "kinds": self.kinds,
            "deviation": self.deviation,
            "access": {
                "op": case.op.value,
                "cpl": s.cpl,
                "va": f"{case.va:#018x}",
                "store_value": f"{case.store_value:#018x}",
            },
            "cpu": {
                "paging": mode.name,
                "cr0": f"{s.cr0:#x}",
                "cr3": f"{s.cr3:#x}",
                "cr4": f"{s.cr4:#x}",
                "efer": f"{s.efer:#x}",
                "rflags": f"{s.rflags:#x}",
                "pkru": f"{s.pkru:#010x}",
                "wp": s.wp,
                "smep": s.smep,
                "smap": s.smap,
                "pke": s.pke,
                "nxe": s.nxe,
                "ac": s.ac,
            },
            "walk": walk,
            "ours": our_outcome,
            "unicorn": {
                "completed": theirs.completed,
                "vector": theirs.vector,
                "rip": f"{theirs.rip:#x}",
                "cr2": f"{theirs.cr2:#x}",
                "rdi": f"{theirs.rdi:#x}",
                "rax": f"{theirs.rax:#x}",
                "error": theirs.error,
                "cr4": f"{theirs.cr4:#x}",
                "efer": f"{theirs.efer:#x}",
                "recomputed_error_code": None if self.recomputed_error is None else f"{self.recomputed_error:#x}",
                "pk_observed": self.pk_observed,
            },
            "memory_diffs": _memory_diffs(self.ours_frames, theirs.frames),
        }


def _word(frames: dict[int, bytes], slot: int) -> int:
    return int(struct.unpack_from("<Q", frames[slot & ~0xFFF], slot & 0xFFF)[0])


def _memory_diffs(ours: dict[int, bytes], theirs: dict[int, bytes], limit: int = 16) -> list[dict[str, str]]:
    out = []
    for pa in sorted(ours):
        a, b = ours[pa], theirs[pa]
        if a == b:
            continue
        for off in range(0, layout.PAGE, 8):
            if a[off : off + 8] != b[off : off + 8]:
                out.append(
                    {
                        "address": f"{pa + off:#x}",
                        "ours": a[off : off + 8][::-1].hex(),
                        "unicorn": b[off : off + 8][::-1].hex(),
                    }
                )
                if len(out) >= limit:
                    return out
    return out


# -- one case --------------------------------------------------------------------------------------


def expected_side(case: Case, walker: Walker = translate) -> tuple[Translation | Fault, dict[int, bytes], int | None]:
    """Our side: walk (setting A/D in our memory), then do the access. Returns the outcome, every
    frame afterwards, and the value the access yields (load: the u64; fetch: the `mov` immediate)."""
    mem = PhysicalMemory(layout.RAM_SIZE, maxphyaddr=layout.MAXPHYADDR)
    for pa, data in case.frames.items():
        mem.write_bytes(pa, data)
    result = walker(mem, case.state, case.va, case.op, features=FEATURES)
    value = None
    if isinstance(result, Translation):
        if case.op is Op.WRITE:
            mem.write_bytes(result.pa, struct.pack("<Q", case.store_value))
        elif case.op is Op.READ:
            value = int(struct.unpack("<Q", mem.read_bytes(result.pa, 8))[0])
        else:
            value = int(struct.unpack("<I", mem.read_bytes(result.pa + 1, 4))[0])
    return result, {pa: mem.read_bytes(pa, layout.PAGE) for pa in case.frames}, value


def observed_error_code(case: Case, theirs: Observation, machine: UnicornMachine) -> tuple[int, bool | None]:
    """The #PF error code as far as Unicorn's behaviour determines it (SDM Vol. 3A §4.7).

    W/R, U/S and I/D describe the access (I/D only with NXE or SMEP). P and RSVD come from the
    referee's own reading of the initial entries on the path. PK is *observed*: for a protection
    fault on a data access to a user-mode address with CR4.PKE=1, the case is re-run with R/W=1 in
    every entry and SMAP off, which leaves the key as the only possible cause. Returns the code and
    the PK observation (None when no re-run was needed)."""
    s = case.state
    code = 0
    if case.op is Op.WRITE:
        code |= PFEC.WR
    if s.cpl == 3:
        code |= PFEC.US
    if case.op is Op.FETCH and (s.nxe or s.smep):
        code |= PFEC.ID
    path = classify_path(case)
    pk_observed = None
    if path.kind == "reserved":
        code |= PFEC.P | PFEC.RSVD
    elif path.kind == "leaf":
        code |= PFEC.P
        if s.pke and case.op is not Op.FETCH and path.user_address and s.pkru:
            frames, cr4 = _without_other_violations(case)
            probe = machine.run(case, state=s.replace(cr4=cr4), frames=frames)
            pk_observed = not probe.completed and probe.vector == PF_VECTOR
            if pk_observed:
                code |= PFEC.PK
    return int(code), pk_observed


def _deviation(case: Case, ours: Translation | Fault, diffs: list[tuple[int, int, int]]) -> str | None:
    """Is the only difference QEMU's A bit in a faulting 1 GiB PDPTE leaf? (see KNOWN_DEVIATIONS)"""
    if not isinstance(ours, Fault) or ours.entry is None or len(diffs) != 1:
        return None
    slot, mine, qemu = diffs[0]
    entry = ours.entry
    if entry.level.shift != 30 or slot != entry.address or not entry.value & PTE.P or not entry.value & PTE.PS:
        return None
    high_rsvd = ((1 << 52) - 1) & ~((1 << layout.MAXPHYADDR) - 1) | (0 if case.state.nxe else int(PTE.NX))
    if entry.value & high_rsvd:  # QEMU tests these before it sets A: no deviation expected
        return None
    if mine & PTE.A or qemu != mine | PTE.A:
        return None
    return QEMU_1G_ACCESSED


def run_case(case: Case, machine: UnicornMachine, walker: Walker = translate) -> CaseResult:
    """Run one case on both sides and compare."""
    ours, ours_frames, value = expected_side(case, walker)
    theirs = machine.run(case)
    kinds: list[str] = []
    if theirs.error is not None:
        kinds.append("unicorn-error")
    if theirs.cr4 != case.state.cr4 or theirs.efer != case.state.efer:
        kinds.append("harness-control-registers")  # Unicorn did not take the case's CR4/EFER
    if isinstance(ours, Translation):
        if not theirs.completed:
            kinds.append("unicorn-faults-walker-allows")
        elif case.op is Op.READ and theirs.rdi != value:
            kinds.append("value-read")
        elif case.op is Op.FETCH and theirs.rax & 0xFFFFFFFF != value:
            kinds.append("value-fetched")
    elif theirs.completed:
        kinds.append("walker-faults-unicorn-allows")
    elif theirs.vector != ours.vector:
        kinds.append("vector")
    elif ours.vector == PF_VECTOR and theirs.cr2 != ours.cr2:
        kinds.append("cr2")
    walk = set(case.walk_slots)
    word_diffs: list[tuple[int, int, int]] = []
    other_memory = False
    for pa, mine in ours_frames.items():
        qemu = theirs.frames[pa]
        if mine == qemu:
            continue
        for off in range(0, layout.PAGE, 8):
            if mine[off : off + 8] != qemu[off : off + 8]:
                slot = pa + off
                if slot in walk:
                    word_diffs.append((slot, _word(ours_frames, slot), _word(theirs.frames, slot)))
                else:
                    other_memory = True
    if other_memory:
        kinds.append("memory" if case.op is not Op.WRITE else "memory-or-stored-value")
    deviation = None
    if word_diffs:
        deviation = _deviation(case, ours, word_diffs) if not kinds else None
        if deviation is None:
            kinds.append("walk-entry-accessed-dirty")
    recomputed, pk_observed = None, None
    if isinstance(ours, Fault) and ours.vector == PF_VECTOR and theirs.vector == PF_VECTOR and not kinds:
        recomputed, pk_observed = observed_error_code(case, theirs, machine)
        if recomputed != ours.error_code:
            kinds.append("error-code")
    return CaseResult(case, ours, theirs, kinds, deviation, recomputed, pk_observed, ours_frames)


# -- many cases ------------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    """Totals of a referee run; `first_*` hold the full detail of the first case of each kind."""

    cases: int
    seed: int
    agreements: int = 0
    disagreements: int = 0
    known_qemu_deviations: int = 0
    disagreements_by_kind: Counter[str] = field(default_factory=Counter)
    deviations_by_kind: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    error_codes_compared: int = 0
    pk_probes: int = 0
    seconds: float = 0.0
    first_disagreement: dict[str, Any] | None = None
    first_known_deviation: dict[str, Any] | None = None

    @property
    def cases_per_second(self) -> float:
        return self.cases / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return self.disagreements == 0

    def add(self, result: CaseResult) -> None:
        self.outcomes[_outcome_label(result)] += 1
        if result.recomputed_error is not None:
            self.error_codes_compared += 1
        if result.pk_observed is not None:
            self.pk_probes += 1
        if result.kinds:
            self.disagreements += 1
            self.disagreements_by_kind.update(result.kinds)
            if self.first_disagreement is None:
                self.first_disagreement = result.detail()
        elif result.deviation is not None:
            self.known_qemu_deviations += 1
            self.deviations_by_kind[result.deviation] += 1
            if self.first_known_deviation is None:
                self.first_known_deviation = result.detail()
        else:
            self.agreements += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "seed": self.seed,
            "agreements": self.agreements,
            "disagreements": self.disagreements,
            "known_qemu_deviations": self.known_qemu_deviations,
            "known_qemu_deviation_reasons": {k: KNOWN_DEVIATIONS[k] for k in self.deviations_by_kind},
            "disagreements_by_kind": dict(sorted(self.disagreements_by_kind.items())),
            "deviations_by_kind": dict(sorted(self.deviations_by_kind.items())),
            "outcomes": dict(sorted(self.outcomes.items())),
            "error_codes_compared": self.error_codes_compared,
            "pk_probes": self.pk_probes,
            "seconds": round(self.seconds, 3),
            "cases_per_second": round(self.cases_per_second, 1),
            "first_disagreement": self.first_disagreement,
            "first_known_deviation": self.first_known_deviation,
        }


def _outcome_label(result: CaseResult) -> str:
    """Coverage label: our walker's outcome and the rule that decided it (SDM §4.6/§4.7 reason)."""
    ours = result.ours
    if isinstance(ours, Translation):
        return f"ok {result.case.op.value} {_size_name(ours.page_size)}"
    if ours.vector != PF_VECTOR:
        return "#GP non-canonical"
    reason = re.sub(r"PKRU\.(AD|WD)\d+=1", r"PKRU.\1", ours.reason)
    reason = re.sub(r"reserved bits 0x[0-9a-f]+ set in", "reserved bit in", reason)
    return f"#PF {reason}"


def _size_name(size: int) -> str:
    return {1 << 30: "1G", 1 << 21: "2M", 1 << 12: "4K"}[size]


def run_verify(
    cases: int = 2000,
    seed: int = 0,
    progress: Progress | None = None,
    *,
    walker: Walker = translate,
    probabilities: Probabilities | None = None,
) -> VerifyReport:
    """Run `cases` random cases (deterministic for a `seed`) against Unicorn and tally the results.
    `progress(done, total)` is called every 100 cases and at the end."""
    rng = random.Random(seed)
    machine = UnicornMachine()
    report = VerifyReport(cases=cases, seed=seed)
    start = time.perf_counter()
    for index in range(cases):
        case = generate_case(rng, index, probabilities)
        report.add(run_case(case, machine, walker))
        if progress is not None and (index + 1) % 100 == 0:
            progress(index + 1, cases)
    report.seconds = time.perf_counter() - start
    if progress is not None:
        progress(cases, cases)
    return report
