"""`EpisodeWorker`: what one env actor does. It owns one LIBERO simulator and one policy (or a proxy to
a policy server) and runs planned episodes one at a time.

The simulator is built lazily inside the process that runs the episodes (one GL context per process),
kept while consecutive episodes share a task (soft reset to the next init state) and rebuilt when the
task changes or after a simulator error (RLlib's `restart_failed_sub_environments`).
"""

from __future__ import annotations

import logging
import os
import time

from clad.data.libero_layout import CAMERA_TO_OBS_KEY
from clad.eval.episode import run_spec
from clad.eval.policy import RolloutPolicy
from clad.eval.protocol import EpisodeSpec
from clad.eval.results import EpisodeResult
from clad.eval.video import FrameGrabber

__all__ = ["EpisodeWorker", "policy_cameras"]

log = logging.getLogger(__name__)


def policy_cameras(policy: RolloutPolicy) -> tuple[str, ...]:
    """Camera names whose images the policy reads (so the env must render them)."""
    keys = set(policy.obs_keys)
    return tuple(cam for cam, key in CAMERA_TO_OBS_KEY.items() if key in keys)


class EpisodeWorker:
    def __init__(self, suite: str, policy: RolloutPolicy, camera_size: int = 128, env_id: int = 0,
                 name: str = "worker", video_size: int = 128):
        self.suite = suite
        self.policy = policy
        self.camera_size = camera_size
        self.env_id = env_id
        self.name = name
        self.video_size = video_size
        self.cameras = policy_cameras(policy)
        self.env = None
        self._grabber: FrameGrabber | None = None
        self.episodes_run = 0
        self.env_builds = 0
        self.env_build_s = 0.0

    @property
    def task_index(self) -> int | None:
        return None if self.env is None else self.env.task.index

    def _ensure_env(self, spec: EpisodeSpec):
        if self.env is not None and self.env.task.index == spec.task_index:
            return self.env
        self.close_env()
        from clad.libero.env import EnvConfig, LiberoEnv

        t0 = time.perf_counter()
        cfg = EnvConfig(suite=spec.suite, camera_size=self.camera_size, cameras=self.cameras or ("agentview",),
                        render=bool(self.cameras), settle_steps=spec.settle_steps, max_steps=spec.max_steps,
                        hard_reset=False, seed=spec.seed % (1 << 31))
        self.env = LiberoEnv(cfg, spec.task_index)
        self.env_builds += 1
        self.env_build_s += time.perf_counter() - t0
        return self.env

    def run(self, spec: EpisodeSpec) -> EpisodeResult:
        from clad.libero.suites import get_task

        task = get_task(spec.suite, spec.task_index)
        try:
            env = self._ensure_env(spec)
        except Exception as err:
            self.close_env()
            return EpisodeResult.failed(spec, task.name, "sim_error",
                                        f"building the env: {type(err).__name__}: {err}"[:500], actor=self.name)
        if spec.record_video and self._grabber is None:
            self._grabber = FrameGrabber(env, size=self.video_size)
        result = run_spec(env, self.policy, task, spec, env_id=self.env_id,
                          frames=self._grabber if spec.record_video else None)
        result.actor = self.name
        self.episodes_run += 1
        if result.error_kind == "sim_error":
            log.warning("%s: simulator error in %s, rebuilding the env: %s", self.name, spec.key, result.error)
            self.close_env()
        return result

    def close_env(self) -> None:
        if self._grabber is not None:
            self._grabber.close()
            self._grabber = None
        if self.env is not None:
            try:
                self.env.close()
            except Exception as err:  # closing a broken sim must not mask the original error
                log.debug("closing env failed: %s", err)
            self.env = None

    def stats(self) -> dict:
        return {"name": self.name, "pid": os.getpid(), "episodes": self.episodes_run, "env_builds": self.env_builds,
                "env_build_s": self.env_build_s}
