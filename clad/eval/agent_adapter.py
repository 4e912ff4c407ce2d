"""Adapter from env observations to the CLaD agent's inputs, and the agent as a rollout policy.

    adapter = AgentInputAdapter(cameras=("agentview",), proprio_keys=("joint_states", "gripper_states"))
    rgb, proprio = adapter.images_and_proprio(obs)     # (B, V, 3, H, W) uint8, (B, D_p) float32 raw
    lang = adapter.language(["put the soup in the basket"])   # (B, E) float32

The views, proprio keys and language width come from the checkpoint's model config (clad/model/config.py
`ModelConfig.vision.cameras`, `.proprio_keys`, `.lang_dim`), so eval reads exactly what training read.

ADAPTER BOUNDARY (clad/model/agent.py): `CladAgentPolicy` expects
    Agent.from_checkpoint(dir, device=...)  (or Agent.load)     with .config -> ModelConfig
    agent.reset(env_ids)                                          clears per-env history
    agent.act(env_ids, rgb, proprio, lang_emb[, seeds, steps]) -> (B, 7) actions
`seeds`/`steps` are passed only if `act` accepts them; without them the diffusion sampling noise is
drawn from the agent's own generator, so in-actor and policy-server results can differ (see clad/eval/policy.py).
"""

from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np

from clad.data.conventions import SIMULATOR_ORIENTATION, reorient
from clad.data.libero_layout import CAMERA_TO_OBS_KEY, LOWDIM_KEYS
from clad.errors import CheckpointError
from clad.eval.policy import EpisodeContext
from clad.model.task_table import InstructionChooser, read_task_table

__all__ = ["AgentInputAdapter", "CladAgentPolicy"]


class AgentInputAdapter:
    """Turns B observation dicts (env layout) into the agent's batched inputs."""

    def __init__(self, cameras: Sequence[str], proprio_keys: Sequence[str], lang_dim: int | None = None,
                 image_orientation: str | None = None):
        self.cameras = tuple(cameras)
        # the orientation the model was trained on (its checkpoint's config); the env gives SIMULATOR_ORIENTATION
        self.image_orientation = image_orientation or SIMULATOR_ORIENTATION
        reorient(np.zeros((1, 1, 3)), SIMULATOR_ORIENTATION, self.image_orientation)  # unknown names fail here
        self.proprio_keys = tuple(proprio_keys)
        bad = [k for k in self.proprio_keys if k not in LOWDIM_KEYS]
        if bad:
            raise ValueError(f"unknown proprio keys {bad}: choose from {sorted(LOWDIM_KEYS)}")
        self.image_keys = tuple(CAMERA_TO_OBS_KEY[c] for c in self.cameras)
        self.lang_dim = lang_dim
        self._lang_cache: dict[str, np.ndarray] = {}

    @property
    def obs_keys(self) -> tuple[str, ...]:
        return self.image_keys + self.proprio_keys

    def has_images(self, o: dict[str, np.ndarray]) -> bool:
        return all(k in o for k in self.image_keys)

    def images_and_proprio(self, obs: Sequence[dict[str, np.ndarray]]) -> tuple[np.ndarray | None, np.ndarray]:
        """B dicts -> rgb (B, V, 3, H, W) uint8 in the model's image orientation (the env's frames are
        OpenGL-flipped like LIBERO's demo files; a model trained on upright LeRobot frames gets them rotated),
        proprio (B, D_p).

        rgb is None when the policy reads cameras but none of the dicts carries them (a step the env did
        not render, see `CladAgent.frames_needed`).
        """
        if self.image_keys and not any(self.has_images(o) for o in obs):
            rgb = None
        else:
            rgb = np.stack([np.stack([self._frame(o[k]).transpose(2, 0, 1) for k in self.image_keys])
                            for o in obs]) if self.image_keys else np.zeros((len(obs), 0, 3, 0, 0), np.uint8)
        proprio = np.stack([np.concatenate([np.asarray(o[k], dtype=np.float32).reshape(-1)
                                            for k in self.proprio_keys]) for o in obs])
        return rgb, proprio.astype(np.float32)

    def _frame(self, img: np.ndarray) -> np.ndarray:
        return reorient(np.asarray(img, dtype=np.uint8), SIMULATOR_ORIENTATION, self.image_orientation)

    def language(self, instructions: Sequence[str]) -> np.ndarray:
        """(B,) instructions -> (B, E) float32 embeddings (the encoder training used; cached per string)."""
        missing = sorted({s for s in instructions if s not in self._lang_cache})
        if missing:
            from clad.data.language import encode_instructions

            for s, e in zip(missing, encode_instructions(missing)):
                self._lang_cache[s] = e
        out = np.stack([self._lang_cache[s] for s in instructions]).astype(np.float32)
        if self.lang_dim is not None and out.shape[1] != self.lang_dim:
            raise CheckpointError(f"language embeddings have width {out.shape[1]} but the checkpoint expects "
                                  f"lang_dim={self.lang_dim}")
        return out


def checkpoint_config(checkpoint: str, runtime: Sequence[str] = ()):
    """The ModelConfig a checkpoint runs with: its saved config.json plus `runtime` KEY=VALUE overrides of
    run-time fields. Raises CheckpointError / ConfigError naming the file and field."""
    from clad.config import apply_overrides, config_from_dict
    from clad.model.checkpoint import read_checkpoint_config
    from clad.model.config import ModelConfig

    saved = read_checkpoint_config(checkpoint)
    if not runtime:
        return saved
    return config_from_dict(ModelConfig, apply_overrides(saved.to_dict(), runtime, "--runtime"),
                            f"{checkpoint}/config.json with --runtime {' '.join(runtime)}")


class CladAgentPolicy:
    """The CLaD agent (clad/model/agent.py) behind the RolloutPolicy protocol."""

    needs_env = False

    def __init__(self, agent, adapter: AgentInputAdapter, instructions: InstructionChooser | None = None):
        self.agent = agent
        self.adapter = adapter
        # which string each task is conditioned on: the one training used (the checkpoint's table)
        self.instructions = instructions or InstructionChooser(None)
        self.obs_keys = adapter.obs_keys
        self._lang: dict[int, str] = {}
        self._seeds: dict[int, int] = {}
        params = inspect.signature(agent.act).parameters
        self._seeded = "seeds" in params and "steps" in params

    @classmethod
    def from_checkpoint(cls, checkpoint: str, device: str = "cpu", runtime: Sequence[str] = ()) -> "CladAgentPolicy":
        """The agent of a stage-2 checkpoint; `runtime` holds KEY=VALUE overrides of its run-time model
        fields (clad.model.config.RUNTIME_FIELDS), applied to the saved config before loading."""
        try:
            from clad.model.agent import Agent
        except ImportError as err:
            raise CheckpointError(f"the CLaD agent is not available ({err}); use --policy expert|tiny|zero") from None
        loader = getattr(Agent, "from_checkpoint", None) or getattr(Agent, "load", None)
        if loader is None:
            raise CheckpointError("clad.model.agent.Agent has no from_checkpoint/load: the eval adapter needs one")
        if runtime:
            agent = loader(checkpoint, device=device, cfg=checkpoint_config(checkpoint, runtime))
        else:
            agent = loader(checkpoint, device=device)
        cfg = agent.config
        adapter = AgentInputAdapter(cameras=cfg.vision.cameras, proprio_keys=cfg.proprio_keys, lang_dim=cfg.lang_dim,
                                    image_orientation=cfg.image_orientation)
        return cls(agent, adapter, InstructionChooser(read_task_table(checkpoint), str(checkpoint)))

    def reset(self, env_ids: Sequence[int], contexts: Sequence[EpisodeContext]) -> list[str]:
        """Start episodes; returns, per env, the instruction the agent is conditioned on."""
        for i, ctx in zip(env_ids, contexts):
            self._lang[int(i)] = self.instructions(ctx.task_name, ctx.language)
            self._seeds[int(i)] = int(ctx.seed)
        self.agent.reset(list(env_ids))
        return [self._lang[int(i)] for i in env_ids]

    def instruction(self, env_id: int) -> str:
        """The instruction the episode in `env_id` is conditioned on (set by `reset`)."""
        return self._lang[int(env_id)]

    def frames_needed(self, env_id: int, step: int) -> bool:
        fn = getattr(self.agent, "frames_needed", None)
        return True if fn is None else bool(fn(step))

    def act(self, env_ids: Sequence[int], obs: Sequence[dict[str, np.ndarray]], steps: Sequence[int]) -> np.ndarray:
        # a policy-server batch can mix rendered and unrendered steps: act on each group separately
        with_images = np.array([self.adapter.has_images(o) for o in obs], dtype=bool)
        if self.adapter.image_keys and with_images.any() and not with_images.all():
            out = np.zeros((len(obs), 7), dtype=np.float64)
            for group in (np.flatnonzero(with_images), np.flatnonzero(~with_images)):
                out[group] = self._act([env_ids[i] for i in group], [obs[i] for i in group], [steps[i] for i in group])
            return out
        return self._act(env_ids, obs, steps)

    def _act(self, env_ids: Sequence[int], obs: Sequence[dict[str, np.ndarray]], steps: Sequence[int]) -> np.ndarray:
        rgb, proprio = self.adapter.images_and_proprio(obs)
        lang = self.adapter.language([self._lang[int(i)] for i in env_ids])
        kwargs = {}
        if self._seeded:
            kwargs = dict(seeds=[self._seeds[int(i)] for i in env_ids], steps=list(steps))
        actions = self.agent.act(list(env_ids), rgb, proprio, lang, **kwargs)
        if hasattr(actions, "detach"):
            actions = actions.detach().cpu().numpy()
        return np.asarray(actions, dtype=np.float64)
