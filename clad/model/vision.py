"""Visual backbones: uint8 camera views -> one feature vector per view, concatenated into v_t.

    VisionEncoder(cfg).forward(rgb)   rgb (B, V, 3, H, W) uint8 -> (B, V * F) float

Backbones (`VisionConfig.backbone`):
  cnn               trainable small CNN per view (clad.model.small_cnn)
  decisionnce_rn50  frozen CLIP ModifiedResNet (DecisionNCE's image tower; clad.model.clip_rn50)
  hf_clip, open_clip  frozen towers loaded by clad.model.pretrained
Image preprocessing (resize, rotation, crops, CLIP normalisation) lives in clad.model.image_ops.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from clad.errors import ConfigError
from clad.model.config import VisionConfig
from clad.model.image_ops import clip_inputs, crop, crop_offsets, to_float_images
from clad.model.pretrained import load_pretrained
from clad.model.small_cnn import SmallCNN


class VisionEncoder(nn.Module):
    """Camera views -> v_t. rgb (B, V, 3, H, W) uint8 -> (B, V * F).

    The trainable CNN has one network per view (views differ a lot: wrist vs third person). A pretrained
    backbone is shared across views, kept in eval mode and run without gradients.
    """

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.trainable = cfg.trainable
        if cfg.trainable:
            self.nets = nn.ModuleList(
                SmallCNN(cfg.cnn_channels, cfg.cnn_groups, cfg.cnn_keypoints, cfg.feature_dim) for _ in cfg.cameras
            )
            self.image_size = cfg.image_size
            self.register_buffer("mean", torch.full((3,), 0.5).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.full((3,), 0.5).view(1, 3, 1, 1), persistent=False)
            return
        self.backbone = load_pretrained(cfg.backbone, cfg.checkpoint_dir, cfg.open_clip_model)
        if self.backbone.output_dim != cfg.feature_dim:
            raise ConfigError(
                f"vision.feature_dim={cfg.feature_dim} but the {cfg.backbone} checkpoint in {cfg.checkpoint_dir} "
                f"outputs {self.backbone.output_dim}-d features: set vision.feature_dim={self.backbone.output_dim}"
            )
        self.image_size = self.backbone.image_size

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable:
            self.backbone.eval()  # frozen: BatchNorm statistics and dropout never change
        return self

    def preprocess(self, rgb: torch.Tensor, share: int = 1, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 3, H, W) uint8 -> (N, 3, S, S) normalised float."""
        if not self.trainable:
            return clip_inputs(rgb, self.image_size, self.cfg.rotate180)
        x = to_float_images(rgb, self.image_size, self.cfg.rotate180)
        x = crop(x, self.cfg.crop_ratio, random=self.training, share=share, offsets=offsets)
        return (x - self.mean) / self.std

    def draw_offsets(self, batch: int, random: bool, device=None) -> torch.Tensor | None:
        """Crop offsets (batch, V, 2) for `forward(offsets=...)`: random or centre; None when nothing is cropped
        (crop_ratio 1, or a frozen pretrained backbone, which never crops)."""
        if not self.trainable or self.cfg.crop_ratio >= 1.0:
            return None
        o = crop_offsets(batch * self.cfg.num_views, self.image_size, self.cfg.crop_ratio, random, device)
        return o.view(batch, self.cfg.num_views, 2)

    def forward(self, rgb: torch.Tensor, share: int = 1, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """rgb (B, V, 3, H, W) uint8 -> (B, V * F). `share`: rgb stacks `share` frames of B // share samples
        along B; they get the same random crop. `offsets` (B // share, V, 2) from `draw_offsets` fixes the
        crops (whatever the train/eval mode), so that other networks can be given the same ones."""
        b, v = rgb.shape[:2]
        if v != self.cfg.num_views:
            raise ValueError(f"got {v} camera views, vision.cameras lists {self.cfg.num_views}")
        if self.trainable:
            feats = [net(self.preprocess(rgb[:, i], share, None if offsets is None else offsets[:, i]))
                     for i, net in enumerate(self.nets)]
            return torch.cat(feats, dim=-1)
        with torch.no_grad():
            x = self.preprocess(rgb.flatten(0, 1))
            feats = self.backbone(x).float()
        return rearrange(feats, "(b v) f -> b (v f)", b=b)
