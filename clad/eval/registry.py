"""Builds the policy a `PolicySpec` names, in this process.

The registry is the one module that knows every implementation; implementations import only the protocol
(clad.eval.policy), so dependencies run one way. Imports are lazy: an env actor running the scripted expert
never imports torch models, and a policy server never imports the simulator.
"""

from __future__ import annotations

from clad.errors import ConfigError
from clad.eval.policy import PolicySpec, RolloutPolicy

__all__ = ["make_policy"]


def make_policy(spec: PolicySpec) -> RolloutPolicy:
    """Build the policy described by `spec` in this process (heavy imports happen here, lazily)."""
    if spec.kind == "zero":
        from clad.eval.zero_policy import ZeroPolicy

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
