"""Turning accepted episodes into Parquet-ready Arrow tables, and adding frozen-backbone features to them.
Plain functions over pa.Table so Ray Data `map_batches(batch_format="pyarrow")` and the single-process
benchmark loop run the exact same code."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from clad.data.episode_table import decode_episodes, encode_episodes, feature_column, seq_array
from clad.data.features import FeatureBackbone, compute_features
from clad.data.hdf5_reader import read_episode
from clad.data.libero_layout import ACTION_DIM, LOWDIM_KEYS


def seq_widths(lowdim_keys: Sequence[str], image_keys: Sequence[str] = (),
               feature_dim: int | None = None) -> dict[str, int]:
    widths = {"actions": ACTION_DIM, **{k: LOWDIM_KEYS[k] for k in lowdim_keys}}
    if feature_dim:
        widths.update({feature_column(k): feature_dim for k in image_keys})
    return widths


def read_episodes_table(refs: Sequence[Mapping[str, Any]], image_keys: tuple[str, ...], lowdim_keys: tuple[str, ...],
                        image_size: tuple[int, int], resize: bool, read: Callable[..., dict] | None = None) -> pa.Table:
    """EpisodeRef items (dicts) -> episode rows (schema in episode_table.py), reading each demo in full with
    `read(ref, image_keys, lowdim_keys, image_size_or_None)` (default: the LIBERO HDF5 reader)."""
    read = read or _read_hdf5
    episodes = []
    for ref in refs:
        arrays = read(ref, image_keys, lowdim_keys, image_size if resize else None)
        episodes.append({
            "episode_id": ref["episode_id"], "episode_index": int(ref["episode_index"]),
            "task_index": int(ref["task_index"]), "task_name": ref["task_name"], "source_file": ref["source_file"],
            "demo": ref["demo"], "split": ref["split"], "length": int(ref["length"]),
            "image_height": int(image_size[0]), "image_width": int(image_size[1]), **arrays,
        })
    return encode_episodes(episodes, image_keys, seq_widths(lowdim_keys))


def _read_hdf5(ref: Mapping[str, Any], image_keys, lowdim_keys, image_size) -> dict:
    return read_episode(ref["path"], ref["demo"], image_keys, lowdim_keys, image_size)


def add_feature_columns(table: pa.Table, backbone: FeatureBackbone, image_keys: Sequence[str],
                        batch_size: int) -> pa.Table:
    """Append feat_<view> = backbone(images) as list<fixed_size_list<float32, F>> columns."""
    per_key: dict[str, list[np.ndarray]] = {k: [] for k in image_keys}
    feat_cols = {feature_column(k) for k in image_keys}
    for ep in decode_episodes(table.select([c for c in table.column_names if c not in feat_cols])):
        for k in image_keys:
            per_key[k].append(compute_features(backbone, ep[k], batch_size))
    for k in image_keys:
        table = table.append_column(feature_column(k), seq_array(per_key[k], backbone.feature_dim))
    return table
