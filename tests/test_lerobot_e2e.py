"""A LeRobot v3.0 dataset written by lerobot's own writer, end to end: `clad preprocess` (real Ray), stage 1 and
stage 2 for a few steps at the tiny preset (Ray Train), and one evaluation episode of the mapped benchmark
task in real LIBERO (one env actor). Both fixtures: frames inline as PNG, and as H.264 video."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lerobot_fixtures import FIXTURES, fixture_dir

pytestmark = [pytest.mark.slow, pytest.mark.libero, pytest.mark.ray]


def _train_cfg(dataset: Path, out: Path, stage: str, *extra: str):
    from clad.training.config import load_train_config

    return load_train_config(None, [
        f"stage={stage}", f"dataset_dir={dataset}", f"output_dir={out}", "model_preset=tiny", "batch_size=4",
        "log_every=1", "checkpoint_every=2", "validate_every=2", "val_batches=1", "optim.warmup_steps=1", "steps=2",
        "model.proprio_keys=[ee_states, gripper_states]", *extra])  # LeRobot's 8-D observation.state


@pytest.mark.parametrize("name", FIXTURES)
def test_preprocess_train_and_evaluate_one_episode(name, ray_session, tmp_path, monkeypatch):
    from clad.data.episode_table import decode_episodes
    from clad.libero.suites import get_task
    from clad.model.checkpoint import read_checkpoint_config
    from clad.data.preprocess_config import PreprocessConfig
    from pipelines.cli import main
    from pipelines.preprocess import run_preprocess
    from pipelines.train import run_training

    import pyarrow.parquet as pq

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ds = tmp_path / "ds"
    result = run_preprocess(fixture_dir(name), ds, PreprocessConfig(val_fraction=0.0))
    m = result.manifest
    assert m["format"] == "lerobot_v3" and m["image_orientation"] == "upright"
    (mapped,) = m["lerobot"]["tasks"]
    assert (mapped["suite"], mapped["benchmark_index"]) == ("libero_object", 0)
    spec = get_task(mapped["suite"], mapped["benchmark_index"])
    # the dataset says "pick the ...", the benchmark "pick up the ...": training uses the benchmark's words
    assert mapped["task"] != spec.language
    (task,) = m["tasks"]
    assert {k: task[k] for k in ("index", "name", "instruction", "files")} == {
        "index": 0, "name": spec.name, "instruction": spec.language, "files": ["data/chunk-000/file-000.parquet"]}
    assert task["benchmark"] == {"suite": "libero_object", "index": 0, "name": spec.name}
    meta = pq.read_table(fixture_dir(name) / "meta/episodes/chunk-000/file-000.parquet")
    assert m["counts"]["steps"]["train"] == sum(meta.column("length").to_pylist())
    rows = [ep for f in sorted((ds / "episodes/train").glob("*.parquet")) for ep in decode_episodes(pq.read_table(f))]
    assert [ep["length"] for ep in rows] == meta.column("length").to_pylist()
    assert rows[0]["agentview_rgb"].shape == (rows[0]["length"], 128, 128, 3)

    runs = tmp_path / "runs"
    s1 = run_training(_train_cfg(ds, runs, "stage1"))
    assert s1.error is None
    s2 = run_training(_train_cfg(ds, runs, "stage2", f"stage1_checkpoint={runs / 'stage1' / 'final'}"))
    assert s2.error is None
    final = runs / "stage2" / "final"
    assert read_checkpoint_config(final).image_orientation == "upright"  # recorded, applied by the eval adapter

    out = tmp_path / "eval"
    code = main(["eval", "--checkpoint", str(final), "--suite", mapped["suite"], "--tasks", mapped["name"],
                 "--episodes-per-task", "1", "--max-steps", "8", "--actors", "1", "--video-episodes", "0",
                 "--no-mlflow", "--no-progress", "--out", str(out)])
    assert code == 0
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert [(e["suite"], e["task_name"]) for e in episodes] == [(mapped["suite"], spec.name)]
    assert episodes[0]["steps"] >= 1
