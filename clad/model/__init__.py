"""The CLaD model in plain PyTorch: stage-1 cross-modal latent dynamics, stage-2 foresight-guided diffusion
policy, the rollout agent and safetensors checkpoints. See clad/model/model.py for the training API.

Names are imported lazily so that `from clad.model.config import ModelConfig` stays cheap (no diffusers).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CladModel": "clad.model.model",
    "CladAgent": "clad.model.agent",
    "DynamicsConfig": "clad.model.config",
    "ModelConfig": "clad.model.config",
    "PolicyConfig": "clad.model.config",
    "VisionConfig": "clad.model.config",
    "load_checkpoint": "clad.model.checkpoint",
    "save_checkpoint": "clad.model.checkpoint",
    "model_preset": "clad.model.sizes",
    "parameter_breakdown": "clad.model.sizes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clad.model' has no attribute {name!r}")
