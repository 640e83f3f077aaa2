"""Random test cases: one linear address, a random walk of page tables to it, a CPU state and an access.

Entries are written raw (not through `kaiser.x86.pagetable`, which forbids reserved bits on
purpose), so a case can carry anything the SDM lets software write: absent entries with garbage,
reserved bits 51:MAXPHYADDR, XD with EFER.NXE=0, PS in a PML4E/PML5E, bits 29:13 / 20:13 in a
1 GiB / 2 MiB leaf (SDM Vol. 3A §4.5, Tables 4-14..4-20), protection keys in leaves (§4.6.2).
A case is plain data (initial frames + registers) so both sides start from identical bytes.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from kaiser.referee import layout
from kaiser.x86.bits import CR0, CR4, EFER, PTE, RFLAGS
from kaiser.x86.cpu import CpuState
from kaiser.x86.geometry import mode_for
from kaiser.x86.rights import Op

CR0_ET = 1 << 4  # QEMU forces CR0.ET=1; it has no effect on paging (SDM Vol. 3A §2.5)


@dataclass(frozen=True)
class Probabilities:
    """Knobs of the generator (per entry unless said otherwise)."""

    absent: float = 0.05
    rw: float = 0.85
    us: float = 0.8
    nx: float = 0.1
    accessed: float = 0.5
    dirty: float = 0.5
    leaf_1g: float = 0.2  # PS=1 in the PDPTE
    leaf_2m: float = 0.3  # PS=1 in the PDE
    ps_top: float = 0.02  # PS=1 in a PML4E/PML5E (reserved)
    rsvd_high: float = 0.02  # one bit of 51:MAXPHYADDR
    rsvd_large: float = 0.08  # one bit of 29:13 / 20:13 in a large leaf
    pkey: float = 0.5  # non-zero key in the leaf
    noncanonical: float = 0.01  # per case


@dataclass(frozen=True)
class Case:
    """One referee case. `frames` are the initial contents of every frame either side may touch."""

    index: int
    state: CpuState
    op: Op
    va: int
    store_value: int
    marker: int  # imm32 of the `mov eax, imm32` at the target (fetch cases)
    frames: dict[int, bytes] = field(repr=False)
    walk_slots: tuple[int, ...]  # physical addresses of the entries on the VA's path, top first

    @property
    def la57(self) -> bool:
        return self.state.la57

    def entry(self, slot: int) -> int:
        """Initial value of the entry at physical address `slot`."""
        frame = self.frames.get(slot & ~0xFFF)
        if frame is None:
            return 0
        return int(struct.unpack_from("<Q", frame, slot & 0xFFF)[0])


def _bit(rng: random.Random, p: float) -> bool:
    return rng.random() < p


def _random_state(rng: random.Random, root: int, la57: bool) -> CpuState:
    cr0 = int(CR0.PE | CR0.PG) | CR0_ET | (int(CR0.WP) if _bit(rng, 0.5) else 0)
    cr4 = int(CR4.PAE)
    for flag, p in ((CR4.SMEP, 0.4), (CR4.SMAP, 0.4), (CR4.PKE, 0.5), (CR4.PGE, 0.5)):
        cr4 |= int(flag) if _bit(rng, p) else 0
    cr4 |= int(CR4.LA57) if la57 else 0
    efer = int(EFER.LME | EFER.LMA) | (int(EFER.NXE) if _bit(rng, 0.6) else 0)
    rflags = 0x2 | (int(RFLAGS.AC) if _bit(rng, 0.5) else 0)
    pkru = 0
    if _bit(rng, 0.8):
        for bit in range(32):
            pkru |= (1 << bit) if _bit(rng, 0.25) else 0
    return CpuState(cr3=root, cr0=cr0, cr4=cr4, efer=efer, rflags=rflags, pkru=pkru, cpl=rng.choice((0, 3)))


def _flags(rng: random.Random, p: Probabilities) -> int:
    value = int(PTE.P)
    for flag, prob in (
        (PTE.RW, p.rw),
        (PTE.US, p.us),
        (PTE.PWT, 0.2),
        (PTE.PCD, 0.2),
        (PTE.A, p.accessed),
        (PTE.D, p.dirty),
        (PTE.G, 0.3),
        (PTE.NX, p.nx),
    ):
        value |= int(flag) if _bit(rng, prob) else 0
    value |= rng.getrandbits(3) << 9  # bits 11:9 are ignored (SDM Tables 4-14..4-20)
    if _bit(rng, 0.3):
        value |= rng.getrandbits(7) << 52  # bits 58:52 ignored
    return value


def generate_case(rng: random.Random, index: int, p: Probabilities | None = None) -> Case:
    """A random case; everything is drawn from `rng`, so a seed fixes the case."""
    p = p or Probabilities()
    la57 = _bit(rng, 0.5)
    mode = mode_for(la57)
    pool = rng.sample(range(layout.TABLE_POOL[0], layout.TABLE_POOL[1], layout.PAGE), len(mode.levels))
    data_lo, data_hi = layout.DATA_REGION
    target = rng.randrange(data_lo, data_hi, layout.PAGE) + 8 * rng.randrange(0, (layout.PAGE - 16) // 8)
    state = _random_state(rng, pool[0], la57)
    op = rng.choice((Op.READ, Op.WRITE, Op.FETCH))

    va = rng.getrandbits(mode.va_bits)
    top = mode.levels[0]
    if top.index(va) == 0:  # slot 0 is the harness's
        va |= 1 << top.shift
    va = mode.canonicalize(va)
    va = (va & ~0xFFF) | (target & 0xFFF)

    tables: dict[int, dict[int, int]] = {pool[0]: {0: layout.root_harness_entry(la57)}}
    walk_slots: list[int] = []
    table = pool[0]
    target_used = False
    for depth, level in enumerate(mode.levels):
        index = level.index(va)
        walk_slots.append(table + 8 * index)
        last = depth == len(mode.levels) - 1
        if _bit(rng, p.absent):
            value = rng.getrandbits(64) & ~int(PTE.P)  # reserved bits are not checked when P=0 (§4.7)
            tables[table][index] = value
            break
        value = _flags(rng, p)
        if _bit(rng, p.rsvd_high):
            value |= 1 << rng.randrange(layout.MAXPHYADDR, 52)
        if not level.leaf_ok:  # PML5E / PML4E
            if _bit(rng, p.ps_top):
                value |= int(PTE.PS)
            leaf = False
        elif last:
            value = (value & ~int(PTE.PS)) | (int(PTE.PS) if _bit(rng, 0.3) else 0)  # bit 7 = PAT in a PTE
            leaf = True
        else:
            leaf = _bit(rng, p.leaf_1g if level.shift == 30 else p.leaf_2m)
            value = (value & ~int(PTE.PS)) | (int(PTE.PS) if leaf else 0)
        if leaf:
            size = level.span
            value |= int(PTE.PAT_LARGE) if size > layout.PAGE and _bit(rng, 0.3) else 0
            if _bit(rng, p.rsvd_large) and size > layout.PAGE:
                value |= 1 << rng.randrange(13, level.shift)
            if _bit(rng, p.pkey):
                value |= rng.randrange(1, 16) << 59
            value |= target & ~(size - 1)  # a 1 GiB leaf maps frame 0: the data region is below 1 GiB
            va = (va & ~(size - 1)) | (target & (size - 1))
            target_used = True
            tables[table][index] = value
            break
        child = pool[depth + 1]
        tables[child] = {}
        tables[table][index] = value | child
        table = child
    if _bit(rng, p.noncanonical):  # flip a bit of the sign extension: #GP, not #PF (SDM Vol. 3A §6.15)
        va ^= 1 << rng.randrange(mode.va_bits, 64)

    marker = rng.getrandbits(32)
    page = rng.randbytes(layout.PAGE) if target_used else None
    frames = _assemble(tables, target, page, marker, state, op)
    return Case(index, state, op, va, rng.getrandbits(64), marker, frames, tuple(walk_slots))


def _assemble(
    tables: dict[int, dict[int, int]], target: int, page: bytes | None, marker: int, state: CpuState, op: Op
) -> dict[int, bytes]:
    """Initial frames: the test tables, the target frame (`page` with the fetch code at `target`), the
    kernel stack with the iretq frame for CPL 3, and the harness."""
    frames: dict[int, bytes] = {}
    for pa, entries in tables.items():
        words = [0] * 512
        for i, v in entries.items():
            words[i] = v
        frames[pa] = struct.pack("<512Q", *words)
    if page is not None:
        data = bytearray(page)
        off = target & 0xFFF
        data[off : off + layout.TARGET_CODE_LEN] = layout.target_code(marker)
        frames[target & ~0xFFF] = bytes(data)
    stage = {Op.READ: layout.U_LOAD, Op.WRITE: layout.U_STORE, Op.FETCH: layout.U_FETCH}[op]
    stack = bytearray(layout.PAGE)
    off = layout.KSTACK_FRAME - layout.KSTACK
    stack[off : off + 40] = layout.iret_frame(stage, state.rflags)
    frames[layout.KSTACK] = bytes(stack)
    frames.update(_HARNESS)
    return frames


def simple_case(
    va: int,
    op: Op,
    state: CpuState,
    leaf: int,
    upper: int = int(PTE.P | PTE.RW | PTE.US),
    *,
    store_value: int = 0x1122334455667788,
    marker: int = 0xC0FFEE,
) -> Case:
    """A hand-written case: `va` mapped by a 4 KiB page with `leaf` flags, every upper entry `upper`.
    `state.cr3` is replaced by the case's root; the paging mode follows `state.la57`."""
    mode = mode_for(state.la57)
    pool = [layout.TABLE_POOL[0] + i * layout.PAGE for i in range(len(mode.levels))]
    target = layout.DATA_REGION[0] + (va & 0xFFF)
    state = state.replace(cr3=pool[0])
    tables: dict[int, dict[int, int]] = {pool[0]: {0: layout.root_harness_entry(state.la57)}}
    slots = []
    for depth, level in enumerate(mode.levels):
        slots.append(pool[depth] + 8 * level.index(va))
        if depth == len(mode.levels) - 1:
            tables[pool[depth]][level.index(va)] = (target & ~0xFFF) | leaf
        else:
            tables[pool[depth + 1]] = {}
            tables[pool[depth]][level.index(va)] = pool[depth + 1] | upper
    page = bytes(range(256)) * 16
    frames = _assemble(tables, target, page, marker, state, op)
    return Case(0, state, op, va, store_value, marker, frames, tuple(slots))


_HARNESS = layout.harness_frames()
