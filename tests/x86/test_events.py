"""EventBuilder: a body kept as rows (`kernel_rows`, `add_rows`) is what `access` builds."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from kaiser.x86.events import EventBuilder
from kaiser.x86.rights import Op

ACCESSES = st.lists(st.tuples(st.integers(0, 2**64 - 1), st.sampled_from([Op.READ, Op.WRITE, Op.FETCH])), max_size=40)


@given(before=ACCESSES, body=ACCESSES)
def test_added_rows_are_the_accesses(before: list[tuple[int, Op]], body: list[tuple[int, Op]]) -> None:
    one, other = EventBuilder(), EventBuilder()
    for va, op in before + body:
        one.access(va, op, 0)
    for va, op in before:
        other.access(va, op, 0)
    other.add_rows(other.kernel_rows(body))
    assert np.array_equal(one.array(), other.array())
