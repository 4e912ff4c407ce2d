"""Evaluation during training with an output_dir in object storage (moto's S3 server, real Ray Train, real
LIBERO env actors, real MLflow): the checkpoints are read from the bucket, every closed-loop output lands in
it, the env actors read the policy from the bucket (never from the driver's disk, tests/storage_hooks.py),
and an interrupted run resumes from what the bucket holds."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from clad import storage
from libero_files import write_demo_file
from test_storage import BUCKET, env, ray_guarded, s3, tracking  # noqa: F401  (module fixtures: S3 server, guarded Ray)

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.libero]

SUITE = "libero_object"


def test_eval_every_with_an_output_dir_in_a_bucket(env, ray_guarded, tracking):
    from clad.data.preprocess_config import PreprocessConfig
    from clad.libero.suites import get_task
    from clad.training.config import load_train_config
    from pipelines.preprocess import run_preprocess
    from pipelines.train import run_training

    raw = env["shared"] / "cl_raw"  # raw LIBERO files sit on a shared mount
    write_demo_file(raw, get_task(SUITE, 0).name, lengths=(24, 32, 28, 20), image_size=32, seed=0)
    data = f"s3://{BUCKET}/cl_ds"
    run_preprocess(raw, data, PreprocessConfig(val_fraction=0.25))

    def cfg(*extra):
        return load_train_config(None, [
            f"dataset_dir={data}", f"output_dir=s3://{BUCKET}/cl_runs", "stage=stage2", "model_preset=tiny",
            "model.policy.foresight=none", "batch_size=8", "checkpoint_every=2", "validate_every=2",
            "val_batches=1", "optim.warmup_steps=1", "steps=4", "cpus_per_worker=0.5", "policy_ema_decay=0",
            "eval_every=2", f"closed_loop.suite={SUITE}", "closed_loop.tasks=['0']", "closed_loop.episodes_per_task=1",
            "closed_loop.max_steps=8", "closed_loop.settle_steps=1", "closed_loop.camera_size=32",
            "closed_loop.actors=1", "closed_loop.cpus_per_actor=0.5", "closed_loop.keep_best=1",
            "closed_loop.poll_s=0.5", *extra])

    seen: list[int] = []
    first = run_training(cfg("stop_at_step=2"), tracking=tracking, on_eval_result=lambda r: seen.append(r["step"]))
    second = run_training(cfg(), tracking=tracking, on_eval_result=lambda r: seen.append(r["step"]))
    assert first.error is None and second.error is None
    assert seen == [2, 4]  # the resumed run found step 2's result in the bucket and did not roll it out again

    run = f"s3://{BUCKET}/cl_runs/stage2"
    results = {}
    for step in (2, 4):
        d = f"{run}/closed_loop/step_{step:07d}"
        results[step] = storage.read_json(f"{d}/result.json")
        assert storage.is_file(f"{d}/eval/episodes.jsonl") and storage.is_file(f"{d}/eval/summary.json")
        lo, hi = results[step]["ci95"]
        assert results[step]["n"] == 1 and 0 <= lo <= results[step]["rate"] <= hi <= 1
        # the env actor was given the model in the bucket
        assert storage.read_json(f"{d}/eval/eval_config.json")["policy"]["checkpoint"] == f"{d}/model"
    ranks = storage.read_json(f"{run}/closed_loop/rank_correlation.json")
    assert [c["step"] for c in ranks["checkpoints"]] == [2, 4]
    best = storage.read_json(f"{run}/best_checkpoints.json")
    assert best["best_dir"] == f"{run}/best" and storage.is_file(f"{run}/best/model.safetensors")
    other = 6 - best["best"][0]["step"]  # keep_best=1: the other model copy is pruned in the bucket too
    assert not storage.exists(f"{run}/closed_loop/step_{other:07d}/model/model.safetensors")

    run_id = results[4]["mlflow_run_id"]
    history = MlflowClient(tracking.uri).get_metric_history(run_id, "closed_loop/success_rate")
    assert sorted(m.step for m in history) == [2, 4]
    violations = ray_guarded["violations"]
    assert not violations.exists() or not violations.read_text().strip(), violations.read_text()
