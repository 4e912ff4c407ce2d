"""Benchmark: `clad preprocess` from a LeRobot v3.0 dataset (video or inline images) vs from LIBERO HDF5 files
holding the same episodes, side by side in one run.

The HDF5 side is made from the LeRobot episodes themselves (decoded once, frames turned back to LIBERO's
OpenGL orientation, uncompressed like LIBERO's released files), so both runs write the same episodes, steps
and image sizes; only the input format differs. Each format is preprocessed `--runs` times with Ray
(alternating, force=True; Ray start-up is outside the runs), plus a single-process read of every episode
(the decode cost alone: PyAV/PNG vs h5py).

    python -m pipelines.bench.lerobot --input /work/shared/fixtures/lerobot/libero_v3_video --json bench_lerobot.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from clad.data import lerobot_reader as R
from clad.data.conventions import SIMULATOR_ORIENTATION, UPRIGHT, reorient
from clad.data.hdf5_reader import read_episode as read_hdf5_episode
from clad.data.libero_layout import demo_file_name
from clad.data.preprocess_config import PreprocessConfig

from pipelines.bench.report import machine, print_table, scratch, write_report


def write_hdf5_copy(layout: R.Layout, image_keys: tuple[str, ...], out: Path) -> tuple[Path, list[tuple[Path, str]]]:
    """The LeRobot episodes as `<task>_demo.hdf5` files (one per task). Returns (folder, [(file, demo)])."""
    out.mkdir(parents=True, exist_ok=True)
    by_task: dict[str, list[int]] = {}
    meta = {int(e["episode_index"]): e for e in layout.episodes}
    for e in meta:
        task = R.match_benchmark_task(layout.tasks[_task_index(layout, e)])
        by_task.setdefault(task.name, []).append(e)
    written = []
    for name, episodes in sorted(by_task.items()):
        path = out / demo_file_name(name)
        with h5py.File(path, "w") as f:
            data = f.create_group("data")
            data.attrs["problem_info"] = json.dumps({"language_instruction": name.replace("_", " ")})
            for i, e in enumerate(episodes):
                ep = R.read_episode(layout, e, image_keys, layout.lowdim_keys)
                g = data.create_group(f"demo_{i}")
                g.attrs["num_samples"] = len(ep["actions"])
                g.create_dataset("actions", data=ep["actions"].astype(np.float64))
                obs = g.create_group("obs")
                for k in layout.lowdim_keys:
                    obs.create_dataset(k, data=ep[k].astype(np.float64))
                for k in image_keys:
                    obs.create_dataset(k, data=np.ascontiguousarray(reorient(ep[k], UPRIGHT, SIMULATOR_ORIENTATION)))
                written.append((path, f"demo_{i}"))
    return out, written


def _task_index(layout: R.Layout, episode_index: int) -> int:
    import pyarrow.parquet as pq

    ep = {int(e["episode_index"]): e for e in layout.episodes}[episode_index]
    rows = pq.read_table(Path(layout.root) / layout.data_file(ep), columns=["task_index"],
                         filters=[("episode_index", "=", episode_index)])
    return int(rows.column("task_index")[0].as_py())


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, required=True, help="a LeRobot v3.0 LIBERO dataset")
    ap.add_argument("--runs", type=int, default=2, help="Ray runs per format (alternating)")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temp folder, removed)")
    ap.add_argument("--json", type=Path, default=Path("bench_lerobot.json"))
    args = ap.parse_args(argv)

    cfg = PreprocessConfig(val_fraction=0.0)
    layout = R.load_layout(args.input, cfg.image_keys)
    with scratch(args.work, "bench_lerobot_") as work:
        hdf5_dir, hdf5_demos = write_hdf5_copy(layout, cfg.image_keys, work / "hdf5")
        steps = sum(int(e["length"]) for e in layout.episodes)
        # single process: read (decode) every episode once per format
        read = {
            "lerobot": _time(lambda: [R.read_episode(layout, int(e["episode_index"]), cfg.image_keys,
                                                     layout.lowdim_keys) for e in layout.episodes]),
            "hdf5": _time(lambda: [read_hdf5_episode(p, d, cfg.image_keys, layout.lowdim_keys)
                                   for p, d in hdf5_demos]),
        }
        from clad.data.language import encode_instructions
        from pipelines.preprocess import run_preprocess
        from pipelines.ray_runtime import init_ray

        encode_instructions(["warm up"])  # load the shared language model outside the timed region
        t = time.perf_counter()
        resources = init_ray()
        ray_init = time.perf_counter() - t
        runs: dict[str, list[dict]] = {"lerobot": [], "hdf5": []}
        for _ in range(max(1, args.runs)):
            for fmt, src in (("lerobot", args.input), ("hdf5", hdf5_dir)):
                t = time.perf_counter()
                res = run_preprocess(src, work / f"out_{fmt}", cfg, force=True)
                runs[fmt].append({"wall": time.perf_counter() - t, **res.manifest["timings_s"],
                                  "steps": sum(res.manifest["counts"]["steps"].values())})
        best = {f: min(r, key=lambda x: x["wall"]) for f, r in runs.items()}
        assert best["lerobot"]["steps"] == best["hdf5"]["steps"] == steps, "both formats must write every step"
        result = {
            "input": {"dir": str(args.input), "episodes": len(layout.episodes), "steps": steps,
                      "video": layout.video_features, "codecs": sorted({R.VideoFile(Path(layout.root) / layout.video_file(
                          e, f)).codec for e in layout.episodes[:1] for f in layout.video_features}),
                      "image_size": list(layout.features[next(iter(layout.image_features.values()))]["shape"][:2])},
            "machine": machine(resources.get("CPU")),
            "single_process_read_s": read,
            "single_process_read_steps_per_s": {f: steps / s for f, s in read.items()},
            "ray_init_s": ray_init,
            "ray_runs": runs,
            "ray_steps_per_s_best": {f: steps / b["pipeline"] for f, b in best.items()},
            "ratio_lerobot_over_hdf5_pipeline_time_best": best["lerobot"]["pipeline"] / best["hdf5"]["pipeline"],
            "ratio_lerobot_over_hdf5_read_time": read["lerobot"] / read["hdf5"],
        }
        fmt_row = "{:<26}{:>10}{:>10}{:>10}{:>12}"
        print(f"input: {len(layout.episodes)} episodes, {steps} steps, views {list(layout.image_features)}, "
              f"video {layout.video_features or 'no (inline images)'}; Ray start-up {ray_init:.1f} s (not in the runs)")
        print_table(fmt_row, ("run", "scan s", "write s", "wall s", "steps/s"),
                    [(f"{f} ray #{i + 1}", f"{r['scan']:.2f}", f"{r['write']:.2f}", f"{r['wall']:.2f}",
                      f"{steps / r['pipeline']:.0f}") for f, rs in runs.items() for i, r in enumerate(rs)]
                    + [(f"{f} read, 1 process", "", "", f"{s:.2f}", f"{steps / s:.0f}") for f, s in read.items()])
        print(f"ratio lerobot/hdf5 time: Ray scan+write {result['ratio_lerobot_over_hdf5_pipeline_time_best']:.2f}x, "
              f"single-process read {result['ratio_lerobot_over_hdf5_read_time']:.2f}x (>1: LeRobot slower)")
        write_report(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
