"""Training windows from one episode row (plain numpy): the producer side of clad/data/batch.py.

An episode row (see clad/data/episode_table.py, `decode_episodes`) holds whole-episode arrays, so windows
for any foresight horizon tau and chunk length C are cut here at load time; preprocessing never fixes tau.

    spec = WindowSpec(tau=4, chunk=8, views=("agentview", "eye_in_hand"),
                      proprio_keys=("joint_states", "gripper_states"))
    for batch in iter_window_batches(episode, spec, lang_emb):   # dicts of (N, ...) arrays
        ...
    for sample in iter_windows(episode, spec, lang_emb):         # dicts of per-sample arrays
        ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

from clad.data import batch as B
from clad.data.episode_table import feature_column
from clad.data.libero_layout import CAMERA_TO_OBS_KEY, LOWDIM_KEYS
from clad.errors import DataError


@dataclass(frozen=True)
class WindowSpec:
    """What a window contains. `views` are camera names ("agentview") or obs keys ("agentview_rgb"), in the
    order of the V axis; `stride` keeps every stride-th step t (0, stride, 2*stride, ...)."""

    tau: int
    chunk: int
    views: tuple[str, ...] = ("agentview", "eye_in_hand")
    proprio_keys: tuple[str, ...] = ("joint_states", "gripper_states")
    use_features: bool = False
    stride: int = 1

    def __post_init__(self):
        if self.tau < 1 or self.chunk < 1 or self.stride < 1:
            raise ValueError(f"tau, chunk and stride must be >= 1, got {self.tau}, {self.chunk}, {self.stride}")
        unknown = [k for k in self.proprio_keys if k not in LOWDIM_KEYS]
        if unknown:
            raise ValueError(f"unknown proprio keys {unknown}; choose from {list(LOWDIM_KEYS)}")
        object.__setattr__(self, "views", tuple(self.views))
        object.__setattr__(self, "proprio_keys", tuple(self.proprio_keys))

    @property
    def image_keys(self) -> tuple[str, ...]:
        return tuple(CAMERA_TO_OBS_KEY.get(v, v) for v in self.views)

    @property
    def keys(self) -> tuple[str, ...]:
        return B.REQUIRED_KEYS + (B.FEATURE_KEYS if self.use_features else ())


def window_batch(episode: Mapping[str, Any], spec: WindowSpec, lang_emb: np.ndarray,
                 steps: np.ndarray) -> dict[str, np.ndarray]:
    """Windows at `steps` (N,) of one episode, stacked: every key of batch.py with a leading N axis.

    Frames are clamped by batch.window_indices; past actions before step 0 are zeros with mask False;
    future actions past the end repeat the last action with mask False.
    """
    T = int(episode["length"])
    t = np.asarray(steps, dtype=np.int64)
    if t.size and (t.min() < 0 or t.max() >= T):
        raise IndexError(f"steps outside an episode of {T} steps")
    frame_idx = {"prev": np.maximum(t - spec.tau, 0), "curr": t, "next": np.minimum(t + spec.tau, T - 1)}
    out: dict[str, np.ndarray] = {}
    # with features, an episode read without its image columns (a feature set) gives windows without rgb_*
    images = not spec.use_features or all(k in episode for k in spec.image_keys)
    missing = [k for k in (spec.image_keys if images else ()) + spec.proprio_keys + ("actions",) if k not in episode]
    if spec.use_features:
        missing += [feature_column(k) for k in spec.image_keys if feature_column(k) not in episode]
    if missing:
        raise DataError(f"episode {episode.get('episode_id', '?')} has no column(s) {missing}; "
                        "re-run preprocessing with these views/keys (and a feature_backbone for features)")
    proprio = np.concatenate([np.asarray(episode[k], np.float32) for k in spec.proprio_keys], axis=1)  # (T, D_p)
    for name in ("prev", "curr", "next"):
        idx = frame_idx[name]
        # (N, V, H, W, 3) -> (N, V, 3, H, W): the batch contract is channels-first
        if images:
            rgb = np.stack([episode[k][idx] for k in spec.image_keys], axis=1)
            out[f"rgb_{name}"] = np.ascontiguousarray(rgb.transpose(0, 1, 4, 2, 3))
        out[f"proprio_{name}"] = proprio[idx]
        if spec.use_features:
            out[f"feat_{name}"] = np.stack([np.asarray(episode[feature_column(k)], np.float32)[idx]
                                            for k in spec.image_keys], axis=1)  # (N, V, F)
    actions = np.asarray(episode["actions"], np.float32)  # (T, 7)
    past = t[:, None] + np.arange(-spec.tau, 0)[None, :]  # (N, tau): t-tau .. t-1
    past_mask = past >= 0
    out["actions_past"] = actions[np.clip(past, 0, T - 1)] * past_mask[..., None]
    out["actions_past_mask"] = past_mask
    fut = t[:, None] + np.arange(spec.chunk)[None, :]  # (N, C): t .. t+C-1
    out["actions_future"] = actions[np.minimum(fut, T - 1)]
    out["actions_future_mask"] = fut <= T - 1
    lang = np.asarray(lang_emb, np.float32).reshape(1, -1)
    out["lang_emb"] = np.repeat(lang, t.size, axis=0)
    out["task_index"] = np.full(t.size, int(episode["task_index"]), np.int64)
    return out


def episode_steps(length: int, stride: int = 1) -> np.ndarray:
    return np.arange(0, int(length), stride, dtype=np.int64)


def iter_window_batches(episode: Mapping[str, Any], spec: WindowSpec, lang_emb: np.ndarray,
                        max_batch: int = 64) -> Iterator[dict[str, np.ndarray]]:
    """Every window of the episode (steps 0, stride, ...) in batches of at most `max_batch` (bounds memory)."""
    steps = episode_steps(episode["length"], spec.stride)
    for s in range(0, steps.size, max_batch):
        yield window_batch(episode, spec, lang_emb, steps[s:s + max_batch])


def iter_windows(episode: Mapping[str, Any], spec: WindowSpec, lang_emb: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
    """Every window of the episode as one sample dict (shapes of batch.py without the B axis)."""
    for batch in iter_window_batches(episode, spec, lang_emb):
        n = batch["task_index"].shape[0]
        for i in range(n):
            yield {k: v[i] for k, v in batch.items()}


def window_shapes(spec: WindowSpec, image_hw: tuple[int, int], lang_dim: int,
                  feature_dim: int | None = None) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Expected (shape, dtype) per sample key: for checks and docs."""
    V, (H, W) = len(spec.views), image_hw
    Dp = sum(LOWDIM_KEYS[k] for k in spec.proprio_keys)
    s: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for n in ("prev", "curr", "next"):
        s[f"rgb_{n}"] = ((V, 3, H, W), np.dtype(np.uint8))
        s[f"proprio_{n}"] = ((Dp,), np.dtype(np.float32))
        if spec.use_features:
            s[f"feat_{n}"] = ((V, int(feature_dim or 0)), np.dtype(np.float32))
    s["actions_past"] = ((spec.tau, 7), np.dtype(np.float32))
    s["actions_past_mask"] = ((spec.tau,), np.dtype(bool))
    s["actions_future"] = ((spec.chunk, 7), np.dtype(np.float32))
    s["actions_future_mask"] = ((spec.chunk,), np.dtype(bool))
    s["lang_emb"] = ((lang_dim,), np.dtype(np.float32))
    s["task_index"] = ((), np.dtype(np.int64))
    return s


def check_sample(sample: Mapping[str, np.ndarray], expected: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Raise ValueError listing every key whose shape or dtype differs from `expected`."""
    errs = [f"{k}: got {None if k not in sample else (tuple(np.shape(sample[k])), np.asarray(sample[k]).dtype)}, "
            f"expected {shape} {dtype}"
            for k, (shape, dtype) in expected.items()
            if k not in sample or tuple(np.shape(sample[k])) != shape or np.asarray(sample[k]).dtype != dtype]
    if errs:
        raise ValueError("window does not match the batch contract:\n  " + "\n  ".join(errs))


__all__ = ["WindowSpec", "window_batch", "iter_window_batches", "iter_windows", "episode_steps", "window_shapes",
           "check_sample"]
