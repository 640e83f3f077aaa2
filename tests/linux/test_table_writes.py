"""Every page-table write passes one door, `PageTable._write` (docs/architecture.md).

A recorder wraps the door and the frame allocator (which zeroes what it hands out); replaying the
recorded writes onto zeroed frames must rebuild every page-table frame of a booted kernel byte for
byte, for every variant with PCID on and off, 4- and 5-level paging, through process churn. A write
that bypassed the door (a raw `PhysicalMemory.write_u64`) would leave a frame the replay gets wrong.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest

from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.mm import Prot
from kaiser.linux.variants import VARIANTS
from kaiser.x86.pagetable import PageTable, PagingError
from kaiser.x86.physmem import ENTRIES, PAGE_SIZE, FrameKind, PhysicalMemory

CONFIGS = [(name, pcid, la57) for name, pcid, la57 in itertools.product(VARIANTS, (True, False), (False, True))]


class Recorder:
    """What went through the door: ("zero", first frame, count) and ("write", slot, value, kind)."""

    def __init__(self) -> None:
        self.log: list[tuple] = []

    def replay(self) -> dict[int, np.ndarray]:
        frames: dict[int, np.ndarray] = {}
        for event in self.log:
            if event[0] == "zero":
                _, first, count = event
                for pa in range(first, first + count * PAGE_SIZE, PAGE_SIZE):
                    frames[pa] = np.zeros(ENTRIES, dtype=np.uint64)
            else:
                _, slot, value, _kind = event
                page = slot & ~(PAGE_SIZE - 1)
                frames.setdefault(page, np.zeros(ENTRIES, dtype=np.uint64))[(slot % PAGE_SIZE) // 8] = value
        return frames


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    rec = Recorder()
    door, alloc = PageTable._write, PhysicalMemory.alloc

    def write(self: PageTable, slot: int, value: int, depth: int) -> None:
        door(self, slot, value, depth)
        # the value stored, after the root hook had its say (NX on a PTI kernel PGD's user half)
        rec.log.append(("write", slot, self.mem.read_u64(slot), self.mem.kind_of(slot)))

    def zeroing_alloc(self: PhysicalMemory, kind: FrameKind, tag: str = "", *, count: int = 1, align: int = 1) -> int:
        pa = alloc(self, kind, tag, count=count, align=align)
        rec.log.append(("zero", pa, count))
        return pa

    monkeypatch.setattr(PageTable, "_write", write)
    monkeypatch.setattr(PhysicalMemory, "alloc", zeroing_alloc)
    yield rec


def mismatches(kernel: Kernel, rec: Recorder) -> list[str]:
    """Page-table frames whose bytes differ from the replay of the door's writes."""
    replayed = rec.replay()
    out = []
    for pa in kernel.mem.touched_frames():
        if kernel.mem.kind_of(pa) is not FrameKind.PAGE_TABLE:
            continue
        want = replayed.get(pa, np.zeros(ENTRIES, dtype=np.uint64))
        got = kernel.mem.read_frame(pa)
        if not np.array_equal(got, want):
            index = int(np.flatnonzero(got != want)[0])
            out.append(
                f"{kernel.mem.tag_of(pa)} frame {pa:#x}[{index}] = {int(got[index]):#x},"
                f" door wrote {int(want[index]):#x}"
            )
    return out


def churn(kernel: Kernel) -> None:
    """Processes come and go: pgd_alloc's copy, mirroring, LDT slot, stack unmap, mprotect."""
    parent = kernel.spawn()
    child = kernel.fork(parent)
    parent.mm.modify_ldt(600)  # two LDT pages: the LDT slot cloned into the user PGD
    heap = child.mm.mmap(5 * PAGE_SIZE, Prot.READ | Prot.WRITE)
    child.mm.mprotect(heap + PAGE_SIZE, PAGE_SIZE, Prot.READ)
    child.mm.munmap(heap, 2 * PAGE_SIZE)
    kernel.exit(child)  # _free_stack: vunmap's leaf writes; kaiser_remove_mapping under the RFC
    kernel.spawn()
    kernel.exit(parent)  # _unmap_ldt clears the user PGD's LDT slot


@pytest.mark.parametrize(
    ("variant", "pcid", "la57"), CONFIGS, ids=[f"{v}-pcid{int(p)}-la57{int(x)}" for v, p, x in CONFIGS]
)
def test_every_table_byte_came_through_the_door(recorder: Recorder, variant: str, pcid: bool, la57: bool) -> None:
    kernel = Kernel.boot(KernelConfig(variant=variant, pcid=pcid, la57=la57))
    assert mismatches(kernel, recorder) == []
    churn(kernel)
    assert mismatches(kernel, recorder) == []
    writes = [e for e in recorder.log if e[0] == "write"]
    assert writes, "boot wrote no entry through the door"
    assert {e[3] for e in writes} == {FrameKind.PAGE_TABLE}, "the door wrote into a frame that is not a page table"


def test_a_raw_write_is_caught(recorder: Recorder) -> None:
    """The check can fail: one entry written past the door shows up as a mismatch."""
    kernel = Kernel.boot(KernelConfig())
    slot = kernel.init.kernel_pgd + 8 * 300
    kernel.mem.write_u64(slot, kernel.mem.read_u64(slot) ^ int(1 << 63))
    assert len(mismatches(kernel, recorder)) == 1


def test_set_entry_is_the_door_with_its_checks() -> None:
    """set_entry passes top-level writes to the root hook (PTI's mirror), refuses a depth the tree
    lacks and a destroyed tree."""
    mem = PhysicalMemory(1 << 30)
    pt = PageTable(mem)
    seen: list[tuple[int, int]] = []

    def hook(index: int, value: int) -> int:
        seen.append((index, value))
        return value | 1 << 63

    pt.root_hook = hook
    pt.set_entry(pt.root + 8 * 7, 0x3000 | 1, 0)
    assert seen == [(7, 0x3001)] and mem.read_u64(pt.root + 8 * 7) == 0x3001 | 1 << 63
    pt.set_entry(pt.root + 8 * 8, 0x4001, 3)  # below the top level the hook is not asked
    assert seen == [(7, 0x3001)] and mem.read_u64(pt.root + 8 * 8) == 0x4001
    with pytest.raises(PagingError, match="depth 4 is not 0..3"):
        pt.set_entry(pt.root, 0, 4)
    pt.root_hook = None
    pt.set_entry(pt.root + 8 * 7, 0, 0)
    pt.set_entry(pt.root + 8 * 8, 0, 0)
    pt.destroy()
    with pytest.raises(PagingError, match="destroyed"):
        pt.set_entry(pt.root, 0, 0)


def test_no_raw_write_u64_outside_the_door() -> None:
    """Source scan: `write_u64` is called only by the door itself (x86/pagetable.py), the walker's
    A/D updates (SDM §4.8) and the event stream's WRITE_PHYS replay (x86/events.py); linux/, cost/
    and every other package write entries through `PageTable.set_entry`."""
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src" / "kaiser"
    callers = {p.relative_to(src).as_posix() for p in src.rglob("*.py") if ".write_u64(" in p.read_text()}
    assert callers == {"x86/pagetable.py", "x86/walker.py", "x86/events.py"}
