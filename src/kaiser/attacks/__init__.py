"""Attacks that prove isolation: Meltdown by Flush+Reload against every variant.

`cache` is the data cache and timer, `meltdown` the attacker program (which sees only a user
process's interface), `core` the machine side: the (vulnerable) core, the process interface, the
planted secret and the experiment `run_meltdown()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kaiser.lazy import lazy_exports

if TYPE_CHECKING:
    from kaiser.attacks.cache import DataCache, Hit, Timer, TimerNoise
    from kaiser.attacks.core import (
        REGIONS,
        AttackError,
        Core,
        MeltdownResult,
        MemResult,
        Reach,
        Secret,
        UserProcess,
        explain,
        plant_at,
        plant_secret,
        run_meltdown,
        transient_source,
    )
    from kaiser.attacks.meltdown import ByteReading, Calibration, MeltdownAttacker, MeltdownParams, Sigsegv, UserPort


__all__ = [
    "REGIONS",
    "AttackError",
    "MeltdownParams",
    "ByteReading",
    "Calibration",
    "Core",
    "DataCache",
    "Hit",
    "MeltdownAttacker",
    "MeltdownResult",
    "MemResult",
    "UserProcess",
    "Reach",
    "Secret",
    "Sigsegv",
    "Timer",
    "TimerNoise",
    "UserPort",
    "explain",
    "plant_at",
    "plant_secret",
    "run_meltdown",
    "transient_source",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
