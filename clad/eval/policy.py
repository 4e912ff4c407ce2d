"""The rollout-policy protocol and the plain-data spec that builds a policy inside any process.

A policy serves a batch of envs, each with its own history. The runner (or a policy server) calls

    policy.reset(env_ids, contexts)          # at the start of an episode in each of these envs
    actions = policy.act(env_ids, obs, steps)   # obs: list of B observation dicts -> (B, 7) float64
    policy.frames_needed(env_id, step)          # optional: False -> the obs at `step` may omit the images

Observation dicts use the LIBERO demo-file keys (clad/libero/env.py): `agentview_rgb`, `eye_in_hand_rgb`
(H, W, 3) uint8, `gripper_states` (2,), `joint_states` (7,), `ee_states` (6,), `ee_pos` (3,), `ee_ori` (3,).
A policy reads only `obs_keys`, and env actors send only those (a policy server then gets small messages).

Reproducibility: any sampling noise must be drawn from `noise_seed(context.seed, step)` per env row,
never from one generator shared by the batch, so a result does not depend on which other envs happened
to share a batch (in-actor and policy-server modes then agree for the same seeds).

Policies are built from a `PolicySpec` (plain data, sent to Ray actors) by `make_policy`, never pickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

import numpy as np
import pydantic

from clad.config import FrozenConfig
from clad.errors import ConfigError

__all__ = ["EpisodeContext", "RolloutPolicy", "PolicySpec", "make_policy", "noise_seed", "ZeroPolicy",
           "frames_needed"]


@dataclass(frozen=True)
class EpisodeContext:
    """What a policy may know about the episode starting in one env.

    `env` is the live simulator (clad.libero.env.LiberoEnv) and is only set when the policy runs in the
    same process as the env; privileged policies (the scripted expert) need it.
    """

    seed: int
    suite: str
    task_index: int
    task_name: str
    language: str
    init_index: int
    env: Any = None

    def without_env(self) -> "EpisodeContext":
        return EpisodeContext(self.seed, self.suite, self.task_index, self.task_name, self.language,
                              self.init_index, None)


@runtime_checkable
class RolloutPolicy(Protocol):
    """A batched closed-loop policy (see the module docstring)."""

    #: observation keys `act` reads (cameras among them decide whether envs must render)
    obs_keys: tuple[str, ...]
    #: True when the policy needs `EpisodeContext.env` (it must run next to the simulator)
    needs_env: bool

    def reset(self, env_ids: Sequence[int], contexts: Sequence[EpisodeContext]) -> None: ...

    def act(self, env_ids: Sequence[int], obs: Sequence[dict[str, np.ndarray]], steps: Sequence[int]) -> np.ndarray:
        """(B,) env ids, B observation dicts, (B,) step indices within the episodes -> (B, 7) actions."""
        ...


def frames_needed(policy: RolloutPolicy, env_id: int, step: int) -> bool:
    """Whether the observation `policy` gets at `step` must carry camera images (True unless the policy
    says otherwise through an optional `frames_needed(env_id, step)` method)."""
    fn = getattr(policy, "frames_needed", None)
    return True if fn is None else bool(fn(env_id, step))


def noise_seed(episode_seed: int, step: int) -> int:
    """Seed of the noise drawn at `step` of the episode seeded `episode_seed` (a 63-bit mix of both)."""
    # SplitMix64-style mixing: neighbouring (seed, step) pairs give unrelated streams.
    x = (int(episode_seed) * 0x9E3779B97F4A7C15 + int(step) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 64)
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) % (1 << 64)
    x ^= x >> 32
    return x & ((1 << 63) - 1)


class PolicySpec(FrozenConfig):
    """Which policy to build and how. Plain data: the same spec builds the same policy in any process.

    kind:
      clad    the CLaD agent loaded from `checkpoint` (a directory: model.safetensors, config.json, stats.json)
      expert  the scripted pick-and-place expert (privileged; runs inside env actors only)
      tiny    a small randomly initialised torch MLP on proprio plus seeded noise: a real, cheap network
              for tests and for measuring the pool and the policy server
      zero    no motion, gripper open
    """

    kind: Literal["clad", "expert", "tiny", "zero"] = "clad"
    checkpoint: str | None = None
    device: str = "cpu"
    seed: int = 0                                   # tiny: weight init seed
    hidden: int = pydantic.Field(64, ge=1)          # tiny: hidden width
    noise: float = pydantic.Field(0.1, ge=0.0)      # tiny: std of the per-(episode, step) action noise
    cameras: tuple[str, ...] = ()                   # tiny: camera views to read (exercises image transport)
    # clad: KEY=VALUE overrides of the checkpoint's run-time model fields (how the trained weights are run:
    # execution horizon, DDIM steps, temporal ensembling, autocast), e.g. "policy.execution_horizon=3"
    runtime: tuple[str, ...] = ()

    @pydantic.model_validator(mode="after")
    def _checkpoint(self):
        if self.kind == "clad" and not self.checkpoint:
            raise ValueError("policy kind 'clad' needs a checkpoint directory (--checkpoint DIR)")
        if self.runtime and self.kind != "clad":
            raise ValueError(f"runtime overrides ({list(self.runtime)}) apply to the CLaD agent only (--checkpoint DIR)")
        from clad.model.config import RUNTIME_FIELDS

        for item in self.runtime:
            key = item.split("=", 1)[0].strip()
            if "=" not in item or key not in RUNTIME_FIELDS:
                raise ValueError(f"runtime override {item!r} (--runtime): expected KEY=VALUE with KEY one of "
                                 f"{sorted(RUNTIME_FIELDS)}; other fields change the trained weights")
        return self


class ZeroPolicy:
    """No motion, gripper open. A baseline: LIBERO tasks do not succeed by themselves."""

    obs_keys: tuple[str, ...] = ()
    needs_env = False

    def reset(self, env_ids: Sequence[int], contexts: Sequence[EpisodeContext]) -> None:
        pass

    def act(self, env_ids: Sequence[int], obs: Sequence[dict[str, np.ndarray]], steps: Sequence[int]) -> np.ndarray:
        a = np.zeros((len(env_ids), 7))
        a[:, 6] = -1.0
        return a


def make_policy(spec: PolicySpec) -> RolloutPolicy:
    """Build the policy described by `spec` in this process (heavy imports happen here, lazily)."""
    if spec.kind == "zero":
        return ZeroPolicy()
    if spec.kind == "tiny":
        from clad.eval.tiny_policy import TinyTorchPolicy

        return TinyTorchPolicy(hidden=spec.hidden, seed=spec.seed, noise=spec.noise, cameras=spec.cameras,
                               device=spec.device)
    if spec.kind == "expert":
        from clad.eval.expert_policy import ExpertPolicy

        return ExpertPolicy()
    if spec.kind == "clad":
        from clad import storage
        from clad.eval.agent_adapter import CladAgentPolicy

        # a URI is downloaded once per node into the cache and shared by that node's env actors
        checkpoint = str(storage.local_copy(spec.checkpoint))
        return CladAgentPolicy.from_checkpoint(checkpoint, device=spec.device, runtime=spec.runtime)
    raise ConfigError(f"unknown policy kind {spec.kind!r}")
