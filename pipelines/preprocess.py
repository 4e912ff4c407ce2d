"""`clad preprocess`: LIBERO demo files -> a Parquet episode dataset written with Ray Data.

Design: one row per EPISODE, not per window. A row holds the whole episode (images per view (T, H, W, 3),
every low-dim obs key, actions (T, 7), optional frozen-backbone features (T, F)), see
clad/data/episode_table.py. Windows for ANY foresight horizon tau / chunk length are cut at load time by a
per-episode flat_map (pipelines/dataset.py, clad/data/windows.py), so changing tau never re-runs this step,
the dataset is stored once instead of ~3x (prev/curr/next frames per window), and training still streams
it without loading the dataset into memory (one episode = a few MB at 128x128).

Stages:
  1. driver: find `*_demo.hdf5`, hash every file (threads); if manifest.json holds the same fingerprint
     (input hashes + config + schema version) the run is a no-op and says so.
  2. Ray tasks, one per file: open, validate headers/lengths/dtypes, read the small arrays, reject NaN/Inf,
     compute per-episode statistics (clad/data/hdf5_reader.scan_file). Nothing raises: bad data becomes a
     Rejection naming file, demo and reason.
  3. driver: dataset image size (config or the most common), split by seeded hash, task table, train
     statistics merged from the per-episode moments (clad/data/plan.py). The statistics therefore come from
     the same read that validates the data; the image pass below never re-reads anything for them.
  4. Ray Data per split: from_items(episode refs) -> map_batches(read + resize, 0.5 CPU tasks)
     -> [map_batches(FeatureActor, ActorPoolStrategy, fractional CPUs, GPUs when present)]
     -> write_parquet(episodes/<split>/, row group = 1 episode).
  5. driver: language embeddings (offline MiniLM), stats/tasks/rejections/config, and manifest.json last.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from clad import storage
from clad.config import load_config
from clad.data import outputs
from clad.data.episode_table import SCHEMA_VERSION
from clad.data.hdf5_reader import find_demo_files, scan_file
from clad.data.lerobot_reader import is_lerobot_dataset
from clad.data.manifest import (EPISODES_DIR, SPLITS, describe_files, existing_fingerprint, fingerprint, path_digest,
                                read_manifest)
from clad.data.plan import Plan, build_plan, require_episodes
from clad.data.preprocess_config import FeatureBackboneConfig, PreprocessConfig
from clad.errors import DataError
from pipelines.cli_args import add_overrides

log = logging.getLogger(__name__)

READ_CPUS = 0.5  # per read/scan task: whole-CPU tasks starve actor pools on 2-core machines (ray-stack.md §3)
FEATURE_POOL_SHARE = 0.5  # the feature actor pool may take half the CPUs; the read tasks get the rest


@dataclass
class PreprocessResult:
    out_dir: Path | str  # a URI when the dataset lives in object storage
    noop: bool
    manifest: dict
    elapsed_s: float

    def summary(self) -> str:
        c = self.manifest["counts"]
        steps = c["steps"]["train"] + c["steps"]["val"]
        if self.noop:
            head = (f"up to date: {self.out_dir} already holds this input and config "
                    f"(fingerprint {self.manifest['fingerprint'][:12]}); nothing to do")
        else:
            t = self.manifest["timings_s"]
            head = (f"wrote {self.out_dir} in {self.elapsed_s:.1f} s "
                    f"({steps / max(t.get('pipeline', self.elapsed_s), 1e-9):.0f} steps/s over scan+write, "
                    f"{self.manifest['timings_s'].get('ray_init', 0):.1f} s Ray start-up)")
        lines = [head,
                 f"  files {c['files']} ({c['files_rejected']} rejected), demos found {c['demos_found']}",
                 f"  train: {c['episodes']['train']} episodes, {c['steps']['train']} steps",
                 f"  val:   {c['episodes']['val']} episodes, {c['steps']['val']} steps",
                 f"  rejected: {c['rejected_demos']} demo(s), {c['files_rejected']} whole file(s)"
                 + (f", by reason {c['rejections_by_kind']}" if c['rejections_by_kind'] else ""),
                 f"  image size {self.manifest['image_size'][0]}x{self.manifest['image_size'][1]}, "
                 f"views {self.manifest['views']}, tasks {len(self.manifest['tasks'])}"]
        if c["rejections_by_kind"]:
            lines.append(f"  see {storage.join(self.out_dir, outputs.REJECTIONS)}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- Ray UDFs

def _read_batch(batch: pa.Table, image_keys, lowdim_keys, image_size, resize) -> pa.Table:
    from clad.data.convert import read_episodes_table

    return read_episodes_table(batch.to_pylist(), tuple(image_keys), tuple(lowdim_keys), tuple(image_size), resize)


class FeatureActor:
    """Loads the frozen backbone once per actor and appends feat_<view> columns to episode rows."""

    def __init__(self, backbone: dict, image_keys: list[str]):
        from clad.data.features import load_backbone

        self.cfg = FeatureBackboneConfig.model_validate(backbone)
        self.backbone = load_backbone(self.cfg)
        self.image_keys = list(image_keys)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from clad.data.convert import add_feature_columns

        return add_feature_columns(batch, self.backbone, self.image_keys, self.cfg.batch_size)


# ----------------------------------------------------------------------------------------------- stages

def _scan(files: list[Path], input_dir: Path, cfg: PreprocessConfig) -> list:
    import ray

    task = ray.remote(num_cpus=READ_CPUS, max_retries=1)(scan_file)
    refs = [task.remote(str(p), storage.relative(p, input_dir), cfg.image_keys, cfg.lowdim_keys) for p in files]
    return ray.get(refs)


def _write_split(refs: list[dict], split: str, out_dir: Path, cfg: PreprocessConfig, plan: Plan,
                 readers: int | None, feature_actors: int | None, source=None) -> None:
    import ray
    from ray.data import ActorPoolStrategy

    from pipelines.ray_runtime import size_pool

    path = storage.join(out_dir, EPISODES_DIR, split)  # a URI is written by Ray Data directly
    storage.makedirs(path)
    if not refs:
        return
    ds = ray.data.from_items(refs, override_num_blocks=len(refs))
    read_kwargs: dict[str, Any] = dict(num_cpus=READ_CPUS)
    if readers:
        read_kwargs["compute"] = ray.data.TaskPoolStrategy(size=min(readers, len(refs)))  # Ray warns if > inputs
    read_fn, fn_kwargs = _read_batch, dict(image_keys=list(cfg.image_keys), lowdim_keys=list(cfg.lowdim_keys),
                                           image_size=list(plan.image_size), resize=plan.resized)
    if source is not None:  # another input format (pipelines/preprocess_lerobot.py)
        from pipelines.preprocess_lerobot import read_batch

        read_fn = read_batch
        fn_kwargs.update(lowdim_keys=list(source.lowdim_keys), **source.read_kwargs())
    ds = ds.map_batches(read_fn, batch_size=1, batch_format="pyarrow", fn_kwargs=fn_kwargs, **read_kwargs)
    if cfg.feature_backbone is not None:
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        pool = size_pool(feature_actors, share=FEATURE_POOL_SHARE)
        gpu_each = min(1.0, gpus / pool.num_actors) if gpus else 0.0
        ds = ds.map_batches(FeatureActor, batch_size=1, batch_format="pyarrow",
                            fn_constructor_kwargs=dict(backbone=cfg.feature_backbone.to_dict(),
                                                       image_keys=list(cfg.image_keys)),
                            compute=ActorPoolStrategy(size=pool.num_actors), num_cpus=pool.cpus_per_actor,
                            **({"num_gpus": gpu_each} if gpu_each else {}))
    # one row group per episode: readers (store.py, Ray read tasks) then hold one episode at a time
    ds.write_parquet(str(path), min_rows_per_file=cfg.episodes_per_shard, row_group_size=1,
                     compression=cfg.compression)


def _find_data_error(err: BaseException) -> DataError | None:
    """The DataError behind a Ray task failure (Ray wraps it in RayTaskError/UserCodeException)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DataError):
            return DataError(str(e))
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    m = re.search(r"DataError: (.+)", str(err))
    return DataError(m.group(1).strip()) if m else None


def _feature_dim(out_dir: Path, cfg: PreprocessConfig) -> int | None:
    if cfg.feature_backbone is None:
        return None
    import pyarrow.parquet as pq

    from clad.data.episode_table import feature_column

    for split in SPLITS:
        for f in storage.list_files(storage.join(out_dir, EPISODES_DIR, split), ".parquet"):
            return pq.read_schema(storage.open_input(f)).field(feature_column(cfg.image_keys[0])).type.value_type.list_size
    return None


def check_input_dir(input_dir: str | Path, what: str = "--input") -> Path | str:
    """The input folder as an absolute path, or a normalised URI after checking it can be listed (a wrong
    bucket, missing credentials or a missing prefix fail here, naming the location and the fix). The Ray
    tasks then read each file from their node's cache (clad/storage.py local_copy), never a driver path."""
    if not storage.is_remote(input_dir):
        return Path(input_dir).expanduser().resolve()
    return storage.check_readable(storage.normalize(input_dir), what)


def run_preprocess(input_dir: str | Path, out_dir: str | Path, cfg: PreprocessConfig | None = None, *,
                   readers: int | None = None, feature_actors: int | None = None, ray_address: str | None = None,
                   force: bool = False, hash_threads: int = 4) -> PreprocessResult:
    """Preprocess every demo file under `input_dir` into `out_dir` (layout: clad/data/outputs.py).

    Re-running with the same inputs (by sha256) and config returns `noop=True` without starting Ray.
    Raises DataError when no demo is usable (rejections.json is still written).
    """
    cfg = cfg or PreprocessConfig()
    t0 = time.perf_counter()
    from pipelines.locking import check_folder_arg

    input_dir = check_input_dir(input_dir)
    out_dir = check_folder_arg(out_dir)  # a URI is probed for writing (wrong bucket, credentials) right here
    if not storage.is_remote(out_dir):
        out_dir = out_dir.resolve()  # workers write by absolute path, whatever their working folder
        if not storage.is_remote(input_dir) and (out_dir == input_dir or input_dir in out_dir.parents):
            raise DataError(f"--out {out_dir} is inside --input {input_dir}: choose an output folder outside the demos")
    source = None
    if is_lerobot_dataset(input_dir):  # format dispatch: a LeRobot dataset has meta/info.json
        from pipelines.preprocess_lerobot import load_source

        source = load_source(input_dir, cfg)
        files = source.files
    else:
        files = find_demo_files(input_dir)
    if not files:
        raise DataError(f"no *_demo.hdf5 files under {input_dir} (searched sub-folders too), and no LeRobot "
                        "dataset (meta/info.json) there")
    if cfg.feature_backbone is not None:  # fail on an unknown kind before any Ray work
        from clad.data.features import resolve_factory

        resolve_factory(cfg.feature_backbone.kind)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    infos = describe_files(input_dir, files, threads=hash_threads)
    timings["hash"] = time.perf_counter() - t
    extra = {}
    if cfg.feature_backbone is not None and cfg.feature_backbone.checkpoint_dir:
        extra["backbone_checkpoint"] = path_digest(cfg.feature_backbone.checkpoint_dir)
    fp = fingerprint(cfg.to_dict(), infos, SCHEMA_VERSION, extra)
    from pipelines import logs

    logs.attach_log_file(out_dir)  # only now: a refused command leaves no folder behind
    if not force and existing_fingerprint(out_dir) == fp:
        return PreprocessResult(out_dir, True, read_manifest(out_dir), time.perf_counter() - t0)

    from pipelines.locking import lock_folder
    from pipelines.ray_runtime import init_ray

    with lock_folder(out_dir, "clad preprocess"):  # before Ray: a second writer is refused at once
        t = time.perf_counter()
        init_ray(address=ray_address)
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        timings["ray_init"] = time.perf_counter() - t
        storage.makedirs(out_dir)
        return _build(input_dir, out_dir, cfg, files, infos, fp, timings, t0, readers, feature_actors, source)


def _build(input_dir: Path, out_dir: Path, cfg: PreprocessConfig, files: list[Path], infos, fp: str,
           timings: dict[str, float], t0: float, readers: int | None, feature_actors: int | None,
           source=None) -> PreprocessResult:
    outputs.clear_outputs(out_dir)

    t = time.perf_counter()
    scans = source.scan(READ_CPUS) if source is not None else _scan(files, input_dir, cfg)
    timings["scan"] = time.perf_counter() - t
    plan = build_plan(input_dir, scans, cfg)
    for r in plan.rejections:
        log.warning("rejected %s [%s]", r.message, r.kind)
    if not plan.episodes:
        outputs.write_rejections(out_dir, plan)
    require_episodes(plan, input_dir)

    t = time.perf_counter()
    # The language model loads and encodes in a driver thread while Ray writes the shards: the driver
    # only waits during the write, and loading the model costs several seconds.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clad-language") as pool:
        language_job = pool.submit(outputs.write_language, out_dir, plan)
        try:
            for split in SPLITS:
                _write_split([e.to_item() for e in plan.split(split)], split, out_dir, cfg, plan, readers,
                             feature_actors, source)
        except Exception as err:  # surface a DataError raised inside a Ray task as itself, without Ray's wrapping
            data_err = _find_data_error(err)
            if data_err is None:
                raise
            raise data_err from err
        timings["write"] = time.perf_counter() - t
        timings["pipeline"] = timings["scan"] + timings["write"]
        t = time.perf_counter()
        language_info = language_job.result()
    timings["language_wait"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    manifest = outputs.write_metadata(out_dir, input_dir=input_dir, cfg=cfg, plan=plan, files=infos, fp=fp,
                                      language_info=language_info, feature_dim=_feature_dim(out_dir, cfg),
                                      shards=outputs.shard_listing(out_dir), timings=timings,
                                      **(source.manifest_extra() if source is not None else {}))
    return PreprocessResult(out_dir, False, manifest, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------- CLI

def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    overrides = list(args.overrides)
    if args.image_size is not None:
        overrides.append(f"image_size={args.image_size}")
    if args.val_fraction is not None:
        overrides.append(f"val_fraction={args.val_fraction}")
    if args.features is not None:
        overrides.append(f"feature_backbone.kind={args.features}")
    return load_config(PreprocessConfig, args.config, overrides=overrides)


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    result = run_preprocess(args.input, args.out, cfg, readers=args.readers, feature_actors=args.feature_actors,
                            ray_address=args.address, force=args.force)
    print(result.summary())
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("preprocess", help="LIBERO demo files -> Parquet episode dataset (Ray Data)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="folder with *_demo.hdf5 files (sub-folders are searched), "
                                                  "or a LeRobot v3.0 dataset (meta/info.json, data/, videos/)")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--config", help="YAML/JSON PreprocessConfig (fields: views, image_size, val_fraction, "
                                    "split_seed, feature_backbone{kind,checkpoint_dir,options,batch_size}, "
                                    "compression, episodes_per_shard)")
    add_overrides(p, "-o split_seed=3")
    p.add_argument("--image-size", type=int, help="resize images to N x N (default: keep native)")
    p.add_argument("--val-fraction", type=float, help="validation fraction (default 0.1)")
    p.add_argument("--features", metavar="KIND",
                   help="frozen backbone kind for precomputed features (e.g. random_conv)")
    p.add_argument("--readers", type=int, help="max concurrent read tasks (default: Ray decides)")
    p.add_argument("--feature-actors", type=int, help="feature actor pool size (default: from cluster CPUs)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a local instance)")
    p.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")
    p.set_defaults(func=_run)
