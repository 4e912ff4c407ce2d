"""`clad tune` with the closed-loop objective: trials train stage 1 with their sampled tau and m, then a short
policy stage 2 whose checkpoints are rolled out in real LIBERO; each success round is a Tune report (ASHA's
time unit), and results.csv gives success with its interval per trial."""

from __future__ import annotations

import json

import pytest
import yaml

from clad.errors import ConfigError
from tiny_sweep import run_sweep, write_sweep_inputs

SUITE = "libero_object"


def _space(**kw) -> dict:
    doc = {"name": "cl", "objective": "closed_loop_success", "mode": "max", "num_samples": 2,
           "resources_per_trial": {"num_workers": 1, "cpus_per_worker": 0.4},
           "scheduler": {"type": "asha", "max_t": 2, "grace_period": 1},
           "stage2_steps": 4, "eval_every": 2,
           "closed_loop": {"suite": SUITE, "tasks": ["0"], "episodes_per_task": 1, "max_steps": 8, "settle_steps": 1,
                           "camera_size": 32, "actors": 1, "cpus_per_actor": 0.3, "poll_s": 0.5},
           "space": {"model.dynamics.tau": {"choice": [2, 3]},
                     "model.dynamics.ema_decay": {"one_minus_loguniform": [0.0005, 0.01]}}}
    doc.update(kw)
    return doc


def test_closed_loop_space_errors_name_the_field(tmp_path):
    from clad.training.config import load_train_config
    from pipelines.tune import check_closed_loop, load_space

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_space(eval_every=0)))
    with pytest.raises(ConfigError, match="needs eval_every"):
        load_space(bad)
    bad.write_text(yaml.safe_dump(_space(mode="min")))
    with pytest.raises(ConfigError, match="mode: max"):
        load_space(bad)
    doc = _space()
    doc["closed_loop"] = {**doc["closed_loop"], "policy_mode": "server"}  # the shared pool runs policies in-actor
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="policy_mode: in_actor"):
        load_space(bad)
    bad.write_text(yaml.safe_dump(_space(eval_every=3)))
    base = load_train_config(None, ["dataset_dir=ds", "checkpoint_every=2", "validate_every=2"])
    with pytest.raises(ConfigError, match=r"eval_every \(3\) must be a multiple of checkpoint_every \(2\)"):
        check_closed_loop(load_space(bad), base.to_dict(), "base.yaml")
    bad.write_text(yaml.safe_dump(_space(eval_every=2)))
    in_bucket = base.replace(output_dir="s3://bucket/runs")  # evaluation during training works on a bucket run
    check_closed_loop(load_space(bad), in_bucket.to_dict(), "base.yaml")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.libero
def test_two_trial_closed_loop_sweep(ray_session, tmp_path, monkeypatch, capsys):
    from clad.libero.suites import get_task

    # the demos carry real libero_object task names: the trials' rollouts build those scenes
    base, space = write_sweep_inputs(tmp_path, [get_task(SUITE, i).name for i in range(2)], _space(),
                                     validate_every=2, policy_ema_decay=0)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep, rows = run_sweep(base, space)
    # the driver's resource check counts the shared pool's CPUs once, not once per trial
    assert "shared env pool 1 actors x 0.3 CPU = 0.3 CPU, reserved once for all trials" in capsys.readouterr().out
    assert len(rows) == 2
    # one pool of env actors served both trials: one simulator started for the whole sweep, nothing left queued
    pool = json.loads((sweep / "env_pool.json").read_text())
    assert pool["actors"] == 1 and pool["actors_started"] == 1 and pool["actors_lost"] == 0
    assert pool["queued"] == {} and pool["fatal"] is None
    assert sorted(set(pool["dispatched"])) == sorted(row["trial"] for row in rows)
    scenes = {}
    for row in rows:
        assert row["status"] == "ok"
        assert int(row["model.dynamics.tau"]) in (2, 3)
        rate, lo, hi = float(row["objective"]), float(row["ci95_low"]), float(row["ci95_high"])
        assert 0 <= lo <= rate <= hi <= 1 and int(float(row["episodes"])) == 1
        assert int(float(row["steps"])) in (2, 4)  # the round ASHA last saw (2 if it stopped the trial)
        trial_dir = next((sweep / "trials").glob(f"{row['trial']}-stage2"))
        done = sorted(p.parent.name for p in trial_dir.glob("closed_loop/step_*/result.json"))
        assert "step_0000002" in done
        episodes = [json.loads(x) for x in (trial_dir / "closed_loop" / "step_0000002" / "eval" / "episodes.jsonl")
                    .read_text().splitlines()]
        assert all(e["actor"].startswith("shared-env0.") for e in episodes)  # the sweep's actor, not the trial's
        scenes[row["trial"]] = [(e["task_index"], e["init_index"], e["seed"]) for e in episodes]
    first, second = scenes.values()
    assert first == second  # both trials were scored on the same init states and seeds


def test_shipped_success_space_loads():
    from pathlib import Path

    from pipelines.tune import load_space

    space = load_space(Path(__file__).resolve().parents[1] / "tune_spaces" / "tau_ema_success.yaml")
    assert space.objective == "closed_loop_success" and space.mode == "max"
    assert space.eval_every and space.closed_loop.suite == "libero_object"
    assert space.scheduler.max_t == space.stage2_steps // space.eval_every
