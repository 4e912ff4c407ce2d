"""The on-disk episode row: one Parquet row per episode, and its encode/decode to numpy (pyarrow only).

Columns (schema version 1):

| column               | Arrow type                                  | decoded numpy                  |
|----------------------|---------------------------------------------|--------------------------------|
| episode_id           | string  "<source_file>#<demo>"              | str                            |
| episode_index        | int64   position in the sorted accepted set | int                            |
| task_index           | int64   index into tasks.json               | int                            |
| task_name, source_file, demo, split | string                       | str                            |
| length               | int64   T                                   | int                            |
| image_height/width   | int32                                       | int                            |
| <view obs key>       | large_binary: raw C-order (T, H, W, 3) uint8 | (T, H, W, 3) uint8            |
|   e.g. agentview_rgb, eye_in_hand_rgb (as stored: manifest image_orientation)                        |
| actions              | list<fixed_size_list<float32, 7>>           | (T, 7) float32                 |
| <low-dim obs key>    | list<fixed_size_list<float32, D>>           | (T, D) float32                 |
|   gripper_states 2, joint_states 7, ee_states 6, ee_pos 3, ee_ori 3                                  |
| feat_<view obs key>  | list<fixed_size_list<float32, F>> (only with a feature backbone) | (T, F) float32 |

Why raw bytes for images rather than Ray tensor columns: T varies per episode, so tensor columns would be
Ray's variable-shaped extension type, which plain pyarrow readers (and other Ray versions) see as opaque
structs. Plain binary + the shape from `length`/`image_height`/`image_width` decodes anywhere with zero
copies. Window samples built from these rows are fixed-shape and become proper tensor columns.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1

META_COLUMNS = ("episode_id", "episode_index", "task_index", "task_name", "source_file", "demo", "split",
                "length", "image_height", "image_width")
_META_TYPES = {"episode_index": pa.int64(), "task_index": pa.int64(), "length": pa.int64(),
               "image_height": pa.int32(), "image_width": pa.int32()}


def feature_column(image_key: str) -> str:
    return f"feat_{image_key}"


def seq_array(arrays: Sequence[np.ndarray], width: int) -> pa.Array:
    """List of (T_i, width) float arrays -> list<fixed_size_list<float32, width>> (one copy)."""
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = (np.concatenate([np.asarray(a, np.float32).reshape(-1) for a in arrays]) if arrays
            else np.zeros(0, np.float32))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.FixedSizeListArray.from_arrays(pa.array(flat), width))


def encode_episodes(episodes: Sequence[Mapping[str, Any]], image_keys: Sequence[str],
                    seq_widths: Mapping[str, int]) -> pa.Table:
    """Episodes as dicts (meta fields + arrays) -> a pa.Table with the schema above.

    `seq_widths` maps every per-step float column (actions, low-dim keys, feat_* keys) to its width D.
    """
    cols: dict[str, pa.Array] = {}
    for name in META_COLUMNS:
        cols[name] = pa.array([ep[name] for ep in episodes], _META_TYPES.get(name, pa.string()))
    for key in image_keys:
        cols[key] = pa.array([np.ascontiguousarray(ep[key], np.uint8).tobytes() for ep in episodes], pa.large_binary())
    for key, width in seq_widths.items():
        cols[key] = seq_array([ep[key] for ep in episodes], width)
    return pa.table(cols)


def _seq_rows(col: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """list<fixed_size_list<float32, D>> column -> one (T_i, D) float32 view per row (zero copy)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    inner = arr.values  # the child FixedSizeListArray; list offsets index into it
    width = inner.type.list_size
    flat = inner.flatten().to_numpy(zero_copy_only=False)
    mat = flat.reshape(-1, width)
    offsets = arr.offsets.to_numpy()
    return [mat[o:e] for o, e in zip(offsets[:-1], offsets[1:])]


def decode_episodes(table: pa.Table | pa.RecordBatch) -> Iterator[dict[str, Any]]:
    """pa.Table/RecordBatch of episode rows -> dicts of python meta values and numpy arrays (views where
    possible; images are read-only views onto the Arrow buffers)."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    names = table.column_names
    meta = {n: table.column(n).to_pylist() for n in names if n in META_COLUMNS}
    n_rows = table.num_rows
    types = {n: table.schema.field(n).type for n in names}
    seq_cols = [n for n in names if pa.types.is_list(types[n])]
    bin_cols = [n for n in names if pa.types.is_large_binary(types[n]) or pa.types.is_binary(types[n])]
    seq = {n: _seq_rows(table.column(n)) for n in seq_cols}
    for i in range(n_rows):
        ep: dict[str, Any] = {n: meta[n][i] for n in meta}
        T, H, W = ep["length"], ep["image_height"], ep["image_width"]
        for n in bin_cols:
            buf = table.column(n)[i].as_buffer()
            ep[n] = np.frombuffer(buf, np.uint8).reshape(T, H, W, 3)
        for n in seq_cols:
            ep[n] = seq[n][i]
        yield ep
