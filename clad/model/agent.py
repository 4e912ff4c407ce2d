"""Closed-loop agent over B parallel environments.

    agent = CladAgent(model, num_envs=B)               # or CladAgent.from_checkpoint(dir, device="cpu")
    agent.reset()                                      # or agent.reset([i]) when env i starts a new episode
    actions = agent.act(obs)                           # (B, 7) float32 numpy, raw env units
    actions = agent.act(env_ids, rgb, proprio, lang)   # the same for a subset of envs (eval adapter form)
    z_p, z_s = agent.plan(obs)                         # the latent foresight (B, H) each; time does not advance
    agent.advance(obs, executed)                       # another controller acted: record it, time advances

obs: {"rgb": (B, V, 3, H, W) uint8 (views in vision.cameras order, as stored),
      "proprio": (B, D_p) raw float, "lang_emb": (B, E)}, optionally "feat": (B, V, F) precomputed features
      and "env_ids": (B,) which envs the rows belong to (default: all, in order).

The agent keeps what training windows contain (clad/data/batch.py): the frame at max(t - tau, 0) and the
last tau executed actions (zeros, masked, before the episode start; the gripper as the +-1 the simulator
acts on, like the demonstrations). At episode start the past frame is the
current frame. It replans every `policy.execution_horizon` steps, or, with `policy.temporal_ensemble`,
predicts a chunk every step and averages the predictions for the current step with ACT's exponential
weights (the oldest prediction weighs most). With `seeds` and `steps` the initial diffusion noise of each
env is drawn from (seed, step), so results do not depend on how envs are batched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from clad.model.config import ModelConfig
from clad.model.model import CladModel

FRAME_KEYS = ("rgb", "feat")


def executed_action(action: torch.Tensor) -> torch.Tensor:
    """What the simulator executes for an action (B, A): robosuite's gripper moves by the sign of the last
    dim, so the past-action buffer holds sign(gripper), as the demonstrations do (+-1), not the policy's
    continuous output."""
    out = action.clone()
    out[..., -1] = torch.sign(out[..., -1])
    return out


def _grow(x: torch.Tensor, n: int) -> torch.Tensor:
    """Pad dim 0 of x with zeros up to n rows."""
    if x.shape[0] >= n:
        return x
    return torch.cat([x, torch.zeros(n - x.shape[0], *x.shape[1:], dtype=x.dtype)])


class CladAgent:
    def __init__(self, model: CladModel, num_envs: int = 1, generator: torch.Generator | None = None):
        self.model = model.eval()
        self.cfg = model.cfg
        self.generator = generator
        self.tau = self.cfg.dynamics.tau
        self.chunk = self.cfg.policy.chunk_length
        a, c = self.cfg.action_dim, self.chunk
        self.num_envs = 0
        self.t = torch.zeros(0, dtype=torch.long)  # step index within the episode
        self.frames: dict[str, torch.Tensor] = {}  # key -> (B, tau + 1, ...) ring buffer, slot t % (tau + 1)
        self.proprio = torch.zeros(0, self.tau + 1, self.cfg.proprio_dim)
        self.past_actions = torch.zeros(0, self.tau, a)  # a_{t-tau} .. a_{t-1}
        self.queue = torch.zeros(0, c, a)  # current chunk (receding horizon)
        self.queue_pos = torch.zeros(0, dtype=torch.long)  # next index to execute; >= horizon -> replan
        self.ens = torch.zeros(0, c, c, a)  # ens[:, j] = chunk predicted j steps ago
        self.ens_valid = torch.zeros(0, c, dtype=torch.bool)
        self._ensure(num_envs)

    @classmethod
    def from_checkpoint(
        cls, directory: str | Path, device: str | torch.device = "cpu", num_envs: int = 1, cfg: ModelConfig | None = None
    ) -> "CladAgent":
        """An agent around a stage-2 checkpoint (clad/model/checkpoint.py); buffers grow with the env ids seen."""
        from clad.model.checkpoint import load_checkpoint

        return cls(load_checkpoint(directory, cfg=cfg, device=device), num_envs)

    load = from_checkpoint

    @property
    def config(self) -> ModelConfig:
        return self.cfg

    def _ensure(self, n: int) -> None:
        """Make room for env ids < n (new envs start an episode)."""
        if n <= self.num_envs:
            return
        old = self.num_envs
        self.t, self.proprio = _grow(self.t, n), _grow(self.proprio, n)
        self.past_actions, self.queue = _grow(self.past_actions, n), _grow(self.queue, n)
        self.queue_pos, self.ens, self.ens_valid = _grow(self.queue_pos, n), _grow(self.ens, n), _grow(self.ens_valid, n)
        self.frames = {k: _grow(v, n) for k, v in self.frames.items()}
        self.num_envs = n
        self.reset(range(old, n))

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        """Start a new episode in the given envs (all when None)."""
        ids = torch.arange(self.num_envs) if env_ids is None else torch.as_tensor(list(env_ids), dtype=torch.long)
        if len(ids):
            self._ensure(int(ids.max()) + 1)
        self.t[ids] = 0
        self.past_actions[ids] = 0.0
        self.queue_pos[ids] = self.chunk
        self.ens_valid[ids] = False
        # frame buffers need no clearing: slot 0 is written at t = 0 before it is read

    # ------------------------------------------------------------------------------------------------------

    def _parse(self, obs: Mapping) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        o = {k: (v if torch.is_tensor(v) else torch.as_tensor(np.asarray(v))).cpu() for k, v in obs.items()}
        b = o["proprio"].shape[0]
        ids = o.pop("env_ids", None)
        ids = torch.arange(b) if ids is None else ids.long().reshape(-1)
        if len(ids) != b:
            raise ValueError(f"{len(ids)} env ids for {b} observations")
        self._ensure(int(ids.max()) + 1 if len(ids) else 0)
        return ids, o

    def _record(self, ids: torch.Tensor, obs: dict[str, torch.Tensor]) -> None:
        slot = self.t[ids] % (self.tau + 1)
        for key in FRAME_KEYS:
            if key in obs:
                x = obs[key]
                if key not in self.frames:
                    self.frames[key] = torch.zeros(self.num_envs, self.tau + 1, *x.shape[1:], dtype=x.dtype)
                self.frames[key][ids, slot] = x
        self.proprio[ids, slot] = obs["proprio"].float()

    def _window(self, ids: torch.Tensor, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model input (batch.py keys without *_next / actions_future) for envs `ids` (rows of obs)."""
        t = self.t[ids]
        first = (t == 0)[:, None]
        prev_slot = (t - self.tau).clamp_min(0) % (self.tau + 1)
        win: dict[str, torch.Tensor] = {}
        for key in FRAME_KEYS:
            if key in obs:
                cur = obs[key]
                prev = self.frames[key][ids, prev_slot] if key in self.frames else cur
                win[f"{key}_prev"] = torch.where(first.view(-1, *[1] * (cur.ndim - 1)), cur, prev)
                win[f"{key}_curr"] = cur
        p_cur = obs["proprio"].float()
        win["proprio_prev"] = torch.where(first, p_cur, self.proprio[ids, prev_slot])
        win["proprio_curr"] = p_cur
        steps = t[:, None] - self.tau + torch.arange(self.tau)[None]  # absolute step of each past action
        win["actions_past_mask"] = steps >= 0
        win["actions_past"] = self.past_actions[ids] * win["actions_past_mask"][..., None]
        win["lang_emb"] = obs["lang_emb"].float()
        return win

    def _noise(self, n: int, seeds: Sequence[int] | None, steps: Sequence[int] | None) -> torch.Tensor | None:
        if seeds is None:
            return None
        if steps is None or len(seeds) != n or len(steps) != n:
            raise ValueError("act() needs one seed and one step per env")
        shape = (self.chunk, self.cfg.action_dim)
        gens = [torch.Generator().manual_seed((int(s) * 1_000_003 + int(k)) % (2**63)) for s, k in zip(seeds, steps)]
        return torch.stack([torch.randn(shape, generator=g) for g in gens])

    def _predict(self, win: dict[str, torch.Tensor], noise: torch.Tensor | None) -> torch.Tensor:
        return self.model.predict_actions(win, self.generator, noise).float().cpu()

    def frames_needed(self, step: int) -> bool:
        """Whether the images observed at `step` of an episode are ever read.

        A chunked agent reads images only when it replans (steps 0, h, 2h, ... for execution horizon h)
        and, as the t - tau frame, tau steps before each replan. Other steps may omit `rgb`/`feat`, so
        the env need not render them. Temporal ensembling replans every step.
        """
        p = self.cfg.policy
        if p.temporal_ensemble:
            return True
        h = p.execution_horizon
        return step % h == 0 or (step + self.tau) % h == 0

    def _check_frames(self, ids: torch.Tensor, obs: dict[str, torch.Tensor]) -> None:
        if not any(k in obs for k in FRAME_KEYS):
            steps = self.t[ids].tolist()
            raise ValueError(f"the agent replans at episode step(s) {steps} but the observation has no images: "
                             "render every step for which frames_needed(step) is True")

    # ------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def plan(self, obs: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent foresight (z^_p, z^_s), (B, H) each, for the current observation (time does not advance)."""
        ids, o = self._parse(obs)
        saved = {k: v.clone() for k, v in self.frames.items()}, self.proprio.clone()
        self._record(ids, o)  # the window reads the current frame from the buffers; restored below
        win = self._window(ids, o)
        self.frames, self.proprio = saved
        z_p, z_s = self.model.foresight(win)
        return z_p.float().cpu(), z_s.float().cpu()

    def advance(self, obs: Mapping, executed: torch.Tensor) -> None:
        """Advance the given envs one step in which another controller acted (a scripted expert, a human):
        record the observation, and `executed` (B, A), raw env units, as the past action, as `act` would."""
        ids, o = self._parse(obs)
        self._record(ids, o)
        self.past_actions[ids] = torch.cat([self.past_actions[ids, 1:], executed_action(executed.float())[:, None]], 1)
        self.queue_pos[ids] = self.chunk  # a chunk planned before is stale: replan when acting again
        self.ens_valid[ids] = False
        self.t[ids] += 1

    @torch.no_grad()
    def act(
        self,
        obs_or_env_ids: Mapping | Sequence[int],
        rgb=None,
        proprio=None,
        lang_emb=None,
        seeds: Sequence[int] | None = None,
        steps: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Next action for each given env: (B, A) float32 in raw env units; advances those envs one step.

        Either `act(obs)` with an obs dict, or `act(env_ids, rgb, proprio, lang_emb[, seeds, steps])`.
        """
        if isinstance(obs_or_env_ids, Mapping):
            obs = dict(obs_or_env_ids)
        else:
            obs = {"env_ids": torch.as_tensor(list(obs_or_env_ids)), "proprio": proprio, "lang_emb": lang_emb}
            if rgb is not None:
                obs["rgb"] = rgb
        ids, o = self._parse(obs)
        self._record(ids, o)
        noise = self._noise(len(ids), seeds, steps)
        if self.cfg.policy.temporal_ensemble:
            self._check_frames(ids, o)
            chunk = self._predict(self._window(ids, o), noise)
            ens = torch.roll(self.ens[ids], 1, dims=1)
            valid = torch.roll(self.ens_valid[ids], 1, dims=1)
            ens[:, 0], valid[:, 0] = chunk, True
            self.ens[ids], self.ens_valid[ids] = ens, valid
            ages = torch.arange(self.chunk)
            candidates = ens[:, ages, ages]  # (B, C, A): each chunk's prediction for the current step
            w = torch.exp(self.cfg.policy.ensemble_k * ages.float())[None] * valid  # older -> heavier
            action = (candidates * w[..., None]).sum(1) / w.sum(1, keepdim=True)
        else:
            need = (self.queue_pos[ids] >= self.cfg.policy.execution_horizon).nonzero().flatten()
            if len(need):
                sub = {k: v[need] for k, v in o.items()}
                self._check_frames(ids[need], sub)
                chunk = self._predict(self._window(ids[need], sub), None if noise is None else noise[need])
                self.queue[ids[need]] = chunk
                self.queue_pos[ids[need]] = 0
            action = self.queue[ids, self.queue_pos[ids]]
            self.queue_pos[ids] += 1
        self.past_actions[ids] = torch.cat([self.past_actions[ids, 1:], executed_action(action)[:, None]], dim=1)
        self.t[ids] += 1
        return action.numpy().astype(np.float32)


Agent = CladAgent  # the name the eval adapter (clad/eval/agent_adapter.py) imports
