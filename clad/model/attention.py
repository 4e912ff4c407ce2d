"""Pre-norm attention blocks: cross-attention stacks and the learnable-query (Perceiver `q_out`) pooling."""

from __future__ import annotations

import torch
from torch import nn


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int) -> nn.Sequential:
    """`layers` Linear layers with GELU between them (layers=1 is a single Linear)."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden), nn.GELU()]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: x <- x + Attn(LN(x), LN(ctx)); x <- x + FFN(LN(x)).

    With `context=None` it is self-attention over x. Shapes: x (B, Nq, D), context (B, Nk, D) -> (B, Nq, D).
    `key_padding_mask` (B, Nk) is True where a key must be ignored (PyTorch convention).
    """

    def __init__(self, dim: int, heads: int, ffn_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_ratio * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_ratio * dim, dim)
        )

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q = self.norm_q(x)
        kv = q if context is None else self.norm_kv(context)
        x = x + self.attn(q, kv, kv, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return x + self.ffn(self.norm_ffn(x))


class AttentionStack(nn.Module):
    """`depth` AttentionBlocks sharing one context, then a final LayerNorm. (B, Nq, D), (B, Nk, D) -> (B, Nq, D)."""

    def __init__(self, dim: int, heads: int, depth: int, ffn_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(AttentionBlock(dim, heads, ffn_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, context, key_padding_mask)
        return self.norm(x)


class LearnedQueryPool(nn.Module):
    """One learnable query (`q_out`) cross-attends to a token set: (B, N, D) -> (B, D).

    The paper argues this beats mean/max pooling at keeping the salient cross-modal dynamics.
    """

    def __init__(self, dim: int, heads: int, depth: int = 1, ffn_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.q_out = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.stack = AttentionStack(dim, heads, depth, ffn_ratio, dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q = self.q_out.expand(tokens.shape[0], -1, -1)
        return self.stack(q, tokens)[:, 0]
