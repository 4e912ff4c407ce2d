"""Benchmark (not a test): rolling out a series of checkpoints on a shared env pool vs a pool per checkpoint.

    python -m pipelines.bench.shared_pool                        # tiny policy, 3 checkpoints, 1 episode each

A tiny policy-only stage 2 is trained once on synthetic demos named after real libero_object tasks; its model
is copied into --checkpoints folders (distinct checkpoints to the pool: each is loaded as its own policy).
Then, in one invocation, side by side on the same machine:
  per_checkpoint   `run_evaluation` per checkpoint with its own RolloutPool (what `clad train` does): every
                   checkpoint starts its env actors (LIBERO scene, GL context, policy)
  shared           one EnvPoolService started once, every checkpoint's episodes submitted to it (what
                   `clad tune`'s closed-loop objective does, pipelines/shared_pool.py)
It reports the wall time of each checkpoint's evaluation and of the whole series (for "shared" including the
pool's start-up), as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

SUITE = "libero_object"


def _train(folder: Path, tracking) -> Path:
    from clad.training.config import load_train_config
    from pipelines.bench.closed_loop import _synthetic_dataset
    from pipelines.train import run_training

    dataset = _synthetic_dataset([0], folder)
    cfg = load_train_config(None, [
        f"dataset_dir={dataset}", f"output_dir={folder / 'runs'}", "stage=stage2", "model_preset=tiny",
        "model.policy.foresight=none", "batch_size=8", "steps=4", "checkpoint_every=4", "validate_every=4",
        "val_batches=1", "optim.warmup_steps=1", "cpus_per_worker=0.5", "policy_ema_decay=0"])
    result = run_training(cfg, tracking=tracking)
    if result.error:
        raise result.error
    return cfg.run_dir / "final"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", type=int, default=3)
    p.add_argument("--episodes", type=int, default=1, help="episodes of task 0 per checkpoint")
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--cpus-per-actor", type=float, default=0.5)
    p.add_argument("--out", default="outputs/bench/shared_pool.json")
    args = p.parse_args(argv)

    import ray

    from clad.training.closed_loop import ClosedLoopConfig
    from pipelines.eval_during_training import eval_config
    from pipelines.evaluate import run_evaluation
    from pipelines.ray_runtime import init_ray
    from pipelines.shared_pool import SharedPoolClient, start_service
    from pipelines.tracking import resolve_tracking

    init_ray()
    cl = ClosedLoopConfig(suite=SUITE, tasks=("0",), episodes_per_task=args.episodes, max_steps=args.max_steps,
                          settle_steps=1, camera_size=64, actors=1, cpus_per_actor=args.cpus_per_actor)
    report: dict = {"config": vars(args)}
    with tempfile.TemporaryDirectory(prefix="bench_shared_pool_") as tmp:
        tmp = Path(tmp)
        final = _train(tmp, resolve_tracking(tmp, experiment="bench-shared-pool"))
        models = []
        for i in range(args.checkpoints):
            shutil.copytree(final, tmp / "ckpt" / f"c{i}")
            models.append(tmp / "ckpt" / f"c{i}")

        walls = []
        t_all = time.perf_counter()
        for i, m in enumerate(models):
            t0 = time.perf_counter()
            run_evaluation(eval_config(cl, m), tmp / "own" / f"c{i}", use_mlflow=False, progress=False)
            walls.append(time.perf_counter() - t0)
        report["per_checkpoint"] = {"eval_wall_s": [round(w, 1) for w in walls],
                                    "series_wall_s": round(time.perf_counter() - t_all, 1)}

        walls = []
        t_all = time.perf_counter()
        service = start_service("bench-shared-pool", SUITE, 1, args.cpus_per_actor, 64)
        started = time.perf_counter() - t_all
        try:
            for i, m in enumerate(models):
                t0 = time.perf_counter()
                run_evaluation(eval_config(cl, m), tmp / "shared" / f"c{i}", use_mlflow=False, progress=False,
                               pool_factory=lambda _c, spec: SharedPoolClient(service, "bench", spec))
                walls.append(time.perf_counter() - t0)
            report["shared"] = {"pool_start_s": round(started, 1), "eval_wall_s": [round(w, 1) for w in walls],
                                "series_wall_s": round(time.perf_counter() - t_all, 1),
                                "pool": ray.get(service.report.remote())}
        finally:
            ray.get(service.shutdown.remote())
            ray.kill(service)
    report["series_wall_ratio_shared_over_per_checkpoint"] = round(
        report["shared"]["series_wall_s"] / report["per_checkpoint"]["series_wall_s"], 3)
    report["shared"]["pool"].pop("dispatched", None)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
