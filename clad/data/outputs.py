"""Writing the dataset's metadata files (everything except the Parquet shards) and clearing stale outputs.

    <out>/
      episodes/train/*.parquet, episodes/val/*.parquet   episode rows (clad/data/episode_table.py)
      stats.json          per-dim min/max/mean/std/count of actions and low-dim obs over the train split
      tasks.json          task index, name, instruction, files; embedding model and dimension
      language.safetensors  "embeddings": (num_tasks, E) float32, row = task_index
      rejections.json     every rejected file/demo with kind and reason
      config.json         the PreprocessConfig used
      manifest.json       written last: inputs (sha256, size, mtime), counts, schema, fingerprint
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from clad import __version__, storage
from clad.data import language
from clad.data.conventions import OPENGL
from clad.data.episode_table import SCHEMA_VERSION, feature_column
from clad.data.libero_layout import LOWDIM_KEYS
from clad.data.manifest import (EPISODES_DIR, LANGUAGE, MANIFEST, REJECTIONS, SPLITS, STATS, TASKS, FileInfo,
                                write_json)
from clad.data.plan import Plan
from clad.data.preprocess_config import PreprocessConfig

OWNED = (MANIFEST, STATS, TASKS, LANGUAGE, REJECTIONS, "config.json")


def clear_outputs(out_dir: Path) -> None:
    """Remove what a previous run wrote (manifest first, so a crash mid-way never looks finished); leaves
    any other files in the folder alone."""
    for name in OWNED:  # `out_dir` may be a local folder or a URI (clad/storage.py)
        storage.delete(storage.join(out_dir, name))
    storage.delete(storage.join(out_dir, EPISODES_DIR))


def write_rejections(out_dir: Path, plan_or_list) -> None:
    rej = plan_or_list.rejections if isinstance(plan_or_list, Plan) else plan_or_list
    write_json(storage.join(out_dir, REJECTIONS), {"count": len(rej), "rejections": [r.to_json() for r in rej]})


def write_language(out_dir: Path, plan: Plan) -> dict:
    """Embed every task's instruction; returns the language section of the manifest."""
    emb = language.encode_instructions([t.instruction for t in plan.tasks])
    language.save_embeddings(storage.join(out_dir, LANGUAGE), emb)
    doc = {"model": language.MODEL_NAME, "dim": int(emb.shape[1]), "normalized": True, "file": LANGUAGE,
           "tensor": language.TENSOR_NAME, "tasks": [t.to_json() for t in plan.tasks]}
    write_json(storage.join(out_dir, TASKS), doc)
    return {k: doc[k] for k in ("model", "dim", "normalized", "file", "tensor")}


def write_metadata(out_dir: Path, *, input_dir: Path, cfg: PreprocessConfig, plan: Plan, files: Sequence[FileInfo],
                   fp: str, language_info: dict, feature_dim: int | None, shards: dict[str, list[str]],
                   timings: dict[str, float], lowdim_keys: Sequence[str] | None = None,
                   image_orientation: str = OPENGL, extra: dict[str, Any] | None = None) -> dict:
    """stats.json, rejections.json, config.json and finally manifest.json. Returns the manifest.

    `lowdim_keys` are the low-dim columns written (default: all of the config's), `image_orientation` the
    frames' orientation (clad/data/conventions.py), `extra` format-specific sections (e.g. "lerobot")."""
    write_json(storage.join(out_dir, STATS), plan.stats)
    write_rejections(out_dir, plan)
    storage.write_json(storage.join(out_dir, "config.json"), cfg.to_dict(), indent=2, sort_keys=True)
    image_keys = cfg.image_keys
    lowdim = cfg.lowdim_keys if lowdim_keys is None else tuple(lowdim_keys)
    columns = {"image": list(image_keys), "actions": 7, "lowdim": {k: LOWDIM_KEYS[k] for k in lowdim}}
    if feature_dim:
        columns["features"] = {feature_column(k): feature_dim for k in image_keys}
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "clad_version": __version__,
        "created_unix": time.time(),
        "fingerprint": fp,
        "input_dir": str(input_dir),
        "files": [dict(f.to_json(), **plan.per_file.get(f.rel, {})) for f in files],
        "counts": plan.counts(),
        "image_size": list(plan.image_size),
        "resized": plan.resized,
        "views": list(cfg.views),
        "image_orientation": image_orientation,
        "image_keys": list(image_keys),
        "columns": columns,
        "feature_backbone": (None if cfg.feature_backbone is None
                             else dict(cfg.feature_backbone.to_dict(), feature_dim=feature_dim)),
        "tasks": [t.to_json() for t in plan.tasks],
        "language": language_info,
        "splits": {s: {"dir": f"{EPISODES_DIR}/{s}", "shards": shards.get(s, [])} for s in SPLITS},
        "stats_file": STATS,
        "rejections_file": REJECTIONS,
        "config": cfg.to_dict(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        **(extra or {}),
    }
    write_json(storage.join(out_dir, MANIFEST), manifest)
    return manifest


def shard_listing(out_dir: Path) -> dict[str, list[str]]:
    return {s: [storage.name(f) for f in storage.list_files(storage.join(out_dir, EPISODES_DIR, s), ".parquet")]
            for s in SPLITS}


__all__ = ["clear_outputs", "write_rejections", "write_language", "write_metadata", "shard_listing"]
