"""Benchmark (not a test): CLaD inference cost at the `paper` and `cpu` model sizes, side by side.

    python -m pipelines.bench.inference                                # paper + cpu, batch 1 and 16
    python -m pipelines.bench.inference --presets cpu tiny --repeats 3 # the small run of `pipelines.bench`

For each preset, in a fresh child process (so peak memory is that preset's alone):
  planning   stage-1 forward to the latent foresight (z^_p, z^_s): images -> encoder -> dynamics
  action     one full action prediction: planning + every DDIM denoising step of the policy
  control    env steps per second one prediction serves: execution_horizon / action latency (the agent
             replans once per chunk), and rows per second for a batch of B envs (a policy server's batch)
  memory     peak resident memory of the process minus its size before the model was built (CPU), or
             torch.cuda.max_memory_allocated (GPU)
  params     stage 1 (dynamics, without EMA targets and image tower), stage 2 (policy), image tower

Weights are random (latency does not depend on their values); the `paper` preset's DecisionNCE RN50 tower
is built from a random checkpoint written to a temporary folder, so the image encoder is timed too.
The paper reports 0.012 s planning, 25 Hz and 4 GB on an unnamed GPU; this machine has no GPU, so the
numbers printed here are CPU numbers (the JSON records the device, threads and CPU model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.bench.report import write_report

# The paper's DecisionNCE tower is CLIP's RN50 (ModifiedResNet): these are its architecture constants.
RN50_META = {"layers": [3, 4, 6, 3], "width": 64, "heads": 32, "output_dim": 1024, "image_size": 224}
PAPER_REFERENCE = {"planning_s": 0.012, "control_hz": 25.0, "memory_gb": 4.0, "device": "GPU (unnamed)"}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _random_rn50_dir(folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from clad.model.clip_rn50 import ModifiedResNet

    torch.manual_seed(0)
    net = ModifiedResNet(RN50_META["layers"], RN50_META["output_dim"], RN50_META["heads"],
                         RN50_META["image_size"], RN50_META["width"])
    save_file({f"visual.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(RN50_META))
    return folder


def _timed(fn, repeats: int, warmup: int, sync) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def measure_preset(preset: str, batch_sizes: list[int], repeats: int, warmup: int, device: str,
                   image_size: int = 128) -> dict:
    """Latency, control rate, memory and parameter counts of one preset (runs in this process)."""
    import torch

    from clad.model import CladModel, model_preset
    from clad.model.sizes import parameter_breakdown
    from clad.model.testing import fake_batch, fake_stats

    rss_before = _rss_mb()
    cfg = model_preset(preset)
    with tempfile.TemporaryDirectory() as tmp:
        if not cfg.vision.trainable:  # the pretrained tower, from a random checkpoint of the same shape
            cfg = cfg.replace(vision=cfg.vision.replace(checkpoint_dir=str(_random_rn50_dir(Path(tmp)))))
        model = CladModel(cfg, fake_stats(cfg))
    model.freeze_stage1()
    model = model.to(device).eval()
    counts = parameter_breakdown(model)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

        def sync():
            torch.cuda.synchronize()
    else:
        def sync():
            pass

    rows = []
    with torch.no_grad():
        for b in batch_sizes:
            batch = {k: v.to(device) for k, v in fake_batch(cfg, b, image_hw=(image_size, image_size)).items()}
            noise = torch.randn(b, cfg.policy.chunk_length, cfg.action_dim, device=device)
            plan = _timed(lambda: model.foresight(batch), repeats, warmup, sync)
            act = _timed(lambda: model.predict_actions(batch, noise=noise), repeats, warmup, sync)
            plan_s, act_s = statistics.median(plan), statistics.median(act)
            rows.append({
                "batch": b,
                "planning_s": plan_s,
                "action_s": act_s,
                "planning_share": plan_s / act_s,
                "predictions_per_s": 1.0 / act_s,
                "control_hz_per_env": cfg.policy.execution_horizon / act_s,
                "rows_per_s": b / act_s,
                "planning_runs_s": plan,
                "action_runs_s": act,
            })
    if device.startswith("cuda"):
        memory = {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}
    else:
        memory = {"peak_rss_mb": _rss_mb(), "model_and_activations_mb": _rss_mb() - rss_before}
    return {
        "preset": preset,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "denoising_steps": cfg.policy.num_inference_steps,
        "execution_horizon": cfg.policy.execution_horizon,
        "image_tower": cfg.vision.backbone,
        "params_m": {
            "stage1_dynamics": counts.get("dynamics_total", 0) / 1e6,
            "stage2_policy": counts.get("policy_total", 0) / 1e6,
            "image_tower": counts.get("vision", 0) / 1e6,
        },
        "memory": memory,
        "rows": rows,
    }


def _child(preset: str, args: argparse.Namespace) -> dict:
    """Run one preset in a fresh interpreter and read its JSON line."""
    cmd = [sys.executable, "-m", "pipelines.bench.inference", "--child", preset, "--device", args.device,
           "--threads", str(args.threads), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--image-size", str(args.image_size), "--batch-sizes", *map(str, args.batch_sizes)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark of preset {preset} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _print(report: dict) -> None:
    print(f"\ninference on {report['device']} ({report['cpu']}, {report['torch_threads']} torch threads)")
    print(f"{'preset':>7} {'B':>4} {'planning s':>11} {'action s':>9} {'plan/act':>8} {'ctrl Hz/env':>11} "
          f"{'rows/s':>8} {'stage1 M':>9} {'stage2 M':>9} {'tower M':>8} {'mem MB':>8}")
    for r in report["presets"]:
        mem = r["memory"].get("peak_gpu_mb", r["memory"].get("model_and_activations_mb", 0.0))
        for row in r["rows"]:
            print(f"{r['preset']:>7} {row['batch']:>4} {row['planning_s']:>11.4f} {row['action_s']:>9.4f} "
                  f"{row['planning_share']:>8.2f} {row['control_hz_per_env']:>11.1f} {row['rows_per_s']:>8.1f} "
                  f"{r['params_m']['stage1_dynamics']:>9.2f} {r['params_m']['stage2_policy']:>9.2f} "
                  f"{r['params_m']['image_tower']:>8.2f} {mem:>8.0f}")
    for k, v in report["ratios"].items():
        print(f"  {k}: {v:.2f}")
    ref = PAPER_REFERENCE
    print(f"  paper (GPU): planning {ref['planning_s']} s, {ref['control_hz']} Hz, {ref['memory_gb']} GB")


def ratios(presets: list[dict]) -> dict[str, float]:
    """Side-by-side ratios: batched vs batch-1 throughput per preset, and each preset against the first."""
    out: dict[str, float] = {}
    for r in presets:
        first, last = r["rows"][0], r["rows"][-1]
        if last["batch"] != first["batch"]:
            out[f"{r['preset']}: rows/s at B={last['batch']} / at B={first['batch']}"] = last["rows_per_s"] / first["rows_per_s"]
        out[f"{r['preset']}: planning / action latency at B={first['batch']}"] = first["planning_share"]
    base = presets[0]
    for r in presets[1:]:
        out[f"action latency {base['preset']} / {r['preset']} at B={base['rows'][0]['batch']}"] = (
            base["rows"][0]["action_s"] / r["rows"][0]["action_s"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["paper", "cpu"], choices=["paper", "cpu", "tiny"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--image-size", type=int, default=128, help="camera image size fed to the model (LIBERO: 128)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads (CPU)")
    p.add_argument("--out", type=Path, default=Path("outputs") / "bench" / "inference.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure_preset(args.child, args.batch_sizes, args.repeats, args.warmup, args.device,
                                        args.image_size)))
        return 0
    presets = [_child(name, args) for name in args.presets]
    report = {"benchmark": "inference", "device": args.device, "cpu": _cpu_model(), "cores": os.cpu_count(),
              "torch_threads": args.threads, "torch": torch.__version__, "paper_reference": PAPER_REFERENCE,
              "presets": presets, "ratios": ratios(presets)}
    _print(report)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
