"""AdamW with warmup + cosine decay, the schedule most diffusion-policy and latent-planning code uses."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from clad.config import FrozenConfig


class OptimConfig(FrozenConfig):
    """Optimiser settings. The paper states none of these; defaults follow the LBP/diffusion_policy lineage."""

    lr: float = 3e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 500
    # cosine decays from lr to lr * min_lr_ratio over the run
    min_lr_ratio: float = 0.0
    grad_clip_norm: float = 1.0


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # biases, norm scales, embeddings and learnable tokens are not weight-decayed
    return param.ndim < 2 or "norm" in name or "embed" in name or "token" in name


def build_optimizer(params: nn.Module | Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over a module's trainable parameters, or over (name, parameter) pairs."""
    named = params.named_parameters() if isinstance(params, nn.Module) else params
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            (no_decay if _no_decay(name, p) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at optimiser step `step` (0-based): linear warmup, then cosine."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, cfg.min_lr_ratio)
    )
