"""Reading a preprocessed dataset without Ray (pyarrow, one Parquet row group at a time).

Row groups hold one episode each (preprocessing writes row_group_size=1), so memory stays at one episode
plus the windows of one batch. For single-process training, debugging and tests; the Ray layer is
pipelines/dataset.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq

from clad.data.episode_table import decode_episodes
from clad.data.language import load_embeddings
from clad.data.manifest import EPISODES_DIR, LANGUAGE, SPLITS, read_manifest
from clad.data.windows import WindowSpec, iter_window_batches
from clad import storage
from clad.errors import DataError


# meta columns that decoding needs whatever the caller projects
DECODE_COLUMNS = {"episode_id", "task_index", "length", "image_height", "image_width"}


def split_dir(dataset_dir: str | Path, split: str) -> str:
    """The split's folder: a local path or a URI (clad/storage.py), like `dataset_dir`."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; choose from {list(SPLITS)}")
    read_manifest(dataset_dir)  # fails clearly on a folder that is not a finished dataset
    return storage.join(dataset_dir, EPISODES_DIR, split)


def split_files(dataset_dir: str | Path, split: str) -> list[str]:
    return storage.list_files(split_dir(dataset_dir, split), ".parquet")


def parquet_file(loc: str | Path) -> pq.ParquetFile:
    """A Parquet file at a local path or a URI."""
    return pq.ParquetFile(storage.open_input(loc))


def iter_episodes(dataset_dir: str | Path, split: str, columns: Sequence[str] | None = None,
                  shuffle_seed: int | None = None) -> Iterator[dict[str, Any]]:
    """Decoded episode rows of one split. With `shuffle_seed`, row groups are visited in a seeded random order."""
    units = [(f, g) for f in split_files(dataset_dir, split) for g in range(parquet_file(f).num_row_groups)]
    if shuffle_seed is not None:
        np.random.default_rng(shuffle_seed).shuffle(units)
    open_files: dict[str, pq.ParquetFile] = {}
    for f, g in units:
        pf = open_files.get(f) or open_files.setdefault(f, parquet_file(f))
        cols = None if columns is None else sorted(set(columns) | DECODE_COLUMNS)
        yield from decode_episodes(pf.read_row_group(g, columns=cols))


def load_language(dataset_dir: str | Path) -> np.ndarray:
    """(num_tasks, E) float32; row i is the embedding of task_index i."""
    return load_embeddings(storage.join(dataset_dir, LANGUAGE))


def iter_dataset_windows(dataset_dir: str | Path, split: str, spec: WindowSpec, shuffle_seed: int | None = None,
                         max_batch: int = 64) -> Iterator[dict[str, np.ndarray]]:
    """Window batches (dicts of (N, ...) arrays, batch.py keys) over a whole split, episode by episode."""
    lang = load_language(dataset_dir)
    for ep in iter_episodes(dataset_dir, split, shuffle_seed=shuffle_seed):
        yield from iter_window_batches(ep, spec, lang[ep["task_index"]], max_batch=max_batch)
