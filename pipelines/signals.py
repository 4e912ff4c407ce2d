"""SIGTERM stops a `clad` command the way Ctrl-C does.

Cluster schedulers, `kill`, `ray job stop` and Kubernetes all stop a job with SIGTERM, and a job started in
the background by a shell ignores SIGINT. Ray's driver handles SIGTERM by aborting the process (its C++
failure-signal handler), which skips every cleanup: the MLflow run stays RUNNING, the output folder's lock
and half an evaluation summary stay behind. After `ray.init` this module routes SIGTERM into the same path
as Ctrl-C (the SIGINT handler in force, e.g. Ray Train's abort, else KeyboardInterrupt); `clad` then exits
with 143 (128 + SIGTERM) instead of 130.

`interrupts_held()` defers both signals while `ray.init` runs: a KeyboardInterrupt raised in the middle of it
leaves a half-connected core worker that `ray.shutdown()` does not know about, and its C++ destructor then
crashes the process at exit (SIGSEGV instead of 130; docs/results.md, "Known problems", session 10-11).
"""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["route_sigterm_to_interrupt", "terminated", "interrupted_exit_code", "interrupts_held"]

_terminated = threading.Event()


def _on_sigterm(signum, frame):
    _terminated.set()
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)  # e.g. Ray Train's: abort the controller, then raise KeyboardInterrupt
    raise KeyboardInterrupt


def route_sigterm_to_interrupt() -> None:
    """Install the SIGTERM handler (main thread only; a no-op elsewhere). Call after `ray.init`, which
    installs its own handler."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def terminated() -> bool:
    """Whether this process received SIGTERM."""
    return _terminated.is_set()


def interrupted_exit_code() -> int:
    """The exit code of a command stopped by a signal: 143 after SIGTERM, 130 after Ctrl-C (SIGINT)."""
    return 143 if terminated() else 130


@contextlib.contextmanager
def interrupts_held():
    """Hold Ctrl-C and SIGTERM until the block ends, then raise KeyboardInterrupt (for a native call that must
    not be cut in half). A signal the process ignores stays ignored; a handler the block installs (ray.init
    installs one for SIGTERM) is kept. Main thread only; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum, frame):
        caught.append(signum)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, h in before.items():
        if h is not signal.SIG_IGN:
            signal.signal(s, hold)
    try:
        yield
    finally:
        for s, h in before.items():
            if signal.getsignal(s) is hold:
                signal.signal(s, h)
        if caught:
            if signal.SIGTERM in caught:
                _terminated.set()
            raise KeyboardInterrupt  # replaces any error of the block: the user asked to stop
