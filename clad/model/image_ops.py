"""Image preprocessing shared by the vision backbones, the reconstruction target and feature extraction.

All take stored uint8 camera frames (N, 3, H, W) (or (B, V, 3, H, W) for `downsample_images`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_float_images(rgb: torch.Tensor, size: int, rotate180: bool) -> torch.Tensor:
    """rgb (N, 3, H, W) uint8 -> (N, 3, size, size) float in [0, 1] (bilinear resize, antialiased)."""
    x = rgb.float() / 255.0
    if rotate180:
        x = torch.flip(x, dims=(-2, -1))
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def crop(x: torch.Tensor, ratio: float, random: bool, share: int = 1, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C, S, S) -> (N, C, s, s) with s = round(S * ratio): a random crop per image, or the centre crop.

    With `share` > 1, x is `share` stacked groups of N // share images that get the same offsets (the frames
    of one sample must be cropped alike, or the crop itself looks like motion). `offsets` (N // share, 2)
    (row, col) fixes the crops instead (`crop_offsets`), so that several networks can see the same crop."""
    if ratio >= 1.0:
        return x
    n, _, size, _ = x.shape
    s = max(1, round(size * ratio))
    if offsets is None and not random:
        o = (size - s) // 2
        return x[..., o : o + s, o : o + s]
    if offsets is None:
        offsets = crop_offsets(n // share, size, ratio, random=True, device=x.device)
    if offsets.shape != (n // share, 2):
        raise ValueError(f"crop offsets have shape {tuple(offsets.shape)}, expected ({n // share}, 2)")
    oy, ox = offsets.to(x.device).long().repeat(share, 1).unbind(-1)
    ar = torch.arange(s, device=x.device)
    rows = (oy[:, None] + ar)[:, None, :, None]  # (N, 1, s, 1)
    cols = (ox[:, None] + ar)[:, None, None, :]  # (N, 1, 1, s)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return x[idx_n, idx_c, rows, cols]


def crop_offsets(n: int, size: int, ratio: float, random: bool, device=None) -> torch.Tensor:
    """(n, 2) crop offsets (row, col) for `crop` of (size x size) images: uniform, or all at the centre."""
    s = max(1, round(size * ratio))
    if not random:
        return torch.full((n, 2), (size - s) // 2, dtype=torch.long, device=device)
    return torch.randint(0, size - s + 1, (n, 2), device=device)


def downsample_images(rgb: torch.Tensor, size: int) -> torch.Tensor:
    """Fixed reconstruction target: rgb (B, V, 3, H, W) uint8 -> (B, V * 3 * size * size) in [-1, 1]."""
    b = rgb.shape[0]
    x = rgb.flatten(0, 1).float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="area")
    return rearrange(x * 2 - 1, "(b v) c h w -> b (v c h w)", b=b)


def clip_inputs(rgb: torch.Tensor, size: int, rotate180: bool) -> torch.Tensor:
    """(N, 3, H, W) uint8 as stored -> (N, 3, size, size) CLIP-normalised. The one preprocessing of frozen
    backbones, shared by the model and by preprocessing-time feature extraction."""
    x = to_float_images(rgb, size, rotate180)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
