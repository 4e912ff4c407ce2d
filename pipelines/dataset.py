"""Ray layer over a preprocessed dataset: episode rows -> streaming window samples for training.

    ds = load_split("data/libero_spatial", "train")                      # ray.data.Dataset of episode rows
    wins = window_dataset(ds, spec, load_language("data/libero_spatial"), episode_shuffle=True)
    for batch in wins.iter_torch_batches(batch_size=64, local_shuffle_buffer_size=2048):
        batch["rgb_curr"]  # torch.uint8 (B, V, 3, H, W) ... keys/dtypes/shapes of clad/data/batch.py

Windows are cut per episode inside map_batches (a flat_map: 1 episode row in, T/stride window rows out,
yielded in chunks of `max_batch` so a long episode never materialises all its windows at once). Window
columns are fixed-shape ndarrays, so Ray stores them as tensor columns and `iter_torch_batches` returns
real tensors (not object arrays).

Shuffling, from cheap to expensive:
  * `episode_shuffle=True`: Parquet files are read in random order and blocks (1 episode each) are visited in
    random order, re-drawn every time the dataset is iterated (i.e. every epoch);
  * `local_shuffle_buffer_size` on iter_torch_batches: mixes windows across episodes within a buffer;
  * `global_shuffle=True`: `random_shuffle()` of all windows (full shuffle; windows are ~3x the episode
    data, so only for small datasets).

Single-process use without Ray: clad.data.store.iter_dataset_windows (re-exported here as iter_windows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from clad.data.episode_table import decode_episodes, feature_column
from clad.data.store import iter_dataset_windows as iter_windows  # noqa: F401  (plain-Python iterator)
from clad import storage
from clad.data.store import DECODE_COLUMNS, load_language, parquet_file, split_dir, split_files  # noqa: F401
from clad.data.windows import WindowSpec, iter_window_batches
from clad.errors import DataError

UNIT_COLUMN = "fs_unit"
WINDOW_CPUS = 0.5  # fractional: whole-CPU map tasks starve Train workers on small machines (ray-stack.md §3-4)


def _read_row_groups(batch: dict[str, np.ndarray], columns: list[str] | None, units: bool = False) -> pa.Table:
    from clad.data.feature_set import unit_name

    tables = []
    for f, g in zip(batch["file"], batch["row_group"]):
        # `file` is an absolute path or a URI: the task opens it wherever it runs
        t = parquet_file(str(f)).read_row_group(int(g), columns=columns)
        if units:  # the episode's feature-set shard name (clad/data/feature_set.py)
            t = t.append_column(UNIT_COLUMN, pa.array([unit_name(f, g)] * t.num_rows))
        tables.append(t)
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def load_split(dataset_dir: str | Path, split: str, columns: Sequence[str] | None = None,
               shuffle_files: bool = False, num_cpus: float = WINDOW_CPUS, units: bool = False):
    """The episode rows of one split as a lazy ray.data.Dataset (one block per row group = per episode).

    Reads go through `from_items` + a fractional-CPU map instead of `read_parquet`: Ray Data's file-listing
    task claims a whole CPU, and a Train worker group or a few Tune trials holding more than half of a
    2-CPU machine then leave it unschedulable forever (no error, no progress).
    """
    import ray

    dataset_dir = storage.normalize(dataset_dir)  # absolute or a URI: the map tasks run in other processes
    files = split_files(dataset_dir, split)
    if not files:
        raise DataError(f"split '{split}' of {dataset_dir} has no episodes "
                        f"(no Parquet files in {split_dir(dataset_dir, split)})")
    units = [{"file": str(f), "row_group": g} for f in files for g in range(parquet_file(f).num_row_groups)]
    if shuffle_files:
        np.random.default_rng().shuffle(units)
    cols = None if columns is None else sorted(set(columns) | DECODE_COLUMNS)  # decoding needs the shape columns
    return ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
        _read_row_groups, batch_size=1, batch_format="numpy", num_cpus=num_cpus, fn_kwargs={"columns": cols, "units": units})


def _windows_udf(batch: pa.Table, spec: dict, lang: np.ndarray, max_batch: int,
                 features: tuple[str, str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    window_spec = WindowSpec(**spec)
    units = batch.column(UNIT_COLUMN).to_pylist() if features else None
    if features:
        batch = batch.drop_columns([UNIT_COLUMN])
    for i, ep in enumerate(decode_episodes(batch)):
        if features:  # cached features of a feature set (`clad features`) stand in for feat_* columns
            from clad.data.feature_set import load_shard

            root, split = features
            keys = window_spec.image_keys
            got = load_shard(root, split, units[i], ep["episode_id"], int(ep["length"]), keys)
            ep.update({feature_column(k): got[k] for k in keys})
        yield from iter_window_batches(ep, window_spec, lang[ep["task_index"]], max_batch=max_batch)


def window_dataset(ds, spec: WindowSpec, lang_table: np.ndarray, *, episode_shuffle: bool = False,
                   global_shuffle: bool = False, seed: int | None = None, max_batch: int = 64,
                   num_cpus: float = WINDOW_CPUS, features: tuple[str, str] | None = None):
    """Episode-row Dataset -> Dataset of window samples (columns = clad/data/batch.py keys).

    `lang_table` is (num_tasks, E) from `load_language(dataset_dir)`. `seed` fixes the shuffles (None:
    a new order every epoch).
    """
    if episode_shuffle:
        ds = ds.randomize_block_order(seed=seed)
    spec_dict = {"tau": spec.tau, "chunk": spec.chunk, "views": list(spec.views),
                 "proprio_keys": list(spec.proprio_keys), "use_features": spec.use_features, "stride": spec.stride}
    out = ds.map_batches(_windows_udf, batch_size=1, batch_format="pyarrow", num_cpus=num_cpus,
                         fn_kwargs={"spec": spec_dict, "lang": np.asarray(lang_table, np.float32),
                                    "max_batch": max_batch, "features": features})
    if global_shuffle:
        out = out.random_shuffle(seed=seed)
    return out


def dataset_windows(dataset_dir: str | Path, split: str, spec: WindowSpec, feature_root: str | None = None,
                    **kwargs):
    """load_split + window_dataset in one call (episode_shuffle also shuffles the Parquet file order).
    With `feature_root` (a feature set), windows carry its cached features and no images are read."""
    columns = None
    if feature_root is not None:
        columns = [*spec.proprio_keys, "actions"]
        kwargs["features"] = (str(feature_root), split)
    ds = load_split(dataset_dir, split, columns=columns, shuffle_files=bool(kwargs.get("episode_shuffle")),
                    units=feature_root is not None)
    return window_dataset(ds, spec, load_language(dataset_dir), **kwargs)


def iter_torch_windows(wins, batch_size: int, *, local_shuffle_buffer_size: int | None = None,
                       seed: int | None = None, drop_last: bool = False, device: str = "cpu"):
    """Torch batches (dicts of tensors with the dtypes/shapes of clad/data/batch.py) from `window_dataset`.
    Also works on a Ray Train shard (`ray.train.get_dataset_shard(...)`), which has the same method."""
    return wins.iter_torch_batches(batch_size=batch_size, local_shuffle_buffer_size=local_shuffle_buffer_size,
                                   local_shuffle_seed=seed, drop_last=drop_last, device=device)
