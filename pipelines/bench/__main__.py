"""Every benchmark in one command: inference, rollouts, preprocessing, training.

    python -m pipelines.bench                 # small sizes, a few minutes on 2 cores
    python -m pipelines.bench --full          # each benchmark at its full default size
    python -m pipelines.bench --only inference training

Each benchmark runs in its own process (its own Ray cluster, its own peak memory), prints its side-by-side
table and writes `<out>/<name>.json`; `<out>/summary.json` collects the ratios. The benchmarks and what
they compare:
  inference     pipelines/bench/inference.py   paper vs cpu size: planning vs action latency, batch 1 vs B
  rollouts      pipelines/bench/rollouts.py    Ray env-actor pool vs LIBERO's serial loop vs raw sim rate
  preprocess    pipelines/bench/preprocess.py  Ray Data vs a single-process h5py loop
  training      pipelines/bench/training.py    Ray Train samples/s and data wait vs the in-memory ceiling
Machines are shared and noisy: read the ratios (measured side by side in one run), not absolute times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# (module, small-size arguments, full-size arguments); the JSON path is appended by `run`
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "inference": ("pipelines.bench.inference",
                  ["--presets", "paper", "cpu", "--batch-sizes", "1", "4", "--repeats", "2"],
                  ["--presets", "paper", "cpu", "--batch-sizes", "1", "16", "--repeats", "5"]),
    "rollouts": ("pipelines.bench.rollouts",
                 ["--actors", "2", "--episodes", "4", "--max-steps", "40", "--raw-steps", "100",
                  "--batch-sizes", "1", "16", "--repeats", "5"],
                 ["--actors", "2", "--episodes", "16", "--max-steps", "200", "--cameras", "agentview", "eye_in_hand"]),
    "preprocess": ("pipelines.bench.preprocess",
                   ["--synthetic", "2x4x60", "--synthetic-size", "64", "--ray-runs", "1"],
                   ["--synthetic", "10x20x120", "--synthetic-size", "128"]),
    "training": ("pipelines.bench.training",
                 ["--steps", "16"],
                 ["--preset", "cpu", "--batch-size", "64", "--steps", "60"]),
    # stage-2 samples/s from cached features vs from images; extraction as a Ray Data actor pool vs a loop
    "features": ("pipelines.bench.features", ["--steps", "16"], ["--steps", "60", "--ray"]),
    # training samples/s with and without evaluation during training; checkpoint -> success-logged delay
    "closed_loop": ("pipelines.bench.closed_loop", [], ["--steps", "400", "--eval-every", "100"]),
}
# `python -m pipelines.bench.lerobot --input <LeRobot dataset>` needs a dataset of yours, so it runs alone.
OUT_FLAG = {"preprocess": "--json"}  # the others take --out


def run(name: str, full: bool, out_dir: Path) -> dict:
    module, small, big = BENCHMARKS[name]
    out = out_dir / f"{name}.json"
    cmd = [sys.executable, "-m", module, *(big if full else small), OUT_FLAG.get(name, "--out"), str(out)]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    code = subprocess.call(cmd)
    wall = time.perf_counter() - t0
    if code != 0 or not out.is_file():
        return {"ok": False, "exit_code": code, "wall_s": wall}
    return {"ok": True, "wall_s": wall, "json": str(out), "ratios": _ratios(name, json.loads(out.read_text()))}


def _ratios(name: str, report: dict) -> dict[str, float]:
    """The side-by-side ratios each benchmark reports, flattened for the summary."""
    if name == "inference":
        return report["ratios"]
    if name == "training":
        return {f"{s['stage']} {k}": v for s in report["stages"] for k, v in s["ratios"].items()}
    if name == "preprocess":
        return {k: float(v) for k, v in report.items() if k.startswith("ratio_")}
    return _numbers(report.get("ratios", {}))


def _numbers(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="full-size arguments instead of the small run")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    p.add_argument("--out", type=Path, default=Path("outputs") / "bench")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {name: run(name, args.full, args.out) for name in args.only}
    (args.out / "summary.json").write_text(json.dumps({"full": args.full, "benchmarks": results}, indent=2) + "\n")
    print("\n=== summary")
    for name, r in results.items():
        status = f"{r['wall_s']:.0f} s" if r["ok"] else f"FAILED (exit {r['exit_code']})"
        print(f"{name:>11}: {status}")
        for k, v in r.get("ratios", {}).items():
            print(f"{'':>13}{k}: {v:.2f}")
    print(f"wrote {args.out / 'summary.json'}")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
