"""Tokenisers: a state vector -> N tokens (f_p, f_s), an action chunk -> tau tokens with positions (f_a)."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from clad.model.attention import mlp


class StateTokenizer(nn.Module):
    """f_p / f_s: an MLP maps a state vector to N tokens, plus a learned per-token embedding.

    (B, D_in) -> (B, N, H). The paper calls the N tokens "learnable tokens"; we read them as N slots of one
    MLP output, each with its own learned embedding so that the slots are distinguishable.
    """

    def __init__(self, in_dim: int, num_tokens: int, hidden_dim: int, layers: int = 2):
        super().__init__()
        self.num_tokens = num_tokens
        self.net = mlp(in_dim, hidden_dim, num_tokens * hidden_dim, layers)
        self.token_emb = nn.Parameter(torch.randn(num_tokens, hidden_dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = rearrange(self.net(x), "b (n h) -> b n h", n=self.num_tokens)
        return tokens + self.token_emb


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) fixed sine/cosine positions (Vaswani et al.)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(length, dim)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return out


class ActionTokenizer(nn.Module):
    """f_a: the past action chunk a_{t-tau:t} -> tau tokens, with stochastic masking in training.

    Each action step is embedded by an MLP; in training each token is replaced by one shared learnable mask
    token with probability `mask_ratio` (per-token Bernoulli, MAE-like). Positions are added after masking so
    the model still knows *which* step is hidden. Padded steps (before the episode start) are always masked.
    With mask_ratio = 1 (action-free training) tokens are masked at evaluation too.
    """

    def __init__(self, action_dim: int, tau: int, hidden_dim: int, layers: int = 2, positions: str = "learned"):
        super().__init__()
        self.tau = tau
        self.net = mlp(action_dim, hidden_dim, hidden_dim, layers)
        self.mask_token = nn.Parameter(torch.randn(hidden_dim) * 0.02)
        if positions == "learned":
            self.pos = nn.Parameter(torch.randn(tau, hidden_dim) * 0.02)
        else:
            self.register_buffer("pos", sinusoidal_positions(tau, hidden_dim), persistent=False)

    def forward(
        self, actions: torch.Tensor, valid: torch.Tensor | None = None, mask_ratio: float = 0.0,
        chunk_mask_prob: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """actions (B, tau, A) normalised, valid (B, tau) bool -> tokens (B, tau, H), masked (B, tau) bool.
        `chunk_mask_prob`: each sample's whole chunk is masked with this probability (besides per-token)."""
        b, t, _ = actions.shape
        if t != self.tau:
            raise ValueError(f"expected {self.tau} past actions (dynamics.tau), got {t}")
        masked = torch.zeros(b, t, dtype=torch.bool, device=actions.device)
        if valid is not None:
            masked |= ~valid.bool()
        if mask_ratio >= 1.0:
            masked[:] = True
        elif mask_ratio > 0.0:
            masked |= torch.rand(b, t, device=actions.device) < mask_ratio
        if 0.0 < chunk_mask_prob:
            masked |= torch.rand(b, 1, device=actions.device) < chunk_mask_prob
        tokens = self.net(actions)
        tokens = torch.where(masked[..., None], self.mask_token.to(tokens.dtype).expand_as(tokens), tokens)
        return tokens + self.pos, masked
