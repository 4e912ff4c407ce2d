"""Binomial confidence intervals for success rates."""

from __future__ import annotations

import math

__all__ = ["wilson_interval", "Z_95"]

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval (lo, hi) for `successes` out of `n` trials; (0, 1) when n == 0.

    Wilson rather than the normal approximation: at 50 episodes per task rates near 0 or 1 are common and
    the normal interval collapses to zero width there (or leaves [0, 1]).
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # exact ends at 0 and n successes (rounding would give 0.9999999999999999), and always inside [0, 1]
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi
