"""SIGTERM stops a `clad` command the way Ctrl-C does.

Cluster schedulers, `kill`, `ray job stop` and Kubernetes all stop a job with SIGTERM, and a job started in
the background by a shell ignores SIGINT. Ray's driver handles SIGTERM by aborting the process (its C++
failure-signal handler), which skips every cleanup: the MLflow run stays RUNNING, the output folder's lock
and half an evaluation summary stay behind. After `ray.init` this module routes SIGTERM into the same path
as Ctrl-C (the SIGINT handler in force, e.g. Ray Train's abort, else KeyboardInterrupt); `clad` then exits
with 143 (128 + SIGTERM) instead of 130.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["route_sigterm_to_interrupt", "terminated", "interrupted_exit_code"]

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
