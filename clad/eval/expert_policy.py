"""The scripted pick-and-place expert (clad/libero/expert.py) as a rollout policy.

It reads privileged object poses from the simulator, so it runs in the env's process (`needs_env`).
It is a real policy with a non-trivial success rate on pick-and-place tasks (e.g. most of libero_object),
which makes it the reference for tests and pool measurements.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from clad.errors import CladError
from clad.eval.policy import EpisodeContext

__all__ = ["ExpertPolicy"]

_REST = np.array([0, 0, 0, 0, 0, 0, -1.0])


class ExpertPolicy:
    obs_keys: tuple[str, ...] = ()
    needs_env = True

    def __init__(self) -> None:
        self._experts: dict[int, object] = {}

    def reset(self, env_ids: Sequence[int], contexts: Sequence[EpisodeContext]) -> None:
        from clad.libero.expert import PickPlaceExpert

        for i, ctx in zip(env_ids, contexts):
            if ctx.env is None:
                raise CladError("the scripted expert reads the simulator state, so it must run inside the env "
                                "actor: use --policy-mode in_actor with the expert policy")
            self._experts[int(i)] = PickPlaceExpert(ctx.env)

    def act(self, env_ids: Sequence[int], obs: Sequence[dict[str, np.ndarray]], steps: Sequence[int]) -> np.ndarray:
        out = []
        for i in env_ids:
            ex = self._experts[int(i)]
            out.append(_REST if ex.done or ex.failed else ex.act())
        return np.stack(out).astype(np.float64)
