"""The trainable per-view CNN (diffusion_policy style): GroupNorm conv stages pooled by a spatial softmax."""

from __future__ import annotations

import torch
from torch import nn


class SpatialSoftmax(nn.Module):
    """(N, C, h, w) -> (N, 2K): K learned keypoint maps, each reduced to its expected (x, y) in [-1, 1]."""

    def __init__(self, channels: int, keypoints: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        attn = self.proj(x).flatten(2).softmax(-1)  # (N, K, h*w)
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=attn.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=attn.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)  # (h*w, 2)
        return (attn @ grid).reshape(n, -1)


class SmallCNN(nn.Module):
    """One view: (N, 3, S, S) in [-1, 1] -> (N, F). Stride-2 conv + GroupNorm + Mish stages, spatial softmax."""

    def __init__(self, channels: tuple[int, ...], groups: int, keypoints: int, out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            g = groups if c % groups == 0 else 1
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1),
                nn.GroupNorm(g, c),
                nn.Mish(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.GroupNorm(g, c),
                nn.Mish(),
            ]
            c_in = c
        self.trunk = nn.Sequential(*layers)
        self.pool = SpatialSoftmax(c_in, keypoints)
        self.out = nn.Sequential(nn.Linear(2 * keypoints, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.pool(self.trunk(x)))
