"""The model's frozen backbones as preprocessing-time feature extractors (clad/data/features.py protocol).

Imported by clad.data.features when a `feature_backbone.kind` is unknown; registers

    decisionnce_rn50   CLIP ModifiedResNet (DecisionNCE image tower)     options: rotate180
    hf_clip            transformers CLIPVisionModelWithProjection         options: rotate180
    open_clip          open_clip image tower                              options: rotate180, model (e.g. "RN50")

Each computes exactly what the model computes online for vision.backbone=<kind> (same resize, rotation and
CLIP normalisation, `clip_inputs`), so precomputed `feat_*` keys and rollouts agree. Keep `rotate180`
equal to the model's `vision.rotate180` (both default to True).
"""

from __future__ import annotations

import numpy as np
import torch

from clad.data.features import register_backbone
from clad.data.preprocess_config import FeatureBackboneConfig
from clad.errors import ConfigError
from clad.model.image_ops import clip_inputs
from clad.model.pretrained import load_pretrained


class PretrainedFeatures:
    """(N, H, W, 3) uint8 as stored -> (N, F) float32 with a frozen pretrained image tower."""

    def __init__(self, kind: str, checkpoint_dir: str | None, rotate180: bool = True, model: str = "RN50"):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.net = load_pretrained(kind, checkpoint_dir, model).to(self.device)
        self.feature_dim = int(self.net.output_dim)
        self.image_size = int(self.net.image_size)
        self.rotate180 = bool(rotate180)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected (N, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
        with torch.inference_mode():
            # copy: stored images may be read-only views of Arrow buffers
            x = torch.from_numpy(np.array(images, copy=True)).to(self.device).permute(0, 3, 1, 2)
            return self.net(clip_inputs(x, self.image_size, self.rotate180)).float().cpu().numpy()


def _factory(kind: str, allowed: set[str]):
    def build(cfg: FeatureBackboneConfig) -> PretrainedFeatures:
        unknown = set(cfg.options) - allowed
        if unknown:
            raise ConfigError(
                f"feature_backbone.options {sorted(unknown)} are not used by kind '{kind}' (it takes {sorted(allowed)})"
            )
        return PretrainedFeatures(kind, cfg.checkpoint_dir, **cfg.options)

    return build


register_backbone("decisionnce_rn50", _factory("decisionnce_rn50", {"rotate180"}))
register_backbone("hf_clip", _factory("hf_clip", {"rotate180"}))
register_backbone("open_clip", _factory("open_clip", {"rotate180", "model"}))
