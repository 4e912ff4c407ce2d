"""How good is CLaD's foresight on the states a rollout actually visits?

Stage-1 validation scores the foresight on demonstration windows: cos(z^(t), y(t + tau)), next to the
"nothing moves" baseline cos(y(t), y(t + tau)), where z^ is the dynamics model's prediction and y the EMA
target latent. In closed loop the policy visits its own states and reads its own past actions, so the same
numbers may differ there. `ForesightProbe` is a rollout policy that measures them on any rollout:

    probe = ForesightProbe(clad_policy)                       # CLaD drives (closed loop)
    probe = ForesightProbe(clad_policy, driver=ExpertPolicy())  # the scripted expert drives, CLaD watches
    result = run_spec(env, probe, task, spec)                 # clad.eval.episode, unchanged
    stats = probe.episode_stats(env_id=0)                     # cosines of that episode (see `cosines`)

Every step it renders the cameras, asks the agent for its foresight (`CladAgent.plan`, time does not
advance) and the target latent of the current frame (`CladModel.latent_targets`), then returns the
driver's action; a watching agent is told which action was executed (`CladAgent.advance`), as its past
actions must be. With CLaD driving, the actions are the ones `clad eval` takes for the same episode
(seeded noise; rendering every step changes no action), so successes match its episode log.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from clad.eval.agent_adapter import CladAgentPolicy
from clad.eval.policy import EpisodeContext, RolloutPolicy

__all__ = ["ForesightProbe", "cosines"]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosines(pred: np.ndarray, target: np.ndarray, tau: int) -> dict[str, float]:
    """pred, target (T, H) per step of one episode -> mean cos(pred[t], target[t + tau]) and the still
    baseline mean cos(target[t], target[t + tau]) over t < T - tau (NaN when the episode is shorter).
    Cosines, as stage-1 validation's: the foresight is not unit-norm (it regresses unit targets)."""
    n = len(target) - tau
    if n <= 0:
        return {"cos": float("nan"), "cos_still": float("nan"), "n": 0}
    pred, target = _unit(np.asarray(pred, np.float64)), _unit(np.asarray(target, np.float64))
    later = target[tau:]
    return {"cos": float((pred[:n] * later).sum(-1).mean()), "cos_still": float((target[:n] * later).sum(-1).mean()),
            "n": int(n)}


class ForesightProbe:
    """A rollout policy (clad.eval.policy) that drives with `driver` (default: the CLaD policy itself) and
    records the CLaD agent's foresight and target latents at every step."""

    def __init__(self, clad: CladAgentPolicy, driver: RolloutPolicy | None = None):
        self.clad = clad
        self.driver = driver
        self.agent = clad.agent
        self.tau = int(self.agent.config.dynamics.tau)
        if self.agent.model.dynamics is None:
            raise ValueError("the checkpoint has no stage 1 (policy.foresight='none'): there is no foresight to probe")
        keys = list(clad.obs_keys) + ([] if driver is None else [k for k in driver.obs_keys if k not in clad.obs_keys])
        self.obs_keys = tuple(keys)
        self.needs_env = bool(driver is not None and driver.needs_env)
        self._log: dict[int, dict[str, list[np.ndarray]]] = {}

    def frames_needed(self, env_id: int, step: int) -> bool:
        return True  # the target latent of every step needs its frame

    def reset(self, env_ids: Sequence[int], contexts: Sequence[EpisodeContext]) -> list[str]:
        conditioned = self.clad.reset(env_ids, [c.without_env() for c in contexts])
        if self.driver is not None:
            self.driver.reset(env_ids, contexts)
        for i in env_ids:
            self._log[int(i)] = {"pred_p": [], "pred_s": [], "target_p": [], "target_s": []}
        return conditioned

    @torch.no_grad()
    def act(self, env_ids: Sequence[int], obs: Sequence[dict[str, np.ndarray]], steps: Sequence[int]) -> np.ndarray:
        ids = [int(i) for i in env_ids]
        rgb, proprio = self.clad.adapter.images_and_proprio(obs)
        lang = self.clad.adapter.language([self.clad.instruction(i) for i in ids])
        inputs = {"env_ids": torch.as_tensor(ids), "rgb": torch.as_tensor(rgb), "proprio": torch.as_tensor(proprio),
                  "lang_emb": torch.as_tensor(lang)}
        pred_p, pred_s = self.agent.plan(inputs)
        target_p, target_s = self.agent.model.latent_targets(
            {"rgb_curr": inputs["rgb"], "proprio_curr": inputs["proprio"], "lang_emb": inputs["lang_emb"]})
        for row, i in enumerate(ids):
            log = self._log[i]
            for key, x in (("pred_p", pred_p), ("pred_s", pred_s), ("target_p", target_p), ("target_s", target_s)):
                log[key].append(x[row].float().cpu().numpy())
        if self.driver is None:
            return self.clad.act(env_ids, obs, steps)
        actions = np.asarray(self.driver.act(env_ids, obs, steps), dtype=np.float64)
        self.agent.advance(inputs, torch.as_tensor(actions, dtype=torch.float32))
        return actions

    def episode_stats(self, env_id: int = 0) -> dict[str, float]:
        """Cosines of the episode last run in `env_id`: `cos_p`/`cos_s` (foresight vs the target tau steps
        later), `cos_still_p`/`cos_still_s` (the target now vs tau steps later) and the number of steps `n`."""
        log = self._log[int(env_id)]
        out: dict[str, float] = {}
        for name in ("p", "s"):
            c = cosines(np.stack(log[f"pred_{name}"]), np.stack(log[f"target_{name}"]), self.tau)
            out[f"cos_{name}"], out[f"cos_still_{name}"], out["n"] = c["cos"], c["cos_still"], c["n"]
        return out
