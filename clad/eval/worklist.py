"""Bookkeeping of a run's work items: pending, in flight, done, with re-queueing on actor loss.

Pure Python, so the exactly-once guarantees are unit-testable without Ray:

* every planned episode ends with exactly one result (`complete` refuses a second one);
* an episode whose actor died or hung is re-queued at the front (`requeue`) until `max_attempts`,
  after which it gets an `actor_lost` failure result instead of being dropped;
* `take(prefer_task)` gives an actor the next episode of the task its simulator already holds,
  because building a LIBERO scene costs seconds while a soft reset costs a fraction of one.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

from clad.eval.protocol import EpisodeSpec
from clad.eval.results import EpisodeResult

__all__ = ["WorkList", "InFlight"]


@dataclass
class InFlight:
    spec: EpisodeSpec
    worker: str
    attempt: int
    started: float = field(default_factory=time.monotonic)


class WorkList:
    def __init__(self, specs: Iterable[EpisodeSpec], max_attempts: int = 3):
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.max_attempts = max_attempts
        self._pending: deque[EpisodeSpec] = deque()
        self._attempts: dict[tuple[int, int], int] = {}
        self._specs: dict[tuple[int, int], EpisodeSpec] = {}
        for s in specs:
            if s.key in self._specs:
                raise ValueError(f"episode {s.key} planned twice")
            self._specs[s.key] = s
            self._pending.append(s)
        self.in_flight: dict[str, InFlight] = {}   # worker -> its episode
        self.done: dict[tuple[int, int], EpisodeResult] = {}

    # ------------------------------------------------------------------ queries
    @property
    def total(self) -> int:
        return len(self._specs)

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def finished(self) -> bool:
        return not self._pending and not self.in_flight

    def attempts(self, key: tuple[int, int]) -> int:
        return self._attempts.get(key, 0)

    # ------------------------------------------------------------------ transitions
    def take(self, worker: str, prefer_task: int | None = None, held: Iterable[int] = ()) -> InFlight | None:
        """Give `worker` its next episode.

        Order of preference: an episode of `prefer_task` (the scene the worker's simulator holds), then one
        of a task no other worker holds (`held`: their tasks; spreads actors over tasks so each builds
        few scenes), then the first pending episode.
        """
        if worker in self.in_flight:
            raise RuntimeError(f"worker {worker} already runs {self.in_flight[worker].spec.key}")
        if not self._pending:
            return None
        spec = None
        if prefer_task is not None:
            for s in self._pending:
                if s.task_index == prefer_task:
                    spec = s
                    break
        if spec is None:
            held = set(held)
            spec = next((s for s in self._pending if s.task_index not in held), self._pending[0])
        self._pending.remove(spec)
        self._attempts[spec.key] = self._attempts.get(spec.key, 0) + 1
        item = InFlight(spec=spec, worker=worker, attempt=self._attempts[spec.key])
        self.in_flight[worker] = item
        return item

    def complete(self, worker: str, result: EpisodeResult) -> bool:
        """Record the result of `worker`'s episode. False (ignored) if that episode already has one."""
        item = self.in_flight.pop(worker, None)
        if item is None or result.key != item.spec.key:
            raise RuntimeError(f"worker {worker} returned {result.key} but was not running it")
        if result.key in self.done:
            return False
        result.attempt = item.attempt
        self.done[result.key] = result
        return True

    def requeue(self, worker: str, task_name: str, reason: str) -> EpisodeResult | None:
        """`worker` was lost mid-episode. Re-queue its episode at the front, or, when it used up its
        attempts, complete it with an `actor_lost` failure, which is returned."""
        item = self.in_flight.pop(worker, None)
        if item is None:
            return None
        key = item.spec.key
        if key in self.done:
            return None
        if item.attempt < self.max_attempts:
            self._pending.appendleft(item.spec)
            return None
        res = EpisodeResult.failed(item.spec, task_name, "actor_lost",
                                   f"lost its actor on all {item.attempt} attempts; last: {reason}",
                                   attempt=item.attempt, actor=worker)
        self.done[key] = res
        return res

    def overdue(self, timeout_s: float, now: float | None = None) -> list[InFlight]:
        """Episodes running for longer than `timeout_s` (their actors are presumed hung)."""
        now = time.monotonic() if now is None else now
        return [i for i in self.in_flight.values() if now - i.started > timeout_s]
