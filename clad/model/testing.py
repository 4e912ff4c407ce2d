"""Synthetic batches and statistics that follow clad/data/batch.py, for tests and benchmarks."""

from __future__ import annotations

import contextlib

import torch

from clad.model.config import ModelConfig


def fake_stats(cfg: ModelConfig) -> dict[str, dict[str, list[float]]]:
    """Plausible per-dim statistics: proprio in [-2, 2], actions in [-1, 1] (LIBERO's range)."""

    def field(dim: int, lo: float, hi: float) -> dict[str, list[float]]:
        return {"min": [lo] * dim, "max": [hi] * dim, "mean": [0.0] * dim, "std": [(hi - lo) / 4] * dim}

    return {"proprio": field(cfg.proprio_dim, -2.0, 2.0), "actions": field(cfg.action_dim, -1.0, 1.0)}


def tiny_model(seed: int = 0, **sections: dict):
    """A CladModel of the tiny preset with per-section changes, e.g. `tiny_model(policy={"foresight": "none"})`,
    seeded so that two calls with the same arguments build the same weights."""
    from clad.model.model import CladModel  # lazy: the model pulls in diffusers, the rest of this module does not
    from clad.model.sizes import model_preset

    cfg = model_preset("tiny")
    for section, values in sections.items():
        cfg = cfg.replace(**{section: getattr(cfg, section).replace(**values)})
    torch.manual_seed(seed)
    return CladModel(cfg, fake_stats(cfg))


def fake_batch(
    cfg: ModelConfig,
    batch_size: int = 2,
    image_hw: tuple[int, int] = (32, 32),
    features: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A random batch with every key of clad/data/batch.py (plus feat_* when `features`).

    The first sample starts its episode (one padded past action); the last ends it (one padded future step).
    """
    g = torch.Generator().manual_seed(seed)
    b, v, (h, w) = batch_size, cfg.vision.num_views, image_hw
    tau, c, a, dp = cfg.dynamics.tau, cfg.policy.chunk_length, cfg.action_dim, cfg.proprio_dim
    batch = {
        **{k: torch.randint(0, 256, (b, v, 3, h, w), generator=g, dtype=torch.uint8) for k in ("rgb_prev", "rgb_curr", "rgb_next")},
        **{k: torch.rand(b, dp, generator=g) * 4 - 2 for k in ("proprio_prev", "proprio_curr", "proprio_next")},
        "actions_past": torch.rand(b, tau, a, generator=g) * 2 - 1,
        "actions_past_mask": torch.ones(b, tau, dtype=torch.bool),
        "actions_future": torch.rand(b, c, a, generator=g) * 2 - 1,
        "actions_future_mask": torch.ones(b, c, dtype=torch.bool),
        "lang_emb": torch.randn(b, cfg.lang_dim, generator=g),
        "task_index": torch.zeros(b, dtype=torch.int64),
    }
    batch["actions_past"][0, 0] = 0.0
    batch["actions_past_mask"][0, 0] = False
    batch["actions_future"][-1, -1] = batch["actions_future"][-1, -2]
    batch["actions_future_mask"][-1, -1] = False
    if features:
        for k in ("prev", "curr", "next"):
            batch[f"feat_{k}"] = torch.randn(b, v, cfg.vision.feature_dim, generator=g)
    return batch


@contextlib.contextmanager
def one_thread():
    """Run torch on one intra-op thread, restoring the previous setting.

    On a shared 2-core machine, tiny models gain nothing from 2 threads and lose badly to oversubscription
    (measured: 0.05 s vs 2.1 s per tiny stage-1 step at load average ~11).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
