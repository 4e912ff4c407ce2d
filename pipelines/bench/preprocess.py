"""Benchmark: Ray Data preprocessing vs a plain single-process h5py loop doing the same work.

Both sides: find + hash files, scan/validate + per-episode statistics, plan (size, split, tasks, train
stats), read every accepted episode in full (+ resize, + features when configured), write Parquet with one
row group per episode, write stats/tasks/language/rejections/manifest. The language model is loaded once
before timing (both sides share it), and Ray start-up is timed separately from the Ray runs.

    python -m pipelines.bench.preprocess --input DIR [--image-size 64] [--features random_conv] [--json out.json]
    python -m pipelines.bench.preprocess --synthetic 4x10x120 --synthetic-size 128   # tasks x demos x steps

Prints a side-by-side table and the ratio plain/ray (>1 means Ray is faster); writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from clad.data import outputs
from clad.data.convert import add_feature_columns, read_episodes_table
from clad.data.episode_table import SCHEMA_VERSION
from clad.data.features import load_backbone
from clad.data.hdf5_reader import find_demo_files, scan_file
from clad.data.manifest import EPISODES_DIR, SPLITS, describe_files, fingerprint
from clad.data.plan import build_plan, require_episodes
from clad.data.preprocess_config import FeatureBackboneConfig, PreprocessConfig

from pipelines.bench.report import machine, print_table, scratch, write_report


def plain_preprocess(input_dir: Path, out_dir: Path, cfg: PreprocessConfig) -> dict:
    """The same work as pipelines.preprocess.run_preprocess, in one process without Ray. Returns timings."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    input_dir, out_dir = input_dir.resolve(), out_dir.resolve()
    files = find_demo_files(input_dir)
    infos = describe_files(input_dir, files)  # same hashing code as the Ray run
    fp = fingerprint(cfg.to_dict(), infos, SCHEMA_VERSION)
    timings["hash"] = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs.clear_outputs(out_dir)
    t = time.perf_counter()
    scans = [scan_file(p, p.relative_to(input_dir).as_posix(), cfg.image_keys, cfg.lowdim_keys) for p in files]
    timings["scan"] = time.perf_counter() - t
    plan = build_plan(input_dir, scans, cfg)
    require_episodes(plan, input_dir)
    t = time.perf_counter()
    backbone = load_backbone(cfg.feature_backbone) if cfg.feature_backbone else None
    for split in SPLITS:
        d = out_dir / EPISODES_DIR / split
        d.mkdir(parents=True, exist_ok=True)
        refs = plan.split(split)
        writer = None
        for i, ref in enumerate(refs):
            if i % cfg.episodes_per_shard == 0:
                if writer:
                    writer.close()
                writer = None
            table = read_episodes_table([ref.to_item()], cfg.image_keys, cfg.lowdim_keys, plan.image_size, plan.resized)
            if backbone is not None:
                table = add_feature_columns(table, backbone, cfg.image_keys, cfg.feature_backbone.batch_size)
            if writer is None:
                writer = pq.ParquetWriter(d / f"part-{i // cfg.episodes_per_shard:05d}.parquet", table.schema,
                                          compression=cfg.compression)
            writer.write_table(table, row_group_size=1)
        if writer:
            writer.close()
    timings["write"] = time.perf_counter() - t
    timings["pipeline"] = timings["scan"] + timings["write"]
    t = time.perf_counter()
    lang = outputs.write_language(out_dir, plan)
    timings["language"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    fdim = backbone.feature_dim if backbone is not None else None
    outputs.write_metadata(out_dir, input_dir=input_dir, cfg=cfg, plan=plan, files=infos, fp=fp, language_info=lang,
                           feature_dim=fdim, shards=outputs.shard_listing(out_dir), timings=timings)
    return timings


def _synthetic(spec: str, size: int, folder: Path, compress: bool) -> None:
    tests_dir = Path(__file__).resolve().parents[2] / "tests"
    sys.path.insert(0, str(tests_dir))
    from libero_files import write_demo_file  # the test-data writer (layout-exact, synthetic numbers)

    n_tasks, n_demos, steps = (int(x) for x in spec.lower().split("x"))
    for i in range(n_tasks):
        write_demo_file(folder / "synthetic", f"BENCH_SCENE_task_{i}", lengths=(steps,) * n_demos, image_size=size,
                        seed=i, compress=compress)


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", type=Path, help="folder of *_demo.hdf5 files")
    src.add_argument("--synthetic", metavar="TASKSxDEMOSxSTEPS", help="generate synthetic files, e.g. 4x10x120")
    ap.add_argument("--synthetic-size", type=int, default=128, help="image size of synthetic files")
    ap.add_argument("--synthetic-raw", action="store_true", help="store synthetic images uncompressed (default: gzip "
                                                                   "per frame, like clad demos)")
    ap.add_argument("--image-size", type=int, help="resize to N x N (both sides)")
    ap.add_argument("--features", metavar="KIND", help="feature backbone kind (both sides)")
    ap.add_argument("--readers", type=int, help="max concurrent Ray read tasks (default: Ray decides)")
    ap.add_argument("--feature-actors", type=int, help="feature actor pool size (default: from cluster CPUs)")
    ap.add_argument("--work", type=Path, help="scratch folder for outputs (default: a temp folder, removed)")
    ap.add_argument("--json", type=Path, default=Path("bench_preprocess.json"), help="where to write the results")
    ap.add_argument("--ray-runs", type=int, default=2, help="Ray runs (the first includes worker start-up)")
    args = ap.parse_args(argv)

    with scratch(args.work, "bench_preprocess_") as work:
        if args.synthetic:
            input_dir = work / "input"
            _synthetic(args.synthetic, args.synthetic_size, input_dir, not args.synthetic_raw)
        else:
            input_dir = args.input
        cfg = PreprocessConfig(image_size=args.image_size,
                               feature_backbone=FeatureBackboneConfig(kind=args.features) if args.features else None)
        from clad.data.language import encode_instructions

        encode_instructions(["warm up"])  # load the shared model outside the timed region

        t = time.perf_counter()
        plain = plain_preprocess(input_dir, work / "out_plain", cfg)
        plain_wall = time.perf_counter() - t

        from pipelines.preprocess import run_preprocess
        from pipelines.ray_runtime import init_ray

        t = time.perf_counter()
        resources = init_ray()
        ray_init = time.perf_counter() - t
        ray_runs = []
        for _ in range(max(1, args.ray_runs)):
            t = time.perf_counter()
            res = run_preprocess(input_dir, work / "out_ray", cfg, force=True, readers=args.readers,
                                 feature_actors=args.feature_actors)
            ray_runs.append({"wall": time.perf_counter() - t, **res.manifest["timings_s"]})
        counts = res.manifest["counts"]
        steps = counts["steps"]["train"] + counts["steps"]["val"]
        best = min(ray_runs, key=lambda r: r["wall"])
        result = {
            "input": {"dir": str(input_dir), "files": counts["files"], "episodes": sum(counts["episodes"].values()),
                      "steps": steps, "bytes": _dir_bytes(Path(input_dir)), "image_size": res.manifest["image_size"]},
            "config": cfg.to_dict(),
            "machine": machine(resources.get("CPU")),
            "plain": {"wall": plain_wall, **plain},
            "ray_options": {"readers": args.readers, "feature_actors": args.feature_actors},
            "ray_init_s": ray_init,
            "ray_runs": ray_runs,
            "ratio_plain_over_ray_wall_best": plain_wall / best["wall"],
            "ratio_plain_over_ray_pipeline_best": plain["pipeline"] / best["pipeline"],
            "output_bytes": {"plain": _dir_bytes(work / "out_plain"), "ray": _dir_bytes(work / "out_ray")},
        }
        fmt = "{:<22}{:>10}{:>10}{:>10}{:>10}{:>12}"
        print(f"input: {result['input']['files']} files, {result['input']['episodes']} episodes, {steps} steps, "
              f"{result['input']['bytes'] / 1e6:.1f} MB; image {result['input']['image_size']}; "
              f"features {args.features or 'none'}; Ray start-up {ray_init:.1f} s (not in the runs)")
        print_table(fmt, ("run", "hash s", "scan s", "write s", "total s", "steps/s"),
                    [("plain (1 process)", f"{plain['hash']:.2f}", f"{plain['scan']:.2f}", f"{plain['write']:.2f}",
                      f"{plain_wall:.2f}", f"{steps / plain['pipeline']:.0f}")]
                    + [(f"ray data #{i + 1}", f"{r['hash']:.2f}", f"{r['scan']:.2f}", f"{r['write']:.2f}",
                        f"{r['wall']:.2f}", f"{steps / r['pipeline']:.0f}") for i, r in enumerate(ray_runs)])
        print(f"ratio plain/ray (best Ray run): wall {result['ratio_plain_over_ray_wall_best']:.2f}x, "
              f"scan+write {result['ratio_plain_over_ray_pipeline_best']:.2f}x  (>1: Ray faster)")
        write_report(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
