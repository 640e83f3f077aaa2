"""Sweeps: a TOML spec's cartesian product of configurations, run on dask, stored resumably.

`spec` parses and validates the spec and gives each configuration a stable id; `runner` runs the
missing ones on a local or remote dask cluster; `store` keeps one file per finished configuration
and the consolidated `results.csv` (overhead against nopti computed after collection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kaiser.lazy import lazy_exports

if TYPE_CHECKING:
    from kaiser.sweep.runner import SweepState, run_sweep
    from kaiser.sweep.spec import Config, Spec, SpecError, load_spec, parse_spec
    from kaiser.sweep.store import ResultStore, table


__all__ = ["Config", "ResultStore", "Spec", "SpecError", "SweepState", "load_spec", "parse_spec", "run_sweep", "table"]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
