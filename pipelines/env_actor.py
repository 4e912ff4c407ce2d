"""The Ray actor that runs LIBERO episodes: one simulator (and its GL context) per actor process.

`EnvActor` wraps `clad.eval.worker.EpisodeWorker`: the simulator is created inside the actor, lazily, and
soft-reset between episodes of the same task. Its policy runs in the actor, or is a `ServerPolicyProxy` to
a shared `PolicyServer`. `RolloutPool` (pipelines.rollout_pool) schedules episodes on these actors.
"""

from __future__ import annotations

import atexit
import json
import os
from collections import OrderedDict
from typing import Sequence

import ray

from clad.eval.policy import PolicySpec
from clad.eval.protocol import EpisodeSpec
from clad.eval.registry import make_policy
from clad.eval.results import EpisodeResult
from pipelines.policy_server import ServerPolicyProxy

__all__ = ["EnvActor"]

POLICY_CACHE = 3  # policies an env actor keeps loaded (shared pool: trials alternate on one actor)


def _pin_gpu_for_rendering() -> None:
    # One EGL device per actor: without this every actor on a multi-GPU node renders on GPU 0.
    try:
        gpus = ray.get_gpu_ids()
    except Exception:
        gpus = []
    if gpus:
        os.environ["MUJOCO_EGL_DEVICE_ID"] = str(int(float(gpus[0])))


class EnvActor:
    """One LIBERO simulator + a policy (or a proxy to the policy server). Used as a Ray actor class."""

    def __init__(self, suite: str, policy_spec: dict, camera_size: int, slot: int, name: str,
                 video_size: int = 128, server=None, server_obs_keys: Sequence[str] | None = None):
        _pin_gpu_for_rendering()
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # N actors x M torch threads would oversubscribe cores
        import torch

        torch.set_num_threads(1)
        from clad.eval.worker import EpisodeWorker
        from clad.libero.runtime import ensure_libero

        ensure_libero()  # before anything imports mujoco: it picks the GL backend at import
        if server is not None:
            policy = ServerPolicyProxy(server, tuple(server_obs_keys or ()))
        else:
            policy = make_policy(PolicySpec.model_validate(policy_spec))
        self.worker = EpisodeWorker(suite, policy, camera_size=camera_size, env_id=slot, name=name,
                                    video_size=video_size)
        self._close_at_exit = False
        self._policy_key = json.dumps(policy_spec, sort_keys=True)
        self._policies: OrderedDict = OrderedDict({self._policy_key: self.worker.policy})

    def ready(self) -> dict:
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    def run(self, spec: EpisodeSpec) -> EpisodeResult:
        result = self.worker.run(spec)
        if not self._close_at_exit and self.worker.env is not None:
            # The actor's own shutdown path (it ends without `close()`, e.g. its last handle is dropped):
            # robosuite registers `eglTerminate` at exit when it creates the first GL context, inside the
            # first episode. atexit runs last-registered first, so registering now closes the sim before it.
            atexit.register(self.close)
            self._close_at_exit = True
        return result

    def run_with(self, policy_spec: dict, spec: EpisodeSpec) -> EpisodeResult:
        """Run `spec` with the policy of `policy_spec` (the shared env pool of `clad tune`: one actor serves
        every trial's checkpoints). The last POLICY_CACHE policies stay loaded, as trials alternate."""
        from clad.eval.worker import policy_cameras

        key = json.dumps(policy_spec, sort_keys=True)
        if key != self._policy_key:
            policy = self._policies.pop(key, None) or make_policy(PolicySpec.model_validate(policy_spec))
            self._policies[key] = policy
            while len(self._policies) > POLICY_CACHE:
                self._policies.popitem(last=False)
            cameras = policy_cameras(policy)
            if cameras != self.worker.cameras:  # the scene must render what this policy reads
                self.worker.close_env()
                self.worker.cameras = cameras
            self.worker.policy = policy
            self._policy_key = key
        else:
            self._policies.move_to_end(key)
        return self.run(spec)

    def stats(self) -> dict:
        return self.worker.stats()

    def close(self) -> None:
        """Close the simulator and its GL context now, while the process is whole: left to interpreter
        teardown, the EGL context fails in its destructor and prints a long traceback. Idempotent."""
        self.worker.close_env()

