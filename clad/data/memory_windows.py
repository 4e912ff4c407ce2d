"""Training windows gathered from a split held in memory (numpy + torch, no Ray): the loader for data that fits.

    wins = InMemoryWindows.load("data/libero_spatial", "train", spec, feature_root=None)
    for batch in wins.batches(batch_size=64, seed=0, shard=(rank, world)):  # endless; new permutation per epoch
        ...                                                # torch tensors, keys of clad/data/batch.py

The episodes are read once and concatenated into flat per-frame arrays; a window is a handful of index
gathers (the same windows as clad/data/windows.py `window_batch`, which the tests check key by key). There
is no re-reading, re-decoding or re-cutting per epoch and no shuffle buffer to refill at the epoch boundary.
With a feature set (`feature_root`) the images are not even read: frames are the fp16 cached features.

Every data-parallel worker holds the whole split and takes its share of each epoch's permutation (the
same seed on every rank), so all ranks get equally many windows per epoch, as Ray Data's split does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from clad.data import feature_set as fs
from clad.data.episode_table import feature_column
from clad.data.store import load_language, split_files
from clad.data.windows import WindowSpec
from clad.errors import DataError


def _units(dataset_dir: str | Path, split: str) -> list[tuple[Path, int]]:
    import pyarrow.parquet as pq

    return [(f, g) for f in split_files(dataset_dir, split) for g in range(pq.ParquetFile(f).num_row_groups)]


def estimate_bytes(dataset_dir: str | Path, split: str, spec: WindowSpec, feature_dim: int | None = None) -> int:
    """Bytes one worker's InMemoryWindows would hold (reads only the small meta columns)."""
    import pyarrow.parquet as pq

    total = 0
    for f, g in _units(dataset_dir, split):
        t = pq.ParquetFile(f).read_row_group(g, columns=["length", "image_height", "image_width"])
        for T, H, W in zip(*(t.column(c).to_pylist() for c in ("length", "image_height", "image_width"))):
            frame = len(spec.views) * (2 * feature_dim if feature_dim else 3 * H * W)
            total += T * (frame + 4 * (7 + 16))  # + actions and proprio (float32)
    return total


class InMemoryWindows:
    """Flat per-frame arrays of a set of episodes and the window centres over them."""

    def __init__(self, spec: WindowSpec, lang: np.ndarray, frames: np.ndarray, proprio: np.ndarray,
                 actions: np.ndarray, start: np.ndarray, length: np.ndarray, task: np.ndarray, features: bool):
        self.spec, self.lang, self.frames, self.proprio, self.actions = spec, lang, frames, proprio, actions
        self.start, self.length, self.task, self.features = start, length, task, features
        local = np.arange(len(start)) - start
        self.centres = np.flatnonzero(local % spec.stride == 0)  # window centres: every stride-th step

    @classmethod
    def load(cls, dataset_dir: str | Path, split: str, spec: WindowSpec,
             feature_root: str | Path | None = None) -> "InMemoryWindows":
        keys = spec.image_keys
        use_feats = feature_root is not None or spec.use_features
        columns = list(spec.proprio_keys) + ["actions"]
        if not use_feats:
            columns += list(keys)
        elif feature_root is None:  # features stored in the Parquet rows by preprocessing
            columns += [feature_column(k) for k in keys]
        units = _units(dataset_dir, split)
        frames, proprio, actions, start, length, task = [], [], [], [], [], []
        n = 0
        for f, g in units:
            ep = next(iter_episodes_unit(f, g, columns))
            T = int(ep["length"])
            if feature_root is not None:
                got = fs.load_shard(feature_root, split, fs.unit_name(f, g), ep["episode_id"], T, keys)
                frames.append(np.stack([got[k] for k in keys], axis=1))  # (T, V, F) float16
            elif use_feats:
                frames.append(np.stack([np.asarray(ep[feature_column(k)], np.float16) for k in keys], axis=1))
            else:
                frames.append(np.stack([ep[k] for k in keys], axis=1))  # (T, V, H, W, 3) uint8
            proprio.append(np.concatenate([np.asarray(ep[k], np.float32) for k in spec.proprio_keys], axis=1))
            actions.append(np.asarray(ep["actions"], np.float32))
            start.append(np.full(T, n, np.int64))
            length.append(np.full(T, T, np.int64))
            task.append(np.full(T, int(ep["task_index"]), np.int64))
            n += T
        if not frames:
            raise DataError(f"split '{split}' of {dataset_dir} has no episodes")
        return cls(spec, load_language(dataset_dir), np.concatenate(frames), np.concatenate(proprio),
                   np.concatenate(actions), np.concatenate(start), np.concatenate(length), np.concatenate(task),
                   use_feats)

    def __len__(self) -> int:
        return int(self.centres.size)

    @property
    def nbytes(self) -> int:
        return int(self.frames.nbytes + self.proprio.nbytes + self.actions.nbytes + 3 * self.start.nbytes)

    def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Windows centred on flat frame indices `idx` (N,): every key of batch.py (feat_* instead of rgb_*
        with features), values as window_batch computes them."""
        tau, chunk = self.spec.tau, self.spec.chunk
        s, T = self.start[idx], self.length[idx]
        t = idx - s
        frame = {"prev": s + np.maximum(t - tau, 0), "curr": idx, "next": s + np.minimum(t + tau, T - 1)}
        out: dict[str, np.ndarray] = {}
        for name, fi in frame.items():
            if self.features:
                out[f"feat_{name}"] = self.frames[fi].astype(np.float32)  # (N, V, F)
            else:
                out[f"rgb_{name}"] = np.ascontiguousarray(self.frames[fi].transpose(0, 1, 4, 2, 3))
            out[f"proprio_{name}"] = self.proprio[fi]
        past = t[:, None] + np.arange(-tau, 0)[None, :]
        past_mask = past >= 0
        out["actions_past"] = self.actions[s[:, None] + np.clip(past, 0, None)] * past_mask[..., None]
        out["actions_past_mask"] = past_mask
        fut = t[:, None] + np.arange(chunk)[None, :]
        out["actions_future"] = self.actions[s[:, None] + np.minimum(fut, T[:, None] - 1)]
        out["actions_future_mask"] = fut <= T[:, None] - 1
        out["lang_emb"] = self.lang[self.task[idx]].astype(np.float32)
        out["task_index"] = self.task[idx]
        return out

    def batches(self, batch_size: int, seed: int | None = None, shuffle: bool = True, drop_last: bool = True,
                epochs: int | None = None, shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
        """Torch batches; a new permutation of the windows every epoch (seeded by `seed` and the epoch; pass
        the same seed on every rank). `shard` (rank, world): this rank's equal share of each epoch."""
        import torch

        rank, world = shard
        if drop_last and len(self) // world < batch_size:
            raise DataError(f"{len(self)} windows over {world} worker(s) cannot fill one batch of {batch_size} each: "
                            "lower batch_size or window_stride, or add episodes")
        epoch = 0
        while epochs is None or epoch < epochs:
            order = (np.random.default_rng(None if seed is None else [seed, epoch]).permutation(self.centres)
                     if shuffle else self.centres)
            order = order[: len(order) - len(order) % world][rank::world]
            stop = len(order) - (len(order) % batch_size if drop_last else 0)
            for b in range(0, stop, batch_size):
                yield {k: torch.from_numpy(v) for k, v in self.gather(order[b:b + batch_size]).items()}
            epoch += 1


def iter_episodes_unit(file: Path, row_group: int, columns: list[str]):
    """The decoded episode(s) of one Parquet row group, with only `columns` (+ the meta columns decoding needs)."""
    import pyarrow.parquet as pq

    from clad.data.episode_table import decode_episodes
    from clad.data.store import DECODE_COLUMNS

    table = pq.ParquetFile(file).read_row_group(row_group, columns=sorted(set(columns) | DECODE_COLUMNS))
    return decode_episodes(table)


__all__ = ["InMemoryWindows", "estimate_bytes", "iter_episodes_unit"]
