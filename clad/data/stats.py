"""Per-dimension normalisation statistics that merge exactly across episodes (and Ray tasks).

Each episode contributes `Moments` (count, mean, M2, min, max) computed in float64; `merge` uses Chan et
al.'s pairwise update, which is numerically stable (no sum-of-squares cancellation) and order-independent
up to float rounding, so the statistics do not depend on how the work was split across workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np


@dataclass(frozen=True)
class Moments:
    """Running statistics of a (N, D) array along N. Arrays are (D,) float64."""

    count: int
    mean: np.ndarray
    m2: np.ndarray  # sum of squared deviations from the mean
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def from_array(cls, x: np.ndarray) -> "Moments":
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"Moments.from_array needs a non-empty (N, D) array, got shape {x.shape}")
        mean = x.mean(axis=0)
        return cls(int(x.shape[0]), mean, ((x - mean) ** 2).sum(axis=0), x.min(axis=0), x.max(axis=0))

    def merge(self, other: "Moments") -> "Moments":
        if self.mean.shape != other.mean.shape:
            raise ValueError(f"cannot merge statistics of widths {self.mean.shape} and {other.mean.shape}")
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return Moments(n, mean, m2, np.minimum(self.min, other.min), np.maximum(self.max, other.max))

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof=0), (D,)."""
        return np.sqrt(np.maximum(self.m2 / self.count, 0.0))

    def to_json(self) -> dict:
        return {"count": self.count, "min": self.min.tolist(), "max": self.max.tolist(),
                "mean": self.mean.tolist(), "std": self.std.tolist()}


def merge_all(parts: Iterable[Moments]) -> Moments | None:
    out: Moments | None = None
    for p in parts:
        out = p if out is None else out.merge(p)
    return out


def merge_keyed(parts: Iterable[Mapping[str, Moments]]) -> dict[str, Moments]:
    """Merge per-key Moments of many episodes into one Moments per key."""
    out: dict[str, Moments] = {}
    for part in parts:
        for key, m in part.items():
            out[key] = m if key not in out else out[key].merge(m)
    return out


def stats_document(per_key: Mapping[str, Moments], split: str, num_episodes: int) -> dict:
    """The content of stats.json: {split, num_episodes, num_steps, keys: {key: {count,min,max,mean,std}}}."""
    steps = next(iter(per_key.values())).count if per_key else 0
    return {"split": split, "num_episodes": num_episodes, "num_steps": steps, "ddof": 0,
            "keys": {k: per_key[k].to_json() for k in sorted(per_key)}}
