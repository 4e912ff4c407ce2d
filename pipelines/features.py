"""`clad features`: run a frozen encoder once over every frame of a preprocessed dataset (Ray Data batch inference).

    clad features DATASET --stage1 outputs/train/stage1                         # the stage-1 CNN (CLaD stage 2)
    clad features DATASET --backbone decisionnce_rn50 --weights weights/dnce --cameras agentview

A Ray Data job: episode units (Parquet file, row group) -> read tasks (fractional CPU) -> an actor pool that
builds the encoder once per actor (a GPU each when the cluster has GPUs) and writes one fp16 shard per
episode. The feature set goes to `<dataset>/features/<encoder id>/` (clad/data/feature_set.py). Re-running
is a no-op when it is complete and resumes an interrupted one (existing shards are skipped); a feature set of
another encoder or another dataset in the output folder is refused before any work starts.

Train from it with `-o loader.feature_set=<that folder>`.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from clad.data import feature_set as fs
from clad.data.libero_layout import CAMERA_TO_OBS_KEY
from clad.data.manifest import SPLITS
from clad.errors import ConfigError

log = logging.getLogger(__name__)

READ_CPUS = 0.25  # read tasks are light; whole-CPU tasks would starve the encoder actors on small machines
FRAMES_PER_CALL = 64  # frames per encoder forward pass (bounds activation memory)


def episode_units(dataset_dir: str | Path) -> list[dict[str, Any]]:
    """Every episode of every split as a unit {split, file, row_group, unit} (`file` may be a URI)."""
    from clad.data.store import split_files

    from clad.data.store import parquet_file

    return [{"split": s, "file": str(f), "row_group": g, "unit": fs.unit_name(f, g)}
            for s in SPLITS for f in split_files(dataset_dir, s) for g in range(parquet_file(f).num_row_groups)]


def _read_unit(batch: dict[str, np.ndarray], image_keys: list[str]):
    """One unit -> its episode row (image columns only) plus the unit's split and name."""
    import pyarrow as pa

    from clad.data.store import DECODE_COLUMNS, parquet_file

    cols = sorted(set(image_keys) | DECODE_COLUMNS)
    tables = []
    for f, g, s, u in zip(batch["file"], batch["row_group"], batch["split"], batch["unit"]):
        t = parquet_file(str(f)).read_row_group(int(g), columns=cols)  # a path or a URI, opened where it runs
        tables.append(t.append_column("fs_split", pa.array([str(s)] * t.num_rows))
                       .append_column("fs_unit", pa.array([str(u)] * t.num_rows)))
    return pa.concat_tables(tables)


class EncodeAndWrite:
    """Actor: builds the frozen encoder once, then encodes whole episodes and writes their shards."""

    def __init__(self, spec: dict, root: str, image_keys: list[str]):
        from clad.model.frozen_encoder import EncoderSpec, FrozenEncoder

        self.encoder = FrozenEncoder.build(EncoderSpec.model_validate(spec))
        self.root, self.image_keys = root, image_keys

    def __call__(self, table) -> dict[str, np.ndarray]:
        from clad.data.episode_table import decode_episodes

        splits, units = table.column("fs_split").to_pylist(), table.column("fs_unit").to_pylist()
        out = {"unit": [], "frames": []}
        for ep, split, unit in zip(decode_episodes(table.drop_columns(["fs_split", "fs_unit"])), splits, units):
            feats = encode_episode(self.encoder, ep, self.image_keys)
            fs.write_shard(self.root, split, unit, ep["episode_id"], feats)
            out["unit"].append(unit)
            out["frames"].append(int(ep["length"]))
        return {k: np.asarray(v) for k, v in out.items()}


def encode_episode(encoder, ep: dict, image_keys: list[str]) -> dict[str, np.ndarray]:
    """(T, H, W, 3) per view -> {view key: (T, F) float32}, FRAMES_PER_CALL frames at a time."""
    import torch

    T = int(ep["length"])
    parts = []
    for s in range(0, T, FRAMES_PER_CALL):
        rgb = np.stack([ep[k][s:s + FRAMES_PER_CALL] for k in image_keys], axis=1)  # (n, V, H, W, 3)
        parts.append(encoder(torch.from_numpy(np.ascontiguousarray(rgb.transpose(0, 1, 4, 2, 3)))).numpy())
    feats = np.concatenate(parts)  # (T, V, F)
    return {k: feats[:, i] for i, k in enumerate(image_keys)}


def prepare(dataset_dir: str | Path, spec, out: str | Path | None = None):
    """Driver side, before any Ray work: build the encoder (its identity), open/check the feature set, list units.
    Returns (root, encoder, all units, units still to do)."""
    from clad.model.frozen_encoder import FrozenEncoder

    from clad import storage

    encoder = FrozenEncoder.build(spec, device="cpu")
    root = storage.normalize(out) if out else fs.default_dir(dataset_dir, encoder.id)  # a path or a URI
    if storage.is_remote(root):
        storage.check_writable(root, "--out")  # a wrong bucket or missing credentials: before any work
    fs.open_for_writing(root, encoder.identity, encoder.id, dataset_dir, list(encoder.views), encoder.feature_dim)
    units = episode_units(dataset_dir)
    have = {s: fs.existing_units(root, s) for s in SPLITS}
    todo = [u for u in units if u["unit"] not in have[u["split"]]]
    return root, encoder, units, todo


def _expected(units: list[dict]) -> dict[str, list[str]]:
    return {s: [u["unit"] for u in units if u["split"] == s] for s in SPLITS}


def extract_features(dataset_dir: str | Path, spec, out: str | Path | None = None, *, actors: int | None = None,
                     use_gpu: bool | None = None) -> dict[str, Any]:
    """The Ray Data job. Returns {"root", "encoder_id", "encoded", "skipped", "frames", "wall_s"}."""
    import ray

    t0 = time.perf_counter()
    root, encoder, units, todo = prepare(dataset_dir, spec, out)
    image_keys = [CAMERA_TO_OBS_KEY[c] for c in encoder.views]
    frames = 0
    if todo:
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        use_gpu = gpus >= 1 if use_gpu is None else use_gpu
        if use_gpu and gpus < 1:
            raise ConfigError("--gpu: the Ray cluster has no GPU")
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        n = actors or (int(gpus) if use_gpu else max(1, int(cpus - READ_CPUS)))
        n = max(1, min(n, len(todo)))
        spec_dict = spec.to_dict()
        ds = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
            _read_unit, batch_size=1, batch_format="numpy", num_cpus=READ_CPUS, fn_kwargs={"image_keys": image_keys})
        ds = ds.map_batches(EncodeAndWrite, batch_size=1, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=n),
                            num_cpus=0 if use_gpu else max(0.1, min(1.0, (cpus - READ_CPUS) / n)),
                            num_gpus=1 if use_gpu else 0,
                            fn_constructor_kwargs={"spec": spec_dict, "root": str(root), "image_keys": image_keys})
        for row in ds.iter_rows():
            frames += int(row["frames"])
    meta = fs.finish(root, _expected(units))
    return {"root": str(root), "encoder_id": meta["encoder_id"], "encoded": len(todo),
            "skipped": len(units) - len(todo), "frames": frames, "wall_s": time.perf_counter() - t0}


def extract_features_local(dataset_dir: str | Path, spec, out: str | Path | None = None) -> dict[str, Any]:
    """The same extraction as one plain loop in this process (the benchmark's baseline; no Ray)."""
    from clad.data.episode_table import decode_episodes
    from clad.data.store import DECODE_COLUMNS, parquet_file

    t0 = time.perf_counter()
    root, encoder, units, todo = prepare(dataset_dir, spec, out)
    image_keys = [CAMERA_TO_OBS_KEY[c] for c in encoder.views]
    frames = 0
    for u in todo:
        table = parquet_file(u["file"]).read_row_group(u["row_group"], columns=sorted(set(image_keys) | DECODE_COLUMNS))
        for ep in decode_episodes(table):
            fs.write_shard(root, u["split"], u["unit"], ep["episode_id"], encode_episode(encoder, ep, image_keys))
            frames += int(ep["length"])
    meta = fs.finish(root, _expected(units))
    return {"root": str(root), "encoder_id": meta["encoder_id"], "encoded": len(todo),
            "skipped": len(units) - len(todo), "frames": frames, "wall_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------------------
# CLI


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="cache a frozen encoder's fp16 features of every frame (Ray Data)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="a dataset written by `clad preprocess`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--stage1", metavar="DIR", help="a stage-1 run/final/checkpoint folder: encode with its vision part")
    src.add_argument("--backbone", choices=["decisionnce_rn50", "hf_clip", "open_clip"],
                     help="a frozen pretrained backbone (weights from --weights)")
    p.add_argument("--weights", metavar="DIR", help="the backbone's folder (model.safetensors + config.json)")
    p.add_argument("--cameras", nargs="+", default=["agentview"], choices=sorted(CAMERA_TO_OBS_KEY),
                   help="views to encode with a pretrained backbone (a stage-1 checkpoint names its own)")
    p.add_argument("--open-clip-model", default="RN50")
    p.add_argument("--no-rotate180", action="store_true", help="do not turn the stored (OpenGL) frames upright")
    p.add_argument("--out", help="feature set folder or URI (default: DATASET/features/<encoder id>)")
    p.add_argument("--actors", type=int, help="encoder actors (default: one per GPU, else one per CPU)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a new local cluster)")
    p.set_defaults(func=main)


def spec_from_args(args: argparse.Namespace):
    from clad import storage
    from clad.model.frozen_encoder import EncoderSpec

    if args.stage1:
        return EncoderSpec(source="stage1", checkpoint=storage.normalize(args.stage1))
    if not args.weights:
        raise ConfigError(f"--backbone {args.backbone} needs --weights DIR (model.safetensors + config.json; convert "
                          "an official DecisionNCE .pth with `python -m clad.model.decisionnce_convert`)")
    return EncoderSpec(source="pretrained", backbone=args.backbone, checkpoint=storage.normalize(args.weights),
                       cameras=tuple(args.cameras), rotate180=not args.no_rotate180,
                       open_clip_model=args.open_clip_model)


def main(args: argparse.Namespace) -> int:
    from pipelines.ray_runtime import init_ray

    from clad import storage

    # every location may be a URI: the dataset and the encoder are read where the tasks run (per-node cache)
    for flag, value in (("DATASET", args.dataset), ("--stage1", args.stage1), ("--weights", args.weights)):
        if value and storage.is_remote(value):
            storage.check_readable(value, flag)
    spec = spec_from_args(args)
    dataset = storage.normalize(args.dataset)
    prepare(dataset, spec, args.out)  # every refusal on the driver, before Ray starts
    init_ray(address=args.address)
    res = extract_features(dataset, spec, args.out, actors=args.actors)
    print(f"feature set {res['root']} (encoder {res['encoder_id']}): {res['encoded']} episodes encoded, "
          f"{res['skipped']} already there, {res['frames']} frames in {res['wall_s']:.1f} s")
    print(f"train from it: -o loader.feature_set={res['root']}")
    return 0
