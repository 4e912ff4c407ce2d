"""The per-episode result record and its JSONL log (streamed as episodes finish; read back to resume)."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from clad.eval.protocol import EpisodeSpec

__all__ = ["EpisodeResult", "ResultLog", "ERROR_KINDS", "EPISODES_FILE"]

EPISODES_FILE = "episodes.jsonl"  # the episode log's name inside an evaluation folder

log = logging.getLogger(__name__)

# error kinds: why an episode did not run to a normal end
ERROR_KINDS = (
    "bad_action",     # the policy returned NaN/Inf or a wrongly shaped action
    "sim_error",      # the simulator raised while resetting or stepping
    "policy_error",   # the policy raised
    "actor_lost",     # the actor died or hung on every allowed attempt (set by the pool)
)


@dataclass
class EpisodeResult:
    """What one episode produced. `frames` (T, H, W, 3) uint8 upright is never written to the log."""

    suite: str
    task_index: int
    task_name: str
    episode: int
    init_index: int
    seed: int
    success: bool
    steps: int                        # control steps taken after settling
    wall_s: float                     # reset + settle + rollout wall time
    error: str | None = None          # reason when the episode ended abnormally
    error_kind: str | None = None     # one of ERROR_KINDS
    attempt: int = 1                  # 1 + number of times the episode was re-queued after an actor loss
    actor: str = ""                   # which actor slot ran it (diagnostics only; never affects results)
    action_l1: float = 0.0            # sum of |a| over the episode: a cheap fingerprint for determinism checks
    video: str | None = None          # path of the MP4, when one was written
    instruction: str | None = None    # the instruction the policy was conditioned on (None: reads no language)
    goals_met: int | None = None      # most BDDL goal predicates that held at one step (None: env has no goals)
    goals_total: int | None = None    # the task's goal predicates; success = all of them at one step
    frames: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> tuple[int, int]:
        return self.task_index, self.episode

    @property
    def goal_progress(self) -> float | None:
        """goals_met / goals_total in [0, 1] (1 = success), or None when not recorded."""
        if not self.goals_total:
            return None
        return (self.goals_total if self.success else self.goals_met) / self.goals_total

    @classmethod
    def failed(cls, spec: EpisodeSpec, task_name: str, kind: str, reason: str, attempt: int = 1,
               actor: str = "") -> "EpisodeResult":
        """A result for an episode that could not be run at all (counted as a failure, never dropped)."""
        return cls(suite=spec.suite, task_index=spec.task_index, task_name=task_name, episode=spec.episode,
                   init_index=spec.init_index, seed=spec.seed, success=False, steps=0, wall_s=0.0,
                   error=reason, error_kind=kind, attempt=attempt, actor=actor)

    def to_record(self) -> dict:
        d = asdict(self)
        d.pop("frames")
        if not math.isfinite(d["action_l1"]):
            d["action_l1"] = None  # strict JSON has no NaN/Inf
        return d

    @classmethod
    def from_record(cls, d: dict) -> "EpisodeResult":
        kw = {k: d.get(k) for k in cls.__dataclass_fields__ if k != "frames" and k in d}
        if kw.get("action_l1") is None:
            kw["action_l1"] = float("nan")
        return cls(**kw)


class ResultLog:
    """Append-only JSONL of `EpisodeResult` records, one line per finished episode.

    Each line is flushed and fsynced as it is written, so a killed run loses at most the line being
    written; a torn last line is ignored on reading. Reading keeps the first record of each
    (task, episode), so a record is never counted twice.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._repaired = False

    def _repair_tail(self) -> None:
        # A run killed mid-write leaves a torn last line without "\n": terminate it, or the next record
        # would be glued onto it and lost.
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            if torn:
                with self.path.open("ab") as f:
                    f.write(b"\n")
        self._repaired = True

    def read(self) -> list[EpisodeResult]:
        if not self.path.is_file():
            return []
        out: dict[tuple[int, int], EpisodeResult] = {}
        with self.path.open("r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    r = EpisodeResult.from_record(json.loads(line))
                except (json.JSONDecodeError, TypeError) as err:
                    log.warning("%s:%d: skipping unreadable record (%s)", self.path, lineno, err)
                    continue
                out.setdefault(r.key, r)
        return sorted(out.values(), key=lambda r: r.key)

    def append(self, result: EpisodeResult) -> None:
        line = json.dumps(result.to_record(), sort_keys=True, allow_nan=False)
        with self._lock:
            if not self._repaired:
                self._repair_tail()
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())

    def append_all(self, results: Iterable[EpisodeResult]) -> None:
        for r in results:
            self.append(r)
