"""A feature set: the frozen encoder's fp16 features of every frame of a preprocessed dataset (numpy only).

Layout (default place: `<dataset>/features/<encoder id>/`, written by `clad features`):

    feature_set.json                 format, encoder identity + id, dataset fingerprint, views, F, complete
    <split>/<parquet stem>-<rg>.npz  one shard per episode (= per Parquet row group): per view obs key a
                                     (T, F) float16 array, plus `episode_id` and `length` for checking

A feature set may live at a local path or an object-storage URI (clad/storage.py). A shard is written
atomically (a temporary name renamed locally, a whole object in a bucket), so a shard that exists is whole: an
interrupted extraction resumes by skipping existing shards. Readers of a set in a bucket (training workers)
read a copy cached once per node. `complete` turns true only after every episode has one.
A feature set is refused (FeatureSetError naming which) when it was made by another encoder or for
another dataset (fingerprint) than the one asked for.
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from clad import storage
from clad.data.manifest import read_manifest
from clad.errors import DataError

FORMAT = "clad-feature-set/1"
MANIFEST = "feature_set.json"
FEATURES_DIR = "features"


class FeatureSetError(DataError):
    """A feature set is missing, incomplete, or made by another encoder / for another dataset."""


def default_dir(dataset_dir: str | Path, encoder_id: str) -> str:
    return storage.join(storage.normalize(dataset_dir), FEATURES_DIR, encoder_id)


def unit_name(parquet_file: str | Path, row_group: int) -> str:
    """The shard name of one episode: its Parquet file stem and row group (known before reading anything)."""
    return f"{Path(parquet_file).stem}-{int(row_group):04d}"


def shard_path(root: str | Path, split: str, unit: str) -> str:
    return storage.join(root, split, f"{unit}.npz")


def existing_units(root: str | Path, split: str) -> set[str]:
    """The units of `split` that have a shard (one listing, not one request per shard)."""
    return {storage.name(f)[:-len(".npz")] for f in storage.list_files(storage.join(root, split), ".npz")}


def dataset_fingerprint(dataset_dir: str | Path) -> str:
    return str(read_manifest(dataset_dir).get("fingerprint", ""))


def read_feature_manifest(root: str | Path) -> dict[str, Any]:
    path = storage.join(root, MANIFEST)
    if not storage.is_file(path):
        raise FeatureSetError(f"{root} is not a feature set ({MANIFEST} is missing): run `clad features` first")
    try:
        meta = storage.read_json(path)
    except json.JSONDecodeError as err:
        raise FeatureSetError(f"{path} is not valid JSON ({err}): delete {root} and re-run `clad features`") from None
    if meta.get("format") != FORMAT:
        raise FeatureSetError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}: delete {root} and re-run")
    return meta


def _write_json(path: str, data: dict) -> None:
    storage.write_json(path, data, indent=2, sort_keys=True)  # atomic, locally and in a bucket


def check_matches(meta: Mapping[str, Any], root: str | Path, *, encoder_id: str | None = None,
                  identity: Mapping[str, Any] | None = None, fingerprint: str | None = None,
                  dataset_dir: str | Path | None = None) -> None:
    """Refuse a feature set made by another encoder or for another dataset; the message says which."""
    if fingerprint is not None and meta.get("dataset_fingerprint") != fingerprint:
        raise FeatureSetError(
            f"feature set {root} was made for another dataset: fingerprint {str(meta.get('dataset_fingerprint'))[:12]} "
            f"(of {meta.get('dataset_dir')}), but {dataset_dir or 'the dataset'} has {fingerprint[:12]} (it was "
            "preprocessed again or is another dataset): delete the feature set and re-run `clad features`")
    if encoder_id is not None and meta.get("encoder_id") != encoder_id:
        theirs, ours = meta.get("encoder", {}), dict(identity or {})
        diff = [f"{k}: feature set {theirs.get(k)!r} vs requested {ours.get(k)!r}"
                for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
        raise FeatureSetError(
            f"feature set {root} was made by another encoder (id {meta.get('encoder_id')}, requested {encoder_id}"
            + (": " + "; ".join(diff) if diff else "") + "): extract features with this encoder (`clad features`) "
            "or point at the matching feature set")


def open_for_writing(root: str | Path, identity: Mapping[str, Any], encoder_id: str, dataset_dir: str | Path,
                     views: list[str], feature_dim: int) -> dict[str, Any]:
    """Create (or re-open, to resume) a feature set; refuse one made by another encoder or for another dataset."""
    root = storage.normalize(root)
    fp = dataset_fingerprint(dataset_dir)
    if storage.is_file(storage.join(root, MANIFEST)):
        meta = read_feature_manifest(root)
        check_matches(meta, root, encoder_id=encoder_id, identity=identity, fingerprint=fp, dataset_dir=dataset_dir)
        return meta
    if storage.is_remote(root) and storage.list_files(root, recursive=True) or \
            not storage.is_remote(root) and Path(root).is_dir() and any(Path(root).iterdir()):
        raise FeatureSetError(f"{root} exists, is not empty and holds no {MANIFEST}: choose another output folder")
    storage.makedirs(root)
    meta = {"format": FORMAT, "encoder": dict(identity), "encoder_id": encoder_id, "dataset_fingerprint": fp,
            "dataset_dir": storage.normalize(dataset_dir), "views": list(views), "feature_dim": int(feature_dim),
            "complete": False, "counts": {}}
    _write_json(storage.join(root, MANIFEST), meta)
    return meta


def write_shard(root: str | Path, split: str, unit: str, episode_id: str, feats: Mapping[str, np.ndarray]) -> Path:
    """One episode's features, per view obs key (T, F), stored as float16; atomic (storage.write_bytes)."""
    path = shard_path(root, split, unit)
    lengths = {int(np.shape(a)[0]) for a in feats.values()}
    if len(lengths) != 1:
        raise ValueError(f"views of episode {episode_id} have different lengths {sorted(lengths)}")
    buf = io.BytesIO()
    np.savez(buf, episode_id=np.array(episode_id), length=np.array(lengths.pop()),
             **{k: np.asarray(v, np.float16) for k, v in feats.items()})
    return storage.write_bytes(path, buf.getvalue())


def finish(root: str | Path, expected: Mapping[str, list[str]]) -> dict[str, Any]:
    """Mark the feature set complete if every expected unit (per split) has its shard; returns the manifest."""
    meta = read_feature_manifest(root)
    missing = {}
    for s, units in expected.items():
        have = existing_units(root, s)
        missing[s] = [u for u in units if u not in have]
    missing = {s: m for s, m in missing.items() if m}
    if missing:
        raise FeatureSetError(f"feature set {root} lacks shards {missing}; re-run `clad features` to resume")
    meta["complete"] = True
    meta["counts"] = {s: len(u) for s, u in expected.items()}
    _write_json(storage.join(root, MANIFEST), meta)
    return meta


def open_for_reading(root: str | Path, dataset_dir: str | Path, *, encoder_id: str | None = None,
                     identity: Mapping[str, Any] | None = None, views: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The manifest of a complete feature set that fits `dataset_dir` (and the encoder, when given)."""
    meta = read_feature_manifest(root)
    check_matches(meta, root, encoder_id=encoder_id, identity=identity, fingerprint=dataset_fingerprint(dataset_dir),
                  dataset_dir=dataset_dir)
    if not meta.get("complete"):
        raise FeatureSetError(f"feature set {root} is incomplete (an extraction was interrupted): re-run "
                              "`clad features` with the same arguments to finish it")
    if views is not None and tuple(meta["encoder"]["cameras"]) != tuple(views):
        raise FeatureSetError(f"feature set {root} holds cameras {meta['encoder']['cameras']}, the model reads "
                              f"{list(views)}: extract with matching vision.cameras")
    return meta


def load_shard(root: str | Path, split: str, unit: str, episode_id: str, length: int,
               keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One episode's features per view obs key, (T, F) float16, checked against the episode row it belongs to.
    A feature set in a bucket is read from this node's cached copy (fetched once, on the first shard)."""
    local = storage.local_copy(root) if not storage.is_remote(root) else \
        _local_root(str(root), storage.stat(storage.join(root, MANIFEST)))
    path = Path(local) / split / f"{unit}.npz"
    if not path.is_file():
        raise FeatureSetError(f"{path} is missing (episode {episode_id}): re-run `clad features` to resume")
    with np.load(path) as z:
        if str(z["episode_id"]) != episode_id or int(z["length"]) != int(length):
            raise FeatureSetError(f"{path} holds episode {z['episode_id']} ({int(z['length'])} steps), the dataset "
                                  f"has {episode_id} ({length} steps) there: delete the feature set and re-extract")
        missing = [k for k in keys if k not in z.files]
        if missing:
            raise FeatureSetError(f"{path} has no features for {missing}")
        return {k: z[k] for k in keys}


@functools.lru_cache(maxsize=4)
def _local_root(root: str, manifest_stat: tuple) -> str:
    """The node's cached copy of a remote feature set, resolved once per process and manifest version (one
    HEAD per shard instead of listing the bucket; a re-extracted set rewrites its manifest, so a long-lived
    Ray worker never reads a stale copy)."""
    return str(storage.local_copy(root))
