"""`signals.interrupts_held()`: Ctrl-C / SIGTERM during a call that must not be cut in half (ray.init) wait for
the call to finish, then stop the command as usual. Plain signals to this process; no Ray."""

from __future__ import annotations

import os
import signal

import pytest

from pipelines import signals


@pytest.fixture(autouse=True)
def _restore_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in before.items():
        signal.signal(s, h)
    signals._terminated.clear()


def test_ctrl_c_inside_the_block_is_raised_after_it_finishes():
    signal.signal(signal.SIGINT, signal.default_int_handler)
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with signals.interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            finished.append("the rest of the block ran")
    assert finished == ["the rest of the block ran"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert signals.interrupted_exit_code() == 130


def test_sigterm_inside_the_block_stops_with_143():
    with pytest.raises(KeyboardInterrupt):
        with signals.interrupts_held():
            os.kill(os.getpid(), signal.SIGTERM)
    assert signals.terminated() and signals.interrupted_exit_code() == 143


def test_an_ignored_ctrl_c_stays_ignored():
    # a job started in the background by a shell ignores SIGINT; holding must not turn that into a stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with signals.interrupts_held():
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_handler_installed_inside_the_block_is_kept():
    # ray.init installs its own SIGTERM handler; restoring the old one would undo it
    def rays(signum, frame):
        pass

    with signals.interrupts_held():
        signal.signal(signal.SIGTERM, rays)
    assert signal.getsignal(signal.SIGTERM) is rays


def test_the_error_of_the_block_propagates_when_no_signal_came():
    with pytest.raises(ValueError, match="bad"):
        with signals.interrupts_held():
            raise ValueError("bad")
    assert signal.getsignal(signal.SIGINT) is not None and not signals.terminated()
