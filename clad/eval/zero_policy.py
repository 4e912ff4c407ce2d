"""The no-motion baseline policy."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from clad.eval.policy import EpisodeContext


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
