"""Per-dimension normalisation of raw proprio and actions, stored as buffers so it is saved with the weights.

Statistics come from the dataset as plain JSON-able dicts (the same format is written to `stats.json`):

    {"proprio": {"min": [...], "max": [...], "mean": [...], "std": [...]},
     "actions": {"min": [...], "max": [...], "mean": [...], "std": [...]}}

Each field is normalised affinely, y = x * scale + offset:
  minmax    -> [-1, 1]   (actions always: the diffusion policy clips samples to [-1, 1])
  gaussian  -> zero mean, unit std
Dimensions with (near) zero range/std are mapped to 0 instead of dividing by ~0.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from clad.errors import CheckpointError

STAT_NAMES = ("min", "max", "mean", "std")
_EPS = 1e-6


class FieldNormalizer(nn.Module):
    """Affine normaliser of one field of width `dim`. Identity until `set_stats` is called."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        if mode not in ("minmax", "gaussian"):
            raise ValueError(f"unknown normalisation mode {mode!r}")
        self.dim, self.mode = dim, mode
        for name, value in (("min", -1.0), ("max", 1.0), ("mean", 0.0), ("std", 1.0)):
            self.register_buffer(name, torch.full((dim,), value))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("offset", torch.zeros(dim))

    @torch.no_grad()
    def set_stats(self, stats: Mapping[str, Sequence[float]], name: str) -> None:
        for key in STAT_NAMES:
            if key not in stats:
                raise ValueError(f"normalisation stats for '{name}' lack '{key}' (need {STAT_NAMES})")
            value = torch.as_tensor(stats[key], dtype=torch.float32).reshape(-1)
            if value.numel() != self.dim:
                raise ValueError(f"stats['{name}']['{key}'] has {value.numel()} values, the model expects {self.dim}")
            getattr(self, key).copy_(value)
        if self.mode == "minmax":
            rng = self.max - self.min
            ok = rng > _EPS
            scale = torch.where(ok, 2.0 / rng.clamp_min(_EPS), torch.ones_like(rng))
            # constant dims go to 0: offset cancels the mid-point
            offset = torch.where(ok, -1.0 - self.min * scale, -(self.min + self.max) / 2)
        else:
            ok = self.std > _EPS
            scale = torch.where(ok, 1.0 / self.std.clamp_min(_EPS), torch.ones_like(self.std))
            offset = -self.mean * scale
        self.scale.copy_(scale)
        self.offset.copy_(offset)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) raw -> (..., dim) normalised."""
        return x * self.scale + self.offset

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        """y (..., dim) normalised -> (..., dim) raw."""
        return (y - self.offset) / self.scale

    def stats(self) -> dict[str, list[float]]:
        return {k: getattr(self, k).detach().cpu().tolist() for k in STAT_NAMES}


class Normalizer(nn.Module):
    """Named `FieldNormalizer`s, e.g. Normalizer({"proprio": (9, "minmax"), "actions": (7, "minmax")})."""

    def __init__(self, fields: Mapping[str, tuple[int, str]]):
        super().__init__()
        self.fields = nn.ModuleDict({name: FieldNormalizer(dim, mode) for name, (dim, mode) in fields.items()})

    def set_stats(self, stats: Mapping[str, Mapping[str, Sequence[float]]]) -> None:
        missing = [k for k in self.fields if k not in stats]
        if missing:
            raise ValueError(f"normalisation stats lack field(s) {missing}; got {sorted(stats)}")
        for name, field in self.fields.items():
            field.set_stats(stats[name], name)

    def normalize(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.fields[name].normalize(x)

    def unnormalize(self, name: str, y: torch.Tensor) -> torch.Tensor:
        return self.fields[name].unnormalize(y)

    def stats(self) -> dict[str, dict[str, list[float]]]:
        """The JSON-able statistics (the `stats.json` format)."""
        return {name: field.stats() for name, field in self.fields.items()}


def check_stats(stats: object, source: str) -> dict:
    """Validate the outer shape of a stats dict read from JSON, raising CheckpointError on nonsense."""
    if not isinstance(stats, dict) or not all(isinstance(v, dict) for v in stats.values()):
        raise CheckpointError(f"{source}: expected {{field: {{min,max,mean,std: [...]}}}}")
    return stats
