"""Frozen visual backbones for preprocessing-time features: the protocol, a registry, and one built-in kind.

Protocol: a backbone is a callable `(N, H, W, 3) uint8 images (as stored: manifest image_orientation) -> (N, F) float32`
with an integer attribute `feature_dim`. It must be deterministic and must not train. It is built once per
actor of the preprocessing pool; when the cluster has GPUs each actor is given a share of one (Ray sets
CUDA_VISIBLE_DEVICES), so a factory should pick `cuda` when `torch.cuda.is_available()`.

Registering a real backbone (e.g. from clad/model/):

    from clad.data.features import register_backbone
    register_backbone("r3m", lambda cfg: R3MFeatures(cfg.checkpoint_dir, **cfg.options))

`load_backbone` also imports the modules in PLUGIN_MODULES before giving up on an unknown kind, so the
model package can register its backbones at import time without preprocessing importing it eagerly.
"""

from __future__ import annotations

import importlib
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from clad.data.preprocess_config import FeatureBackboneConfig
from clad.errors import ConfigError

PLUGIN_MODULES = ("clad.model.feature_backbones",)


@runtime_checkable
class FeatureBackbone(Protocol):
    feature_dim: int

    def __call__(self, images: np.ndarray) -> np.ndarray:  # (N, H, W, 3) uint8 -> (N, F) float32
        ...


Factory = Callable[[FeatureBackboneConfig], FeatureBackbone]
_REGISTRY: dict[str, Factory] = {}


def register_backbone(kind: str, factory: Factory) -> None:
    _REGISTRY[kind] = factory


def registered_kinds() -> list[str]:
    return sorted(_REGISTRY)


def resolve_factory(kind: str) -> Factory:
    """The factory registered for `kind` (importing PLUGIN_MODULES first if needed); ConfigError if none.
    Cheap: lets the driver reject a typo before starting any Ray work, without building the backbone."""
    if kind not in _REGISTRY:
        for mod in PLUGIN_MODULES:
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as err:
                if err.name is None or not mod.startswith(err.name):
                    raise
    if kind not in _REGISTRY:
        raise ConfigError(f"feature_backbone.kind '{kind}' is unknown; registered kinds: {registered_kinds()} "
                          "(register more with clad.data.features.register_backbone)")
    return _REGISTRY[kind]


def load_backbone(cfg: FeatureBackboneConfig) -> FeatureBackbone:
    """Build the backbone named by `cfg.kind` (once per actor in the preprocessing pool)."""
    return resolve_factory(cfg.kind)(cfg)


class RandomConvBackbone:
    """A tiny CNN with seeded random weights: deterministic stand-in for tests and a template for real ones.

    uint8 HWC -> float in [0, 1] CHW -> conv 5x5/2 (16) -> ReLU -> conv 3x3/2 (32) -> ReLU -> global mean
    -> linear (feature_dim). Options: feature_dim (default 32), seed (default 0).
    """

    def __init__(self, feature_dim: int = 32, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(int(seed))
        self.feature_dim = int(feature_dim)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 5, stride=2, padding=2), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, self.feature_dim),
        ).eval()
        with torch.no_grad():
            for p in self.net.parameters():  # init from our generator, not the global RNG
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(1, p[0].numel()) ** 0.5))
        for p in self.net.parameters():
            p.requires_grad_(False)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected (N, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
        with torch.inference_mode():
            # copy: stored images arrive as read-only views of Arrow buffers, which torch refuses to wrap
            x = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2).float().div_(255.0)
            return self.net(x).numpy().astype(np.float32, copy=False)


def _random_conv(cfg: FeatureBackboneConfig) -> RandomConvBackbone:
    unknown = set(cfg.options) - {"feature_dim", "seed"}
    if unknown:
        raise ConfigError(f"feature_backbone.options {sorted(unknown)} are not used by kind 'random_conv' "
                          "(it takes feature_dim, seed)")
    return RandomConvBackbone(**cfg.options)


register_backbone("random_conv", _random_conv)


def compute_features(backbone: FeatureBackbone, images: np.ndarray, batch_size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, F) float32, in chunks of `batch_size` frames."""
    out = [backbone(images[s:s + batch_size]) for s in range(0, images.shape[0], batch_size)]
    feats = np.concatenate(out, axis=0).astype(np.float32, copy=False)
    if feats.shape != (images.shape[0], backbone.feature_dim):
        raise ValueError(f"backbone returned {feats.shape}, expected ({images.shape[0]}, {backbone.feature_dim})")
    return feats
