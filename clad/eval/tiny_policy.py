"""A tiny but real torch policy: an MLP on proprio (and optionally pooled camera pixels) plus seeded noise.

Used by the tests and the benchmark: it exercises torch inference, batching in the policy server and
per-(episode, step) noise, at negligible compute. It does not solve tasks.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from clad.data.libero_layout import CAMERA_TO_OBS_KEY
from clad.eval.policy import EpisodeContext, noise_seed

__all__ = ["TinyTorchPolicy"]

_PROPRIO = ("joint_states", "gripper_states")  # (7,) + (2,)


class TinyTorchPolicy:
    """MLP([proprio (9,), mean RGB per view (3V,)]) -> tanh -> (7,) scaled by 0.3, plus N(0, noise^2).

    The layers are evaluated as broadcast multiply + sum over the input dim rather than a GEMM: BLAS
    kernels block differently for different batch sizes, which changes the last bits of a row's result
    (measured: 2e-16), while a per-row reduction does not. So a row's action is bit-identical whatever
    batch it is computed in, and in-actor and policy-server rollouts agree exactly.
    """

    needs_env = False

    def __init__(self, hidden: int = 64, seed: int = 0, noise: float = 0.1, cameras: Sequence[str] = (),
                 device: str = "cpu"):
        self.cameras = tuple(cameras)
        self.obs_keys = _PROPRIO + tuple(CAMERA_TO_OBS_KEY[c] for c in self.cameras)
        self.noise = float(noise)
        self.device = torch.device(device)
        g = torch.Generator().manual_seed(int(seed))
        d_in = 9 + 3 * len(self.cameras)
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, 7)).double()
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
        self.net.to(self.device).eval()
        self._seeds: dict[int, int] = {}

    def reset(self, env_ids: Sequence[int], contexts: Sequence[EpisodeContext]) -> None:
        for i, ctx in zip(env_ids, contexts):
            self._seeds[int(i)] = int(ctx.seed)

    def _features(self, obs: Sequence[dict[str, np.ndarray]]) -> torch.Tensor:
        rows = []
        for o in obs:
            parts = [np.asarray(o[k], dtype=np.float64).reshape(-1) for k in _PROPRIO]
            for c in self.cameras:
                img = np.asarray(o[CAMERA_TO_OBS_KEY[c]])
                parts.append(img.reshape(-1, 3).mean(0) / 255.0)
            rows.append(np.concatenate(parts))
        return torch.as_tensor(np.stack(rows), dtype=torch.float64, device=self.device)

    @torch.inference_mode()
    def act(self, env_ids: Sequence[int], obs: Sequence[dict[str, np.ndarray]], steps: Sequence[int]) -> np.ndarray:
        x = self._features(obs)
        l1, l2 = self.net[0], self.net[2]
        h = torch.tanh((x[:, None, :] * l1.weight[None]).sum(-1) + l1.bias)      # (B, hidden)
        a = torch.tanh((h[:, None, :] * l2.weight[None]).sum(-1) + l2.bias) * 0.3  # (B, 7)
        a = a.cpu().numpy()
        for r, (i, t) in enumerate(zip(env_ids, steps)):
            rng = np.random.default_rng(noise_seed(self._seeds.get(int(i), 0), int(t)))
            a[r] += self.noise * rng.standard_normal(7)
        return np.clip(a, -1.0, 1.0)
