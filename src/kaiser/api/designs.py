"""Every design side by side (issue 16): what user mode can reach, what Meltdown and EntryBleed
recover, what a system call costs, what the page tables cost -- one row per registered variant,
each figure made by the same code the commands print it with:

- reachable: the kernel memory a process's user tables map (`kaiser.api.exposure.user_view`,
  as `kaiser demo` section 2 and `kaiser dump --table current_user`);
- Meltdown: bytes recovered of a secret planted in each region (`kaiser attack meltdown
  --secret-in REGION`, on a Meltdown-vulnerable core); `sensitive` and `nonsensitive` are ASI's
  two kinds of memory (a user page at its direct-map alias, a kernel allocation);
- EntryBleed: whether the prefetch probe recovers the kernel text base (`kaiser attack kaslr
  --probe prefetch`: CVE-2022-4543's method through the entry text), one KASLR layout;
- cycles per system call, with and without PCID (`kaiser bench -w null-syscall`: getppid, the
  recorded kernel side, engine path, Skylake client TLB, no caches);
- page tables: one typical process's page-table memory (`kaiser bench memory`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from kaiser.api.exposure import user_view
from kaiser.attacks.core import REGIONS as SECRET_REGIONS
from kaiser.attacks.core import run_meltdown
from kaiser.attacks.timing import run_kaslr
from kaiser.cost.run import run
from kaiser.linux.kernel import Kernel, KernelConfig
from kaiser.linux.memory import frames_kib, measure
from kaiser.linux.variants import VARIANTS
from kaiser.x86.geometry import human_size

SECRET_BYTES: Final = 4  # CHOSEN: enough to tell 0 from all; each byte is an attack of its own (~0.15 s)
SEED: Final = 1  # CHOSEN: one fixed layout, so the table is reproducible
ITERATIONS: Final = 100  # CHOSEN: null-syscall is periodic; 100 measured after 20 warm-up is exact
WARMUP: Final = 20
HEADERS: Final = (
    "design",
    "reachable",
    *(f"Meltdown {r}" for r in SECRET_REGIONS),
    "EntryBleed text",
    "cycles/call PCID",
    "cycles/call no PCID",
    "page tables",
)


@dataclass(frozen=True)
class Design:
    """One design's row: see the module docstring for where each figure comes from."""

    variant: str
    reachable: int  # bytes of kernel memory mapped in a process's user tables
    meltdown: dict[str, int]  # secret region -> bytes recovered of SECRET_BYTES
    entrybleed_text: bool  # the prefetch probe found the kernel text base
    cycles_pcid: float
    cycles_nopcid: float
    table_kib: int  # one typical process's page tables

    def cells(self) -> list[str]:
        """The row under HEADERS."""
        return [
            self.variant,
            human_size(self.reachable),
            *(f"{self.meltdown[r]}/{SECRET_BYTES}" for r in SECRET_REGIONS),
            "found" if self.entrybleed_text else "-",
            f"{self.cycles_pcid:,.0f}",
            f"{self.cycles_nopcid:,.0f}",
            f"{self.table_kib} KiB",
        ]

    def as_dict(self) -> dict[str, object]:
        """The row as JSON."""
        return {
            "variant": self.variant,
            "reachable_bytes": self.reachable,
            "meltdown_bytes": dict(self.meltdown),
            "secret_bytes": SECRET_BYTES,
            "entrybleed_text_base": self.entrybleed_text,
            "cycles_per_syscall": {"pcid": self.cycles_pcid, "no_pcid": self.cycles_nopcid},
            "page_table_kib": self.table_kib,
        }


def design(variant: str, seed: int = SEED) -> Design:
    """Measure one registered variant (a few seconds: a boot per figure); `seed` picks the KASLR
    layout and the secret bytes of the attacks."""
    kernel = Kernel.boot(KernelConfig(variant=variant, seed=0))
    kernel.spawn()
    view = user_view(kernel)
    meltdown = {r: run_meltdown(variant, region=r, length=SECRET_BYTES, seed=seed).correct for r in SECRET_REGIONS}
    text = run_kaslr(variant, seed=seed, probe="prefetch", regions=("text",)).outcome("text").matched
    cycles = {
        pcid: run(variant, "null-syscall", pcid=pcid, iterations=ITERATIONS, warmup=WARMUP).per_op
        for pcid in (True, False)
    }
    return Design(
        variant=variant,
        reachable=view.mapped,
        meltdown=meltdown,
        entrybleed_text=text,
        cycles_pcid=cycles[True],
        cycles_nopcid=cycles[False],
        table_kib=frames_kib(measure(variant).process_tables),
    )


def designs(
    variants: Sequence[str] | None = None, *, seed: int = SEED, progress: Callable[[str], None] | None = None
) -> list[Design]:
    """Every registered variant's row (or those named), in the registry's order."""
    out = []
    for name in variants or list(VARIANTS):
        if progress is not None:
            progress(name)
        out.append(design(name, seed))
    return out
