"""Benchmark (not a test): training from cached frozen-encoder features vs from images, and the extraction job.

    python -m pipelines.bench.features                       # small: synthetic demos, cpu preset, a few minutes
    python -m pipelines.bench.features --dataset outputs/cpu_learning/dataset --steps 40 --ray

In one invocation, on the same data and the same stage-2 model (stage 1 = a clad checkpoint of the preset
with random weights: speed does not depend on what it learned):
  extraction   `clad features` as a Ray Data actor pool vs the same encoder in one plain loop (frames/s)
  stage 2      per path (images: the frozen stage-1 CNN runs every step; features: the fp16 cache), with
               `--threads` torch threads in this process:
                 ceiling  TrainingSession.train_step on one batch held in memory (no loader at all)
                 loader   the in-memory window loader (clad/data/memory_windows.py) feeding train_step:
                          samples/s, data-wait fraction, loader / ceiling
               and the headline ratio: features loader samples/s / images loader samples/s.
  --ray        also `clad train stage2` on Ray Train with loader.source=memory and =stream, both paths
               (samples/s and data wait as the workers report them over the second half of the steps).
The first half of each timed loop is warm-up. JSON out (default outputs/bench/features.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from pipelines.bench.report import write_report


def _random_rn50(folder: Path) -> Path:
    """A decisionnce_rn50 backbone folder with random weights at the real size (CLIP RN50, 224 px, 1024-d)."""
    import json as _json

    import torch
    from safetensors.torch import save_file

    from clad.model.clip_rn50 import ModifiedResNet

    torch.manual_seed(0)
    net = ModifiedResNet(layers=[3, 4, 6, 3], output_dim=1024, heads=32, image_size=224, width=64)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({f"visual.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(_json.dumps({"layers": [3, 4, 6, 3], "width": 64, "heads": 32,
                                                     "output_dim": 1024, "image_size": 224}))
    return folder


def _model_and_encoder(preset: str, encoder: str, tmp: Path):
    """The stage-2 model config and the frozen encoder's spec (stage-1 CNN, or a DecisionNCE-sized RN50)."""
    from clad.model.frozen_encoder import EncoderSpec
    from clad.model.sizes import model_preset

    model = model_preset(preset)
    if encoder == "cnn":
        return model, None
    weights = _random_rn50(tmp / "rn50")
    model = model.replace(vision=model.vision.replace(backbone="decisionnce_rn50", cameras=("agentview",),
                                                      feature_dim=1024, checkpoint_dir=str(weights)))
    return model, EncoderSpec(source="pretrained", backbone="decisionnce_rn50", checkpoint=str(weights),
                              cameras=("agentview",))


def _stage1(cfg_model, dataset: Path, folder: Path) -> Path:
    import torch

    from clad.model.checkpoint import save_checkpoint
    from clad.model.model import CladModel
    from clad.training.session import model_stats

    torch.manual_seed(0)
    return save_checkpoint(CladModel(cfg_model, model_stats(dataset, cfg_model.proprio_keys)), folder, "stage1")


def bench_extraction(dataset: Path, spec, tmp: Path) -> dict:
    from pipelines.features import extract_features, extract_features_local

    local = extract_features_local(dataset, spec, out=tmp / "fs_local")
    ray_ = extract_features(dataset, spec, out=tmp / "fs_ray")
    rows = {name: {"frames": r["frames"], "wall_s": r["wall_s"], "frames_per_s": r["frames"] / r["wall_s"]}
            for name, r in (("single_process", local), ("ray_actor_pool", ray_))}
    return {"rows": rows, "ratio ray / single process": rows["ray_actor_pool"]["frames_per_s"]
            / rows["single_process"]["frames_per_s"], "feature_set": ray_["root"]}


def _timed(session, sources: dict, steps: int, batch_size: int) -> dict:
    """Samples/s and data-wait fraction of each batch source over the second half of `steps` train steps.
    The sources take turns step by step, so a shared machine's load drifts over all of them alike."""
    half = max(1, steps // 2)
    stats = {name: {"wait": 0.0, "time": 0.0} for name in sources}
    for i in range(steps):
        for name, next_batch in sources.items():
            t0 = time.perf_counter()
            batch = next_batch()
            t1 = time.perf_counter()
            session.train_step(batch)
            if i >= half:
                stats[name]["wait"] += t1 - t0
                stats[name]["time"] += time.perf_counter() - t0
    return {name: {"samples_per_s": batch_size * (steps - half) / s["time"], "data_wait_frac": s["wait"] / s["time"]}
            for name, s in stats.items()}


def bench_stage2(cfg, steps: int) -> dict:
    """Ceiling and in-memory loader, images vs features, one process."""
    from clad.data.memory_windows import InMemoryWindows
    from clad.training.session import TrainingSession, model_stats
    from pipelines.train import _window_spec

    out = {}
    for path in ("images", "features"):
        c = cfg if path == "features" else cfg.replace(loader=cfg.loader.replace(feature_set=None))
        wins = InMemoryWindows.load(c.dataset_dir, "train", _window_spec(c, "train"), c.loader.feature_set)
        stream = wins.batches(c.batch_size, seed=0)
        fixed = next(stream)
        session = TrainingSession(c, model_stats(c.dataset_dir, c.model.proprio_keys))
        rows = _timed(session, {"ceiling": lambda: fixed, "loader": lambda: next(stream)}, steps, c.batch_size)
        ceiling, loader = rows["ceiling"], rows["loader"]
        loader["loader / ceiling"] = loader["samples_per_s"] / ceiling["samples_per_s"]
        out[path] = {"ceiling": ceiling, "loader": loader, "windows": len(wins), "resident_mb": wins.nbytes / 1e6}
    out["ratio features / images (loader samples/s)"] = (out["features"]["loader"]["samples_per_s"]
                                                         / out["images"]["loader"]["samples_per_s"])
    out["ratio features / images (ceiling samples/s)"] = (out["features"]["ceiling"]["samples_per_s"]
                                                          / out["images"]["ceiling"]["samples_per_s"])
    return out


def bench_ray(cfg, steps: int) -> dict:
    from pipelines.train import run_training

    rows = {}
    for path in ("images", "features"):
        for source in ("memory", "stream"):
            c = cfg.replace(steps=steps, log_every=max(1, steps // 2), checkpoint_every=steps, validate_every=steps,
                            run_name=f"s2-{path}-{source}",
                            loader=cfg.loader.replace(source=source,
                                                      feature_set=cfg.loader.feature_set if path == "features" else None))
            t0 = time.perf_counter()
            result = run_training(c)
            if result.error:
                raise result.error
            m = result.metrics or {}
            rows[f"{path} {source}"] = {"samples_per_s": float(m["train/samples_per_s"]),
                                        "data_wait_frac": float(m["train/data_wait_frac"]),
                                        "wall_s": time.perf_counter() - t0}
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, help="a preprocessed dataset (default: synthesize --synthetic demos)")
    p.add_argument("--synthetic", default="2x4x60", help="TASKSxDEMOSxSTEPS of synthetic demos (no --dataset)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--preset", default="cpu", choices=["paper", "cpu", "tiny"])
    p.add_argument("--encoder", default="cnn", choices=["cnn", "decisionnce_rn50"],
                   help="cnn: the preset's stage-1 CNN; decisionnce_rn50: the paper's frozen encoder at its real "
                        "size (random weights), agentview only, with the preset's dynamics and policy")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=16, help="train steps per timed loop (first half is warm-up)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a 1-CPU Train worker has one)")
    p.add_argument("--ray", action="store_true", help="also time `clad train stage2` on Ray Train (slower)")
    p.add_argument("--address", default=None)
    p.add_argument("--out", type=Path, default=Path("outputs") / "bench" / "features.json")
    args = p.parse_args(argv)

    import torch

    from clad.model.frozen_encoder import EncoderSpec
    from clad.training.config import TrainConfig
    from pipelines.bench_training import _synthetic_dataset
    from pipelines.ray_runtime import init_ray

    torch.set_num_threads(args.threads)
    init_ray(address=args.address)
    with tempfile.TemporaryDirectory(prefix="clad-bench-features-") as tmp:
        tmp = Path(tmp)
        dataset = args.dataset or _synthetic_dataset(args.synthetic, args.image_size, tmp)
        model, enc_spec = _model_and_encoder(args.preset, args.encoder, tmp)
        stage1 = _stage1(model, dataset, tmp / "stage1")
        print("[extraction] single process, then Ray Data actor pool ...", flush=True)
        extraction = bench_extraction(dataset, enc_spec or EncoderSpec(source="stage1", checkpoint=str(stage1)), tmp)
        cfg = TrainConfig.model_validate({
            "stage": "stage2", "dataset_dir": str(dataset), "output_dir": str(tmp / "runs"), "model": model,
            "stage1_checkpoint": str(stage1), "steps": max(args.steps, 2), "batch_size": args.batch_size,
            "val_batches": 1, "max_failures": 0, "loader": {"feature_set": extraction["feature_set"]}})
        print("[stage 2] ceiling and in-memory loader, images vs features ...", flush=True)
        stage2 = bench_stage2(cfg, args.steps)
        ray_rows = bench_ray(cfg, args.steps) if args.ray else None
    report = {"benchmark": "features", "preset": args.preset, "encoder": args.encoder, "batch_size": args.batch_size, "steps": args.steps,
              "threads": args.threads, "cores": os.cpu_count(),
              "dataset": str(args.dataset or f"synthetic {args.synthetic} at {args.image_size} px"),
              "extraction": extraction, "stage2": stage2, "ray_train": ray_rows,
              "ratios": {"stage2 features / images samples/s": stage2["ratio features / images (loader samples/s)"],
                         "extraction ray / single process": extraction["ratio ray / single process"],
                         "images loader / ceiling": stage2["images"]["loader"]["loader / ceiling"],
                         "features loader / ceiling": stage2["features"]["loader"]["loader / ceiling"],
                         "images data wait": stage2["images"]["loader"]["data_wait_frac"],
                         "features data wait": stage2["features"]["loader"]["data_wait_frac"]}}
    print(json.dumps(report["ratios"], indent=2))
    if ray_rows:
        print(json.dumps(ray_rows, indent=2))
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
