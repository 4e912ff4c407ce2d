"""`EvalConfig`: everything that defines an evaluation run (saved as `eval_config.json` in the output dir)."""

from __future__ import annotations

import os
from typing import Literal

import pydantic

from clad.config import FrozenConfig
from clad.eval.policy import PolicySpec

__all__ = ["EvalConfig", "RESULT_FIELDS"]

# Fields that change what an episode does. A resumed run must agree with the logged run on all of them;
# the rest (pool size, batching, timeouts, videos) only change how fast results arrive.
RESULT_FIELDS = ("suite", "base_seed", "max_steps", "settle_steps", "camera_size", "policy")


class EvalConfig(FrozenConfig):
    suite: str = "libero_10"
    tasks: tuple[str, ...] | None = None        # task indices or names; None = every task of the suite
    episodes_per_task: int = pydantic.Field(50, ge=1)
    base_seed: int = 0
    max_steps: int | None = pydantic.Field(None, ge=1)   # None = the suite's standard budget
    settle_steps: int = pydantic.Field(10, ge=0)         # no-op steps after the init state (openvla/lerobot: 10)
    camera_size: int = pydantic.Field(128, ge=8)         # LIBERO's default 128x128
    policy: PolicySpec
    policy_mode: Literal["in_actor", "server"] = "in_actor"
    # pool
    actors: int | None = pydantic.Field(None, ge=1)      # None = one per CPU in the pool's share
    cpus_per_actor: float | None = pydantic.Field(None, gt=0)
    rollout_resource: str | None = None         # custom Ray resource each env actor claims 0.01 of
    env_gpus_per_actor: float = pydantic.Field(0.0, ge=0)  # > 0: render on a GPU (EGL device pinned per actor)
    recycle_after: int = pydantic.Field(25, ge=1)        # restart an actor after this many episodes
    episode_timeout_s: float | None = pydantic.Field(None, gt=0)  # None = 120 s + 2 s per step of budget
    max_attempts: int = pydantic.Field(3, ge=1)          # per episode, counting actor losses
    max_actor_restarts: int = pydantic.Field(50, ge=0)   # abort when actors keep dying
    # policy server
    server_max_batch: int = pydantic.Field(64, ge=1)
    server_max_wait_ms: float = pydantic.Field(5.0, ge=0)
    server_gpus: float | None = pydantic.Field(None, ge=0)  # None = 1 when the cluster has a GPU
    # outputs
    video_episodes: int = pydantic.Field(2, ge=0)        # first K episodes of each task are recorded
    video_size: int = pydantic.Field(128, ge=16)

    @pydantic.model_validator(mode="after")
    def _modes(self):
        if self.policy_mode == "server" and self.policy.kind == "expert":
            raise ValueError("the scripted expert reads the simulator and cannot run in a policy server: "
                             "use policy_mode=in_actor")
        return self

    def result_fields(self) -> dict:
        d = self.to_dict()
        out = {k: d[k] for k in RESULT_FIELDS}
        out["policy"] = {k: v for k, v in out["policy"].items() if k != "device"}
        ckpt = out["policy"].get("checkpoint")
        if ckpt and "://" not in str(ckpt):  # one local folder reached through a symlink is one checkpoint
            out["policy"]["checkpoint"] = os.path.realpath(ckpt)
        return out

    def episode_timeout(self, max_steps: int) -> float:
        return self.episode_timeout_s or 120.0 + 2.0 * max_steps
