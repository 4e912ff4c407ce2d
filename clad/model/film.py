"""Feature-wise linear modulation (Perez et al. 2018)."""

from __future__ import annotations

import torch
from torch import nn


class FiLM(nn.Module):
    """y = x * (1 + gamma(c)) + beta(c).

    x (B, D) is modulated by the condition c (B, C). gamma and beta come from one linear layer (or a small
    MLP when `hidden` is given) whose last layer is zero-initialised, so the module starts as the identity
    and the condition is learned in gradually (our choice; the paper gives no initialisation).
    """

    def __init__(self, feat_dim: int, cond_dim: int, hidden: int | None = None):
        super().__init__()
        self.feat_dim = feat_dim
        if hidden:
            self.net = nn.Sequential(nn.Linear(cond_dim, hidden), nn.GELU(), nn.Linear(hidden, 2 * feat_dim))
        else:
            self.net = nn.Sequential(nn.Linear(cond_dim, 2 * feat_dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, D), cond (B, C) -> (B, D)."""
        gamma, beta = self.net(cond).chunk(2, dim=-1)
        return x * (1 + gamma) + beta
