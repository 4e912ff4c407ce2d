"""1-D conditional U-Net over an action chunk (after diffusion_policy's ConditionalUnet1D, Chi et al. 2023).

    ConditionalUnet1D(input_dim=A, cond_dim=G)(sample (B, T, A), timestep (B,), cond (B, G)) -> (B, T, A)

Every residual block is FiLM-conditioned on [diffusion-step embedding ; global condition]; GroupNorm + Mish.
The chunk is padded (edge-replicated) to a multiple of 2^(levels-1) so any chunk length works (the paper's 6).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class SinusoidalPosEmb(nn.Module):
    """(B,) diffusion step -> (B, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        emb = t.float()[:, None] * freq[None]
        return torch.cat([emb.sin(), emb.cos()], dim=-1)


def _groups(channels: int, n_groups: int) -> int:
    return n_groups if channels % n_groups == 0 else 1


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish. (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(_groups(c_out, n_groups), c_out),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks; the condition predicts a per-channel scale and bias applied after the first (FiLM)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            [Conv1dBlock(c_in, c_out, kernel_size, n_groups), Conv1dBlock(c_out, c_out, kernel_size, n_groups)]
        )
        self.out_channels = c_out
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.residual_conv = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, T), cond (B, G) -> (B, C_out, T)."""
        out = self.blocks[0](x)
        scale, bias = rearrange(self.cond_encoder(cond), "b (two c) -> two b c 1", two=2)
        out = self.blocks[1](scale * out + bias)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    def __init__(
        self,
        input_dim: int,
        cond_dim: int,
        down_dims: tuple[int, ...] = (256, 512, 1024),
        step_embed_dim: int = 256,
        kernel_size: int = 5,
        n_groups: int = 8,
    ):
        super().__init__()
        self.step_encoder = nn.Sequential(
            SinusoidalPosEmb(step_embed_dim),
            nn.Linear(step_embed_dim, step_embed_dim * 4),
            nn.Mish(),
            nn.Linear(step_embed_dim * 4, step_embed_dim),
        )
        g = step_embed_dim + cond_dim
        dims = [input_dim, *down_dims]
        pairs = list(zip(dims[:-1], dims[1:]))
        block = lambda a, b: ConditionalResidualBlock1D(a, b, g, kernel_size, n_groups)  # noqa: E731

        mid = down_dims[-1]
        self.mid_modules = nn.ModuleList([block(mid, mid), block(mid, mid)])
        self.down_modules = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(pairs):
            last = i == len(pairs) - 1
            down = nn.Conv1d(c_out, c_out, 3, stride=2, padding=1) if not last else nn.Identity()
            self.down_modules.append(nn.ModuleList([block(c_in, c_out), block(c_out, c_out), down]))
        self.up_modules = nn.ModuleList()
        for c_in, c_out in reversed(pairs[1:]):
            up = nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1)
            self.up_modules.append(nn.ModuleList([block(c_out * 2, c_in), block(c_in, c_in), up]))
        self.final_conv = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups), nn.Conv1d(down_dims[0], input_dim, 1)
        )
        # diffusion_policy downsamples at every level but the last and upsamples at every up level (the
        # finest skip is unused, as there)
        self.pad_multiple = 2 ** max(len(down_dims) - 1, 0)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """sample (B, T, A), timestep (B,) or scalar, cond (B, G) -> (B, T, A)."""
        b, t, _ = sample.shape
        if not torch.is_tensor(timestep) or timestep.ndim == 0:
            timestep = torch.as_tensor(timestep, device=sample.device).reshape(1)
        timestep = timestep.to(sample.device).expand(b)
        g = torch.cat([self.step_encoder(timestep).to(cond.dtype), cond], dim=-1)

        x = rearrange(sample, "b t a -> b a t")
        pad = (-t) % self.pad_multiple
        if pad:
            x = F.pad(x, (0, pad), mode="replicate")
        skips = []
        for res1, res2, down in self.down_modules:
            x = res2(res1(x, g), g)
            skips.append(x)
            x = down(x)
        for m in self.mid_modules:
            x = m(x, g)
        for res1, res2, up in self.up_modules:
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(res2(res1(x, g), g))
        x = self.final_conv(x)[..., :t]
        return rearrange(x, "b a t -> b t a")
