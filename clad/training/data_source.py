"""Where a training run's windows come from: images or cached features, held in memory or streamed.

Decided on the driver, before any worker starts, so a bad combination fails with a clear message:

    check_feature_set(cfg)   -> the feature set's manifest, or None; FeatureSetError / ConfigError when the
                                feature set was made by another encoder or for another dataset, or when the
                                model would train the encoder the features were cached from
    resolve_source(cfg, F)   -> "memory" | "stream" (loader.source, "auto" by memory_budget_gb)
"""

from __future__ import annotations

from typing import Any

from clad.data import feature_set as fs
from clad.errors import ConfigError
from clad.training.config import TrainConfig


def feature_training_error(cfg: TrainConfig) -> str | None:
    """Why this config cannot train from cached features (the encoder would be trained), or None."""
    m = cfg.model
    if cfg.stage == "stage2" and m.policy.augment != "none":
        return (f"policy.augment={m.policy.augment!r} crops the images at random, and cached features are of the "
                "centre crop (set policy.augment=none for every variant, or train from images)")
    if not m.vision.trainable:
        return None
    if cfg.stage == "stage1":
        return "stage 1 trains the CNN (vision.backbone='cnn'); cached features need a frozen encoder"
    if m.policy.obs_vision == "own":
        return "policy.obs_vision='own' trains a copy of the CNN in stage 2"
    if not m.has_dynamics and cfg.stage1_checkpoint is None:
        return "policy.foresight='none' trains its own CNN in stage 2 (no frozen stage-1 encoder)"
    return None


def model_encoder_spec(cfg: TrainConfig):
    """The EncoderSpec of the frozen encoder this run's model runs on live frames (None: not knowable,
    a frozen backbone in features-only mode)."""
    from clad.model.frozen_encoder import EncoderSpec

    v = cfg.model.vision
    if v.trainable:
        return EncoderSpec(source="stage1", checkpoint=str(cfg.stage1_checkpoint))
    if v.checkpoint_dir is None:
        return None
    return EncoderSpec(source="pretrained", backbone=v.backbone, checkpoint=v.checkpoint_dir, cameras=v.cameras,
                       rotate180=v.rotate180, open_clip_model=v.open_clip_model)


def check_feature_set(cfg: TrainConfig) -> dict[str, Any] | None:
    """The manifest of `loader.feature_set` after checking it fits this dataset and this model's encoder."""
    root = cfg.loader.feature_set
    if root is None:
        return None
    why = feature_training_error(cfg)
    if why:
        raise ConfigError(f"loader.feature_set={root}: {why}; train from images (unset loader.feature_set)")
    spec = model_encoder_spec(cfg)
    v = cfg.model.vision
    if spec is None:  # features-only mode: no weights to hash; the backbone's settings must still agree
        meta = fs.open_for_reading(root, cfg.dataset_dir, views=tuple(v.cameras))
        enc = meta["encoder"]
        want = {"backbone": v.backbone, "feature_dim": v.feature_dim, "rotate180": v.rotate180}
        diff = [f"{k}: feature set {enc.get(k)!r} vs model {w!r}" for k, w in want.items() if enc.get(k) != w]
        if diff:
            raise fs.FeatureSetError(f"feature set {root} was made by another encoder: {'; '.join(diff)}")
        return meta
    from clad.model.frozen_encoder import FrozenEncoder

    encoder = FrozenEncoder.build(spec, device="cpu")
    return fs.open_for_reading(root, cfg.dataset_dir, encoder_id=encoder.id, identity=encoder.identity,
                               views=tuple(v.cameras))


def resolve_source(cfg: TrainConfig, split: str, spec, feature_dim: int | None) -> str:
    """"memory" or "stream" for `split`: loader.source, or for "auto" whether one worker's share fits the budget."""
    src = cfg.loader.source
    if src != "auto":
        return src
    from clad.data.memory_windows import estimate_bytes

    need = estimate_bytes(cfg.dataset_dir, split, spec, feature_dim)  # every worker holds the whole split
    return "memory" if need <= cfg.loader.memory_budget_gb * 1024**3 else "stream"
