"""Benchmark (not a test): the cost of closed-loop evaluation during training.

    python -m pipelines.bench.closed_loop                       # small: tiny preset, synthetic demos, 1 env actor
    python -m pipelines.bench.closed_loop --dataset outputs/cpu_learning/dataset --preset cpu --batch-size 64 \\
        --steps 600 --eval-every 200 --tasks 0 1 --episodes 2 --max-steps 300

In one invocation, on the same data and config, a policy-only stage 2 trains twice:
  off   eval_every=0
  on    eval_every=E: each E-step checkpoint rolled out on --actors env actors (real LIBERO) while training runs
and reports, for each: training samples/s (rank 0's `train/samples_per_s` over the second half of the steps,
read back from MLflow), the wall time of `TorchTrainer.fit()`, and for "on" the time `clad train` waited for
rollouts after training ended, each checkpoint's evaluation wall time and the delay from the checkpoint being
persisted to its success being logged. On one small machine training and simulators share the cores, so the
slowdown mostly measures CPU contention; on a cluster the env actors run on rollout nodes
(closed_loop.rollout_resource) and only the driver-side copy of each checkpoint touches training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pipelines.bench.report import write_report

SUITE = "libero_object"


def _synthetic_dataset(tasks: list[int], folder: Path) -> Path:
    from clad.libero.suites import get_task
    from pipelines.preprocess import run_preprocess

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from libero_files import write_demo_file  # layout-exact files, synthetic numbers, real task names

    for t in tasks:
        write_demo_file(folder / "demos", get_task(SUITE, t).name, lengths=(60,) * 4, image_size=32, seed=t)
    run_preprocess(folder / "demos", folder / "dataset")
    return folder / "dataset"


def _run(args, dataset: Path, out: Path, tracking, eval_every: int) -> dict:
    from mlflow.tracking import MlflowClient

    from clad.training.config import load_train_config
    from clad.training.state import load_training_state
    from pipelines.eval_during_training import read_results
    from pipelines.train import run_training

    cfg = load_train_config(None, [
        f"dataset_dir={dataset}", f"output_dir={out}", "stage=stage2", f"model_preset={args.preset}",
        "model.policy.foresight=none", f"batch_size={args.batch_size}", f"steps={args.steps}",
        f"log_every={max(1, args.steps // 10)}", f"checkpoint_every={args.eval_every}",
        f"validate_every={args.eval_every}", "val_batches=1", "keep_checkpoints=2", "optim.warmup_steps=1",
        f"cpus_per_worker={args.cpus_per_worker}", f"eval_every={eval_every}", f"closed_loop.suite={SUITE}",
        f"closed_loop.tasks={[str(t) for t in args.tasks]}", f"closed_loop.episodes_per_task={args.episodes}",
        f"closed_loop.max_steps={args.max_steps}", f"closed_loop.actors={args.actors}",
        f"closed_loop.cpus_per_actor={args.cpus_per_actor}", "closed_loop.camera_size=64"])
    t0 = time.time()
    result = run_training(cfg, tracking=tracking)
    wall = time.time() - t0
    if result.error:
        raise result.error
    run_id = load_training_state(result.checkpoint.path)["extra"]["mlflow_run_id"]
    hist = MlflowClient(tracking.uri).get_metric_history(run_id, "train/samples_per_s")
    late = [m.value for m in hist if m.step > args.steps // 2]  # start-up and the first batches excluded
    row = {"eval_every": eval_every, "samples_per_s": statistics.mean(late) if late else None,
           "samples_per_s_points": len(late), "run_training_wall_s": wall}
    if eval_every:
        results = read_results(cfg.run_dir)
        timings = json.loads((cfg.run_dir / "closed_loop" / "timings.json").read_text())
        row.update({"checkpoints_evaluated": [r["step"] for r in results],
                    "success": {r["step"]: f"{r['successes']}/{r['n']}" for r in results},
                    "eval_wall_s": [round(r["eval_wall_s"], 1) for r in results],
                    "delay_s": [round(r["delay_s"], 1) for r in results],
                    "wait_after_training_s": timings["wait_after_training_s"],
                    "fit_wall_s": wall - timings["wait_after_training_s"]})
    else:
        row["fit_wall_s"] = wall
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="a preprocessed dataset of libero_object tasks (default: synthetic demos)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--tasks", type=int, nargs="+", default=[0])
    p.add_argument("--episodes", type=int, default=1, help="episodes per task per checkpoint (K)")
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--cpus-per-actor", type=float, default=0.5)
    p.add_argument("--cpus-per-worker", type=float, default=0.5)
    p.add_argument("--out", default="outputs/bench/closed_loop.json")
    args = p.parse_args(argv)

    from pipelines.ray_runtime import init_ray
    from pipelines.tracking import resolve_tracking

    init_ray()
    with tempfile.TemporaryDirectory(prefix="bench_closed_loop_") as tmp:
        tmp = Path(tmp)
        dataset = Path(args.dataset) if args.dataset else _synthetic_dataset(args.tasks, tmp)
        tracking = resolve_tracking(tmp, experiment="bench-closed-loop")
        off = _run(args, dataset, tmp / "off", tracking, 0)
        on = _run(args, dataset, tmp / "on", tracking, args.eval_every)
    report = {"config": vars(args), "off": off, "on": on,
              "slowdown_samples_per_s": (1 - on["samples_per_s"] / off["samples_per_s"])
              if off["samples_per_s"] and on["samples_per_s"] else None,
              "fit_wall_ratio_on_off": on["fit_wall_s"] / off["fit_wall_s"]}
    print(json.dumps(report, indent=2))
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
