"""Batched policy inference for many env actors: one `PolicyServer` Ray actor holds the model once (on a GPU
when the cluster has one); each env actor talks to it through a `ServerPolicyProxy`. Noise is seeded per
(episode seed, step), so server and in-actor inference give the same actions for the same seeds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Sequence

import numpy as np
import ray

from clad.eval.policy import EpisodeContext, PolicySpec
from clad.eval.registry import make_policy

__all__ = ["PolicyServer", "ServerPolicyProxy"]




# ---------------------------------------------------------------------------------------------- policy server
class PolicyServer:
    """Async Ray actor: collects `act` requests from many env actors and runs them as one batch.

    A batch is flushed when it holds `max_batch` rows or `max_wait_ms` after its first row arrived,
    whichever comes first. The model lives here once; hundreds of CPU env actors can share it.
    """

    def __init__(self, policy_spec: dict, max_batch: int = 64, max_wait_ms: float = 5.0):
        import torch

        spec = PolicySpec.model_validate(policy_spec)
        if spec.device == "cpu" and torch.cuda.is_available():
            spec = spec.replace(device="cuda")
        self.policy = make_policy(spec)
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self._rows: list[tuple[int, dict, int, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.batches: list[int] = []       # sizes of the batches run (for throughput stats)
        self.infer_s = 0.0

    def obs_keys(self) -> tuple[str, ...]:
        return tuple(self.policy.obs_keys)

    async def reset(self, env_ids: list[int], contexts: list[EpisodeContext]) -> list[str] | None:
        # Resets are rare and touch only these envs' history: run them at once, between batches.
        return self.policy.reset(env_ids, contexts)  # the instructions conditioned on, for the episode log

    async def act(self, env_id: int, obs: dict, step: int) -> np.ndarray:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._rows.append((env_id, obs, step, fut))
        if len(self._rows) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait, self._flush)
        return await fut

    async def act_batch(self, env_ids: list[int], obs: list[dict], steps: list[int]) -> np.ndarray:
        """Run one explicit batch at once (the benchmark's throughput-vs-batch-size measurement)."""
        t0 = time.perf_counter()
        out = np.asarray(self.policy.act(env_ids, obs, steps))
        self.infer_s += time.perf_counter() - t0
        self.batches.append(len(env_ids))
        return out

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        rows, self._rows = self._rows[: self.max_batch], self._rows[self.max_batch:]
        if self._rows:  # more than a batch queued up: schedule the rest right away
            self._timer = asyncio.get_running_loop().call_later(0, self._flush)
        if not rows:
            return
        t0 = time.perf_counter()
        try:
            actions = np.asarray(self.policy.act([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]))
        except Exception as err:  # hand the error to every waiting env actor (recorded as policy_error)
            for r in rows:
                if not r[3].done():
                    r[3].set_exception(err)
            return
        finally:
            self.infer_s += time.perf_counter() - t0
        self.batches.append(len(rows))
        for i, r in enumerate(rows):
            if not r[3].done():
                r[3].set_result(actions[i])

    def stats(self) -> dict:
        b = np.asarray(self.batches or [0])
        return {"batches": len(self.batches), "rows": int(b.sum()), "mean_batch": float(b.mean()),
                "max_batch": int(b.max()), "infer_s": self.infer_s}


class ServerPolicyProxy:
    """RolloutPolicy that forwards to a `PolicyServer` (used inside env actors in server mode)."""

    needs_env = False

    def __init__(self, server, obs_keys: tuple[str, ...]):
        self.server = server
        self.obs_keys = obs_keys

    def reset(self, env_ids: Sequence[int], contexts: Sequence[EpisodeContext]) -> list[str] | None:
        return ray.get(self.server.reset.remote(list(env_ids), [c.without_env() for c in contexts]))

    def act(self, env_ids: Sequence[int], obs: Sequence[dict[str, np.ndarray]], steps: Sequence[int]) -> np.ndarray:
        # only the keys the policy reads travel: proprio-only policies send ~100 bytes per step
        refs = [self.server.act.remote(int(i), {k: o[k] for k in self.obs_keys}, int(t))
                for i, o, t in zip(env_ids, obs, steps)]
        return np.stack(ray.get(refs))
