"""Benchmark (not a test): training throughput of both stages on Ray Train, side by side with its ceiling.

    python -m pipelines.bench.training                      # small: synthetic demos, tiny preset, 1 and 2 workers
    python -m pipelines.bench.training --dataset outputs/cpu_learning/dataset --preset cpu --batch-size 64 \\
        --steps 60 --workers 1 2

For each stage, in one invocation on the same data:
  ceiling   TrainingSession.train_step on one batch held in memory, in one Ray worker process: the
            model's own speed, with no loader and no DDP
  ray Nw    `clad train` (Ray Train TorchTrainer, windows streamed by Ray Data) with N workers: samples/s in
            total and per worker, and the fraction of the step time spent waiting for the next batch
The ceiling uses `--threads` torch threads (default 1, as a worker with up to 1 CPU does), and the timed window
starts after the first half of the steps (start-up, compilation of the data pipeline and the first
batches are excluded: `log_every` = steps / 2, the last report covers only the second half).
Stage 2 trains on the stage-1 model the 1-worker stage-1 run exported.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipelines.bench.report import write_report


def _synthetic_dataset(spec: str, image_size: int, folder: Path) -> Path:
    from pipelines.bench.preprocess import _synthetic
    from pipelines.preprocess import run_preprocess

    _synthetic(spec, image_size, folder / "demos", compress=False)
    run_preprocess(folder / "demos", folder / "dataset")
    return folder / "dataset"


def _one_batch(cfg, batch_size: int) -> dict:
    """`batch_size` training windows read without Ray, as torch tensors."""
    import torch

    from clad.data.store import iter_dataset_windows
    from pipelines.train import _window_spec

    parts, n = [], 0
    for b in iter_dataset_windows(cfg.dataset_dir, "train", _window_spec(cfg, "train"), max_batch=batch_size):
        parts.append(b)
        n += len(next(iter(b.values())))
        if n >= batch_size:
            break
    if n < batch_size:
        raise RuntimeError(f"{cfg.dataset_dir} has only {n} training windows; the benchmark needs {batch_size}")
    return {k: torch.as_tensor(np.concatenate([p[k] for p in parts])[:batch_size]) for k in parts[0]}


def ceiling(cfg, steps: int, threads: int) -> dict:
    """Samples/s of the bare train step on a batch held in memory (no data wait by construction)."""
    import torch

    from clad.training.session import TrainingSession, model_stats

    torch.set_num_threads(threads)
    session = TrainingSession(cfg, model_stats(cfg.dataset_dir, cfg.model.proprio_keys))
    batch = _one_batch(cfg, cfg.batch_size)
    half = max(1, steps // 2)
    for _ in range(half):  # warm-up: the same share of steps the Ray runs leave out
        session.train_step(batch)
    t0 = time.perf_counter()
    for _ in range(steps - half):
        session.train_step(batch)
    dt = time.perf_counter() - t0
    return {"samples_per_s": cfg.batch_size * (steps - half) / dt, "data_wait_frac": 0.0, "workers": 1}


def ray_run(cfg, workers: int) -> dict:
    from pipelines.train import run_training, worker_pool

    cfg = cfg.replace(num_workers=workers, run_name=f"{cfg.stage}-{workers}w")
    pool = worker_pool(cfg)  # CPUs per worker as `clad train` sizes them (room left for the data tasks)
    t0 = time.perf_counter()
    result = run_training(cfg)
    wall = time.perf_counter() - t0
    if result.error:
        raise result.error
    m = result.metrics or {}
    total = float(m["train/samples_per_s"])
    return {"workers": workers, "samples_per_s": total, "samples_per_s_per_worker": total / workers,
            "data_wait_frac": float(m["train/data_wait_frac"]), "wall_s": wall, "cpus_per_worker": pool.cpus_per_actor,
            "final_dir": str(cfg.run_dir / "final")}


def bench_stage(base, stage: str, workers: list[int], threads: int, stage1_dir: str | None) -> dict:
    cfg = base.replace(stage=stage, stage1_checkpoint=stage1_dir if stage == "stage2" else None)
    import ray

    print(f"[{stage}] ceiling (in-memory batch, {threads} thread(s)) ...", flush=True)
    # in a Ray worker like the Train workers: raylet starts workers at niceness 15, and a driver-side loop
    # at niceness 0 would win CPU from them on a loaded machine and measure scheduling priority instead
    remote_ceiling = ray.remote(num_cpus=min(1.0, float(ray.cluster_resources().get("CPU", 1.0))))(ceiling)
    rows = {"ceiling": ray.get(remote_ceiling.remote(cfg, cfg.steps, threads))}
    for w in workers:
        print(f"[{stage}] Ray Train, {w} worker(s) ...", flush=True)
        rows[f"ray_{w}w"] = ray_run(cfg, w)
    top = rows["ceiling"]["samples_per_s"]
    ratios = {f"ray_{w}w per worker / ceiling": rows[f"ray_{w}w"]["samples_per_s_per_worker"] / top for w in workers}
    if len(workers) > 1:
        lo, hi = min(workers), max(workers)
        ratios[f"ray_{hi}w / ray_{lo}w total"] = rows[f"ray_{hi}w"]["samples_per_s"] / rows[f"ray_{lo}w"]["samples_per_s"]
    return {"stage": stage, "rows": rows, "ratios": ratios}


def _print(report: dict) -> None:
    print(f"\ntraining throughput: preset {report['preset']}, global batch {report['batch_size']}, "
          f"{report['steps']} steps, ceiling on {report['threads']} torch thread(s), {report['cores']} cores")
    print(f"{'stage':>7} {'run':>9} {'samples/s':>10} {'per worker':>11} {'data wait':>10}")
    for s in report["stages"]:
        for name, r in s["rows"].items():
            per = r.get("samples_per_s_per_worker", r["samples_per_s"])
            print(f"{s['stage']:>7} {name:>9} {r['samples_per_s']:>10.1f} {per:>11.1f} {r['data_wait_frac']:>10.1%}")
        for k, v in s["ratios"].items():
            print(f"  {s['stage']} {k}: {v:.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, help="a preprocessed dataset (default: synthesize --synthetic demos)")
    p.add_argument("--synthetic", default="2x4x60", help="TASKSxDEMOSxSTEPS of synthetic demos (no --dataset)")
    p.add_argument("--image-size", type=int, default=64, help="synthetic demo image size")
    p.add_argument("--preset", default="tiny", choices=["paper", "cpu", "tiny"])
    p.add_argument("--batch-size", type=int, default=16, help="global batch (split over the workers)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads of the ceiling (Train workers: one per whole CPU)")
    p.add_argument("--stages", nargs="+", default=["stage1", "stage2"], choices=["stage1", "stage2"])
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local cluster)")
    p.add_argument("--out", type=Path, default=Path("outputs") / "bench" / "training.json")
    args = p.parse_args(argv)

    from clad.model.sizes import model_preset
    from clad.training.config import TrainConfig
    from pipelines.ray_runtime import init_ray

    init_ray(address=args.address)
    with tempfile.TemporaryDirectory(prefix="clad-bench-train-") as tmp:
        dataset = args.dataset or _synthetic_dataset(args.synthetic, args.image_size, Path(tmp))
        half = max(1, args.steps // 2)
        base = TrainConfig.model_validate({
            "stage": "stage1", "dataset_dir": str(dataset), "output_dir": str(Path(tmp) / "runs"),
            "model": model_preset(args.preset), "steps": args.steps, "batch_size": args.batch_size,
            "log_every": half, "checkpoint_every": args.steps, "validate_every": args.steps, "val_batches": 1,
            "max_failures": 0,
        })
        stages, stage1_dir = [], None
        for stage in args.stages:
            if stage == "stage2" and stage1_dir is None:  # stage 2 needs a stage-1 model: train one briefly
                stage1_dir = ray_run(base.replace(stage="stage1"), min(args.workers))["final_dir"]
            res = bench_stage(base, stage, args.workers, args.threads, stage1_dir)
            if stage == "stage1":
                stage1_dir = res["rows"][f"ray_{min(args.workers)}w"]["final_dir"]
            stages.append(res)
    report = {"benchmark": "training", "preset": args.preset, "batch_size": args.batch_size, "steps": args.steps,
              "threads": args.threads, "cores": os.cpu_count(), "dataset": str(args.dataset or f"synthetic {args.synthetic}"),
              "stages": stages}
    _print(report)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
