"""A frozen visual encoder for feature caching: camera views -> per-view features, and its identity.

    spec = EncoderSpec(source="stage1", checkpoint="outputs/train/stage1/final")      # the stage-1 CNN
    spec = EncoderSpec(source="pretrained", backbone="decisionnce_rn50", checkpoint="weights/decisionnce")
    enc = FrozenEncoder.build(spec)
    enc.identity          # what a feature set is keyed by (weights hash, crop/resize settings, views, F)
    enc(rgb)              # (N, V, 3, H, W) uint8 as stored -> (N, V, F) float32

The encoder *is* a `VisionEncoder` in eval mode, the very module a model runs on live frames, so cached
features and the features an agent computes in the simulator come from one code path. A cached feature is
of one fixed view of each frame: the trainable CNN's eval-mode centre crop (`vision.crop_ratio`), or a
pretrained backbone's plain resize. The crop ratio is part of the identity; random-crop augmentation is
impossible on cached features.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import torch

from clad.config import FrozenConfig
from clad.errors import CheckpointError, ConfigError
from clad.model.config import Backbone, Camera, VisionConfig
from clad.model.vision import VisionEncoder

FEATURE_DTYPE = "float16"  # what feature sets store (half the bytes; the model computes in float32)


class EncoderSpec(FrozenConfig):
    """Which frozen encoder to run. `source='stage1'`: the vision part of a trained stage-1 (or stage-2)
    checkpoint directory; `source='pretrained'`: a frozen backbone from a `model.safetensors` + `config.json`
    directory. `cameras`/`rotate180`/`open_clip_model` apply to pretrained backbones only (a checkpoint
    carries its own)."""

    source: Literal["stage1", "pretrained"]
    checkpoint: str
    backbone: Backbone | None = None
    cameras: tuple[Camera, ...] = ("agentview",)
    rotate180: bool = True
    open_clip_model: str = "RN50"


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes and bytes of every parameter and buffer)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d: BN counters
    return h.hexdigest()


def vision_identity(vision: VisionEncoder) -> dict[str, Any]:
    """Everything that decides a cached feature's value. Two encoders with equal identities give equal features."""
    cfg = vision.cfg
    return {
        "backbone": cfg.backbone,
        "cameras": list(cfg.cameras),
        "input_size": int(vision.image_size),
        # eval-mode crop: a centre crop keeping this fraction of each side (pretrained backbones: none)
        "centre_crop": float(cfg.crop_ratio) if cfg.trainable else 1.0,
        "rotate180": bool(cfg.rotate180),
        "feature_dim": int(cfg.feature_dim),
        "weights_sha256": weights_digest(vision),
        "dtype": FEATURE_DTYPE,
    }


def identity_id(identity: dict[str, Any]) -> str:
    """A short stable key for an identity (the feature set's folder name)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class FrozenEncoder:
    """A VisionEncoder in eval mode without gradients: (N, V, 3, H, W) uint8 -> (N, V, F) float32."""

    def __init__(self, vision: VisionEncoder, device: torch.device | str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.vision = vision.to(self.device).eval().requires_grad_(False)
        self.cfg = vision.cfg
        self.identity = vision_identity(self.vision)
        self.id = identity_id(self.identity)

    @classmethod
    def build(cls, spec: EncoderSpec, device: torch.device | str | None = None) -> "FrozenEncoder":
        return cls(build_vision(spec), device)

    @property
    def views(self) -> tuple[str, ...]:
        return tuple(self.cfg.cameras)

    @property
    def feature_dim(self) -> int:
        return int(self.cfg.feature_dim)

    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            n, v = rgb.shape[:2]
            feats = self.vision(rgb.to(self.device))
            return feats.float().reshape(n, v, -1).cpu()


def build_vision(spec: EncoderSpec) -> VisionEncoder:
    """The VisionEncoder named by `spec`, weights loaded."""
    if spec.source == "stage1":
        from clad import storage
        from clad.model.checkpoint import load_checkpoint

        loc = str(spec.checkpoint)  # a path or a URI (read from this node's cached copy)
        if not storage.is_file(storage.join(loc, "model.safetensors")) \
                and storage.is_file(storage.join(loc, "final", "model.safetensors")):
            loc = storage.join(loc, "final")  # a run directory
        path = storage.local_copy(loc) if storage.is_file(storage.join(loc, "model.safetensors")) else Path(loc)
        model = load_checkpoint(path)
        if model.vision is None:
            raise CheckpointError(f"{path}: the checkpoint's vision.backbone='{model.cfg.vision.backbone}' has no "
                                  "weights (features-only mode), so there is no encoder to run")
        if model.dynamics is None and model.cfg.vision.trainable:
            raise ConfigError(f"{path} is a policy-only checkpoint whose CNN was trained in stage 2; extract features "
                              "with the stage-1 checkpoint the CLaD runs read")
        return model.vision
    if spec.backbone is None or spec.backbone == "cnn":
        raise ConfigError("an encoder with source='pretrained' needs backbone= one of decisionnce_rn50, hf_clip, "
                          "open_clip (a trainable CNN comes from a stage-1 checkpoint: source='stage1')")
    cfg = VisionConfig(backbone=spec.backbone, checkpoint_dir=spec.checkpoint, cameras=spec.cameras,
                       rotate180=spec.rotate180, open_clip_model=spec.open_clip_model,
                       feature_dim=_pretrained_dim(spec))
    return VisionEncoder(cfg)


def _pretrained_dim(spec: EncoderSpec) -> int:
    """The backbone's output width, read from the checkpoint directory (VisionEncoder checks it again)."""
    from clad.model.pretrained import load_pretrained

    return int(load_pretrained(spec.backbone, spec.checkpoint, spec.open_clip_model).output_dim)
