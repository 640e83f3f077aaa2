"""Real x86-64 code on our tables: a small kernel (GNU as) whose SYSCALL entry and exits switch CR3
as each PTI variant does, and a user program, run on Unicorn's MMU over the kernel model's memory."""

from typing import TYPE_CHECKING

from kaiser.lazy import lazy_exports

if TYPE_CHECKING:
    from kaiser.realcode.build import BuildError
    from kaiser.realcode.loader import BROKEN_VARIANT, broken_variant, variant_names
    from kaiser.realcode.session import RunReport, run_names, run_variant


__all__ = ["BROKEN_VARIANT", "BuildError", "RunReport", "broken_variant", "run_names", "run_variant", "variant_names"]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
