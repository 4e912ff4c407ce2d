"""Which training failures Ray Train may retry (FailureConfig.max_failures).

A lost worker (node gone, OOM kill, a crash) is worth a restart from the last checkpoint. A `CladError`
raised inside a worker (a bad file, field or checkpoint) is deterministic: every attempt would fail the same
way, so it ends the run at once and the driver reports it as itself.

Ray Train 2.x exposes no public hook for this, so `CladTorchTrainer` swaps its controller's failure policy for
`CladFailurePolicy` (a subclass of the default) through the trainer's controller factory.

Ctrl-C: Ray Train's own SIGINT handler aborts the controller and then calls sys.exit inside the handler, so
the command can neither clean up (its MLflow run stays RUNNING) nor say what happened, and the handler
stays installed after `fit`. `CladTorchTrainer` aborts the controller the same way and then raises
KeyboardInterrupt, which the command handles; the previous handler is restored after `fit`.
"""

from __future__ import annotations

import re
import signal
import threading
from typing import Iterable

import ray
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy

from clad.errors import CladError, CheckpointError, ConfigError, DataError

_NAMED = re.compile(r"\b(ConfigError|DataError|CheckpointError|CladError|FolderInUse|TrackingUnavailable)\b: (.+)")
_TYPES = {"ConfigError": ConfigError, "DataError": DataError, "CheckpointError": CheckpointError}


def _chain(err: BaseException | None) -> Iterable[BaseException]:
    seen: set[int] = set()
    stack = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]


def deterministic_error(err: BaseException | None) -> CladError | None:
    """The CladError behind a (possibly Ray-wrapped) worker failure, or None if it is something else."""
    for e in _chain(err):
        if isinstance(e, CladError) and not getattr(e, "transient", False):  # a storage hiccup is retried
            return e
    for e in _chain(err):  # a worker exception that crossed a process boundary may keep only its text
        m = _NAMED.search(str(e))
        if m:
            return _TYPES.get(m.group(1), CladError)(m.group(2).strip())
    return None


def worker_errors(err: BaseException) -> list[BaseException]:
    failures = getattr(err, "worker_failures", None)
    return list(failures.values()) if isinstance(failures, dict) else [err]


class CladFailurePolicy(DefaultFailurePolicy):
    """Ray's default policy, except that a deterministic (CladError) worker failure is never retried."""

    def _is_retryable_error(self, training_failed_error) -> bool:
        if any(deterministic_error(e) is not None for e in worker_errors(training_failed_error)):
            return False
        return super()._is_retryable_error(training_failed_error)


class CladTorchTrainer(TorchTrainer):
    ABORT_TIMEOUT_S = 15.0

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        controller_init_kwargs["failure_policy"] = CladFailurePolicy(self.run_config.failure_config)
        main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGINT) if main else None
        try:
            return super()._initialize_and_run_controller(**controller_init_kwargs)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)

    def _register_sigint_handler(self, controller):
        def on_sigint(signum, frame):
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts the abort
            try:
                ray.get(controller.abort.remote(), timeout=self.ABORT_TIMEOUT_S)
            except Exception:  # the controller is gone or slow: the caller shuts Ray down anyway
                pass
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_sigint)


def training_error(err: BaseException) -> BaseException:
    """What the driver reports for a failed fit: the CladError behind it when there is one."""
    for e in worker_errors(err):
        found = deterministic_error(e)
        if found is not None:
            return found
    return err
