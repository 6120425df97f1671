"""Ctrl-C during an in-process InvarLock evaluate stops the session even if the evaluate swallows it."""

from __future__ import annotations

import os
import signal

import pytest

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast


def test_a_swallowed_ctrl_c_inside_an_inprocess_evaluate_is_raised_again() -> None:
    from pytest_invarlock.worker.certifier import interrupts_kept

    before = signal.getsignal(signal.SIGINT)  # pytest's default handler, or SIG_IGN in an xdist worker
    reached = []
    with pytest.raises(KeyboardInterrupt), interrupts_kept():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0.01) if hasattr(signal, "sigtimedwait") else None
        except KeyboardInterrupt:  # what a library that catches BaseException does
            reached.append("swallowed")
        reached.append("returned")
    assert reached == ["swallowed", "returned"]
    assert signal.getsignal(signal.SIGINT) is before


def test_an_exception_left_by_a_swallowed_ctrl_c_becomes_the_interrupt() -> None:
    from pytest_invarlock.worker.certifier import interrupts_kept

    with pytest.raises(KeyboardInterrupt), interrupts_kept():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0.01)
        except KeyboardInterrupt:
            pass
        raise ImportError("cannot import name '_inductor' from 'torch'")  # what an interrupted lazy import left


def test_without_ctrl_c_errors_pass_through() -> None:
    from pytest_invarlock.worker.certifier import interrupts_kept

    with pytest.raises(ImportError), interrupts_kept():
        raise ImportError("a real one")
