"""`clad eval-checkpoints`: a stage 2 trained WITHOUT eval_every keeps its intermediate models (models/step_*),
and the command rolls them out afterwards in real LIBERO on real Ray, logs success to the run's real MLflow
history and writes the rank-correlation JSON; re-running it resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from clad.errors import ConfigError
from libero_files import write_demo_file

SUITE = "libero_object"


def test_keep_models_every_must_be_a_checkpoint_step():
    from clad.training.config import load_train_config

    with pytest.raises(ConfigError, match=r"keep_models_every \(3\) must be a multiple of checkpoint_every \(2\)"):
        load_train_config(None, ["dataset_dir=ds", "stage=stage2", "model.policy.foresight=none",
                                 "checkpoint_every=2", "keep_models_every=3"])
    cfg = load_train_config(None, ["dataset_dir=ds", "stage=stage2", "model.policy.foresight=none",
                                   "checkpoint_every=2"])
    assert cfg.models_every == 2  # default: every checkpoint's model is kept
    assert cfg.replace(stage="stage1", model=load_train_config(None, ["dataset_dir=ds"]).model).models_every == 0


def test_a_folder_that_is_no_run_is_refused(tmp_path):
    from pipelines.cli import main

    assert main(["eval-checkpoints", "--run", str(tmp_path), "--suite", SUITE]) == 2  # CladError -> exit 2
    assert main(["eval-checkpoints", "--run", "s3://bucket/runs/stage2", "--suite", SUITE]) == 2


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.libero
def test_saved_checkpoints_are_evaluated_after_the_fact_and_resume(ray_session, tmp_path, monkeypatch):
    from clad.data.preprocess_config import PreprocessConfig
    from clad.libero.suites import get_task
    from clad.training.config import load_train_config
    from pipelines.cli import main
    from pipelines.preprocess import run_preprocess
    from pipelines.tracking import resolve_tracking
    from pipelines.train import run_training

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_demo_file(tmp_path / "raw", get_task(SUITE, 0).name, lengths=(24, 32, 28, 20), image_size=32, seed=0)
    run_preprocess(tmp_path / "raw", tmp_path / "ds", PreprocessConfig(val_fraction=0.25))
    tracking = resolve_tracking(tmp_path / "mlflow_root", experiment="test-eval-checkpoints")
    cfg = load_train_config(None, [
        f"dataset_dir={tmp_path / 'ds'}", f"output_dir={tmp_path / 'out'}", "stage=stage2", "model_preset=tiny",
        "model.policy.foresight=none", "batch_size=8", "checkpoint_every=2", "validate_every=2", "val_batches=1",
        "optim.warmup_steps=1", "steps=6", "cpus_per_worker=0.5", "policy_ema_decay=0",
        "keep_checkpoints=1"])  # Ray keeps only the last checkpoint_*; models/ keeps every checkpoint's model
    result = run_training(cfg, tracking=tracking)
    assert result.error is None
    run = tmp_path / "out" / "stage2"
    assert len(list(run.glob("checkpoint_*"))) < 3  # Ray pruned at least one checkpoint_* ...
    assert sorted(p.name for p in (run / "models").glob("step_*")) == [  # ... models/ kept all three
        "step_0000002", "step_0000004", "step_0000006"]

    cmd = ["eval-checkpoints", "--run", str(run), "--suite", SUITE, "--tasks", "0", "--episodes-per-task", "1",
           "--max-steps", "8", "--settle-steps", "1", "--camera-size", "32", "--actors", "1",
           "--cpus-per-actor", "0.5", "--tracking-uri", tracking.uri]
    assert main(cmd) == 0

    ranks = json.loads((run / "closed_loop" / "rank_correlation.json").read_text())
    assert [c["step"] for c in ranks["checkpoints"]] == [2, 4, 6]
    for c in ranks["checkpoints"]:
        lo, hi = c["ci95"]
        assert c["n"] == 1 and 0 <= lo <= c["rate"] <= hi <= 1
        assert "val/loss" in c["val"]  # the open-loop metric reported with that checkpoint
    assert ranks["metrics"]["val/loss"]["steps"] == [2, 4, 6]
    assert ranks["metrics"]["val/loss"]["goal_progress"]["steps"] == [2, 4, 6]  # partial credit, per checkpoint
    assert all(0.0 <= c["goal_progress"] <= 1.0 for c in ranks["checkpoints"])
    # the three checkpoints ran on one env actor, started once (not once per checkpoint)
    env_pool = json.loads((run / "closed_loop" / "env_pool.json").read_text())
    assert env_pool["actors_started"] == 1 and env_pool["actors_lost"] == 0 and env_pool["fatal"] is None
    assert len(env_pool["dispatched"]) == 3
    run_id = json.loads((run / "models" / "step_0000002" / "metrics.json").read_text())["mlflow_run_id"]
    client = MlflowClient(tracking.uri)
    assert sorted(m.step for m in client.get_metric_history(run_id, "closed_loop/success_rate")) == [2, 4, 6]
    mlflow_loss = {m.step: m.value for m in client.get_metric_history(run_id, "val/loss")}
    assert {c["step"]: c["val"]["val/loss"] for c in ranks["checkpoints"]} == pytest.approx(
        {s: mlflow_loss[s] for s in (2, 4, 6)})
    best = json.loads((run / "best_checkpoints.json").read_text())
    assert best["evaluated_steps"] == [2, 4, 6] and (run / "best" / "model.safetensors").is_file()
    # the same fixed scene for every checkpoint
    scenes = {json.loads((run / "closed_loop" / f"step_{s:07d}" / "eval" / "episodes.jsonl").read_text()
                         .splitlines()[0])["seed"] for s in (2, 4, 6)}
    assert len(scenes) == 1

    # resume: step 2 is done (skipped), step 4 lost its result after its episode was logged (not re-run)
    step2 = run / "closed_loop" / "step_0000002" / "result.json"
    stamp = step2.stat().st_mtime_ns
    (run / "closed_loop" / "step_0000004" / "result.json").unlink()
    assert main(cmd) == 0
    assert step2.stat().st_mtime_ns == stamp
    summary = json.loads((run / "closed_loop" / "step_0000004" / "eval" / "summary.json").read_text())
    assert summary["timings"]["episodes_run"] == 0 and summary["timings"]["episodes_resumed"] == 1
    assert sorted(m.step for m in client.get_metric_history(run_id, "closed_loop/success_rate")) == [2, 4, 6]

    # other scenes than the ones already logged: refused before any rollout, naming the setting
    with pytest.raises(ConfigError, match=r"other settings \(base_seed: 0 -> 7\)"):
        from pipelines.eval_checkpoints import evaluate_checkpoints
        from clad.training.closed_loop import ClosedLoopConfig

        evaluate_checkpoints(run, ClosedLoopConfig(suite=SUITE, tasks=("0",), episodes_per_task=1, base_seed=7,
                                                   max_steps=8, settle_steps=1, camera_size=32, cpus_per_actor=0.5),
                             tracking_uri=tracking.uri)
