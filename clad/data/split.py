"""Deterministic train/validation split by episode.

An episode's score is a seeded hash of (source file path relative to the input folder, demo name), so
the split does not depend on the order files are found or processed, on the machine, or on which other
files are present; it changes only with the seed. Episodes scoring below `val_fraction` go to validation.
"""

from __future__ import annotations

import hashlib
from typing import Iterable


def split_score(seed: int, source_file: str, demo: str) -> float:
    """Uniform-looking number in [0, 1) for one episode."""
    digest = hashlib.sha256(f"{seed}\0{source_file}\0{demo}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_splits(episodes: Iterable[tuple[str, str]], val_fraction: float, seed: int) -> dict[tuple[str, str], str]:
    """Map each (source_file, demo) to "train" or "val".

    When `val_fraction > 0` and there are at least 2 episodes but none scored into validation, the
    lowest-scoring episode is moved there, so small datasets still get a validation episode.
    """
    scores = {ep: split_score(seed, *ep) for ep in episodes}
    out = {ep: ("val" if s < val_fraction else "train") for ep, s in scores.items()}
    if val_fraction > 0 and len(out) >= 2 and "val" not in out.values():
        out[min(scores, key=scores.__getitem__)] = "val"
    if out and "train" not in out.values():  # never leave training empty (only possible with tiny inputs)
        out[max(scores, key=scores.__getitem__)] = "train"
    return out
