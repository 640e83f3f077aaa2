"""kaiser: kernel page-table isolation (KAISER/KPTI) on a bit-exact x86-64 paging model."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """`kaiser.__version__`: the installed distribution's version, whose one source is
    `[project] version` of pyproject.toml. Read from the package metadata on first use, so that
    importing kaiser does not load importlib.metadata."""
    if name != "__version__":
        raise AttributeError(f"module 'kaiser' has no attribute {name!r}")
    from importlib import metadata

    try:
        version = metadata.version("kaiser")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown"
    globals()["__version__"] = version
    return version
