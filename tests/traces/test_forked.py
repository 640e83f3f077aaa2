"""kaiser.traces.forked: a function in a forked child, its answer or its exception back."""

from __future__ import annotations

import os
import signal
import time

import pytest

from kaiser.traces import forked


def test_the_answer_comes_back_with_the_childs_cpu() -> None:
    big = bytes(range(256)) * 16_384  # 4 MiB: more than a pipe holds, so the parent must read as it goes
    child = forked.start(lambda: (os.getpid(), big))
    (pid, got), cpu = forked.finish(child)
    assert pid == child.pid != os.getpid() and got == big and cpu >= 0.0
    forked.stop(child)  # already reaped: nothing to do


def test_the_childs_memory_is_the_parents_at_the_fork() -> None:
    state = {"n": 1}
    child = forked.start(lambda: state.update(n=2) or state["n"])
    assert forked.finish(child)[0] == 2 and state["n"] == 1


def test_an_exception_is_raised_in_the_parent() -> None:
    def fail() -> None:
        raise ValueError("bad trace line 7")

    with pytest.raises(ValueError, match="^bad trace line 7$"):
        forked.finish(forked.start(fail))


class Unpicklable(Exception):
    def __init__(self, what: str, extra: object) -> None:
        super().__init__(what)
        self.extra = extra

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("no")


def test_an_exception_that_does_not_pickle_comes_back_as_its_text() -> None:
    def fail() -> None:
        raise Unpicklable("odd", lambda: 0)

    with pytest.raises(forked.ChildError, match="^Unpicklable: odd$"):
        forked.finish(forked.start(fail))


def test_a_child_that_dies_is_an_error_naming_the_signal() -> None:
    with pytest.raises(forked.ChildError, match="ended without an answer .signal SIGKILL."):
        forked.finish(forked.start(lambda: os.kill(os.getpid(), signal.SIGKILL)))


def test_stop_kills_and_reaps_a_running_child() -> None:
    child = forked.start(lambda: time.sleep(60))
    forked.stop(child)
    assert child.reaped and child.fd == -1
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)
