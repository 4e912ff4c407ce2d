"""Closed-loop evaluation during training, end to end at tiny size: real Ray Train, real LIBERO env actors,
real MLflow. A policy-only stage 2 (tiny preset) trains on layout-exact demo files named after real
libero_object tasks; its checkpoints are rolled out in the real simulator while it trains, and the success
history is read back from MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from clad.errors import ConfigError
from libero_files import write_demo_file

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.libero]

SUITE = "libero_object"


@pytest.fixture(autouse=True)
def _local_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def dataset(ray_session, tmp_path_factory):
    from clad.data.preprocess_config import PreprocessConfig
    from clad.libero.suites import get_task
    from pipelines.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("cl_data")
    for i in range(2):
        write_demo_file(root / "raw", get_task(SUITE, i).name, lengths=(24, 32, 28, 20), image_size=32, seed=i)
    run_preprocess(root / "raw", root / "ds", PreprocessConfig(val_fraction=0.25))
    return root / "ds"


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    from pipelines.tracking import resolve_tracking

    return resolve_tracking(tmp_path_factory.mktemp("cl_mlflow"), experiment="test-closed-loop")


def _cfg(dataset: Path, out: Path, *overrides: str):
    from clad.training.config import load_train_config

    return load_train_config(None, [
        f"dataset_dir={dataset}", f"output_dir={out}", "stage=stage2", "model_preset=tiny",
        "model.policy.foresight=none", "batch_size=8", "log_every=1", "checkpoint_every=2", "validate_every=2",
        "val_batches=1", "optim.warmup_steps=1", "steps=4", "cpus_per_worker=0.5", "policy_ema_decay=0",
        "eval_every=2", f"closed_loop.suite={SUITE}", "closed_loop.tasks=['0']", "closed_loop.episodes_per_task=1",
        "closed_loop.max_steps=8", "closed_loop.settle_steps=1", "closed_loop.camera_size=32",
        "closed_loop.actors=1", "closed_loop.cpus_per_actor=0.5", "closed_loop.keep_best=1", "closed_loop.poll_s=0.5",
        *overrides])


@pytest.fixture(scope="module")
def trained(dataset, tracking, tmp_path_factory):
    """Stopped at step 2 (its checkpoint evaluated), then the same command resumed to step 4."""
    from pipelines.train import run_training

    out = tmp_path_factory.mktemp("cl_runs")
    seen: list[int] = []
    first = run_training(_cfg(dataset, out, "stop_at_step=2"), tracking=tracking,
                         on_eval_result=lambda r: seen.append(r["step"]))
    second = run_training(_cfg(dataset, out), tracking=tracking, on_eval_result=lambda r: seen.append(r["step"]))
    return {"out": out, "run": out / "stage2", "first": first, "second": second, "seen": seen}


def test_success_history_is_in_the_stage_mlflow_run_next_to_validation(trained, tracking):
    from clad.training.state import load_training_state

    assert trained["first"].error is None and trained["second"].error is None
    assert trained["seen"] == [2, 4]  # the resumed run did not evaluate step 2 again
    run_id = load_training_state(trained["second"].checkpoint.path)["extra"]["mlflow_run_id"]
    client = MlflowClient(tracking.uri)
    success = client.get_metric_history(run_id, "closed_loop/success_rate")
    assert sorted(m.step for m in success) == [2, 4]  # once per checkpoint, across the interruption
    low = {m.step: m.value for m in client.get_metric_history(run_id, "closed_loop/ci95_low")}
    high = {m.step: m.value for m in client.get_metric_history(run_id, "closed_loop/ci95_high")}
    for m in success:
        assert 0.0 <= low[m.step] <= m.value <= high[m.step] <= 1.0
    assert {m.step for m in client.get_metric_history(run_id, "val/loss")} >= {2, 4}
    assert all(m.value > 0 for m in client.get_metric_history(run_id, "closed_loop/delay_s"))

    for step in (2, 4):
        d = trained["run"] / "closed_loop" / f"step_{step:07d}"
        result = json.loads((d / "result.json").read_text())
        records = [json.loads(x) for x in (d / "eval" / "episodes.jsonl").read_text().splitlines()]
        assert len(records) == 1 and records[0]["error"] is None, records
        assert result["successes"] == sum(r["success"] for r in records) and result["n"] == 1
        assert "val/loss" in result["val"]
        # the same fixed scene for every checkpoint: episode 0 of task 0, init state 0, the same seed
        assert (records[0]["init_index"], records[0]["seed"]) == (0, 1_000_000)
        r0 = records[0]
        assert result["goal_progress"] == (1.0 if r0["success"] else r0["goals_met"] / r0["goals_total"])
    # each of the two runs started its env actor once, for all of its checkpoints
    pool = json.loads((trained["run"] / "closed_loop" / "env_pool.json").read_text())
    assert pool["actors_started"] == 1 and pool["fatal"] is None


def test_best_checkpoint_is_named_and_clad_eval_takes_it(trained):
    from clad.training.closed_loop import select_best
    from pipelines.eval_during_training import read_results
    from pipelines.evaluate import run_evaluation
    from pipelines.eval_during_training import eval_config

    run = trained["run"]
    doc = json.loads((run / "best_checkpoints.json").read_text())
    expected = select_best(read_results(run), 1)[0]
    assert [b["step"] for b in doc["best"]] == [expected["step"]]
    assert (run / "best" / "model.safetensors").read_bytes() == \
        (Path(expected["model"]) / "model.safetensors").read_bytes()
    # keep_best=1: the other checkpoint's model copy is pruned, its episode log kept
    other = 6 - expected["step"]
    assert not (run / "closed_loop" / f"step_{other:07d}" / "model").exists()
    assert (run / "closed_loop" / f"step_{other:07d}" / "eval" / "episodes.jsonl").is_file()
    ranks = json.loads((run / "closed_loop" / "rank_correlation.json").read_text())
    assert ranks["metrics"]["val/loss"]["n"] == 2 and ranks["metrics"]["val/loss"]["steps"] == [2, 4]
    # `clad eval --checkpoint <run>/best` reads the best folder like any exported model
    cfg = eval_config(_cfg(Path("ds"), Path("x")).closed_loop, run / "best")
    report = run_evaluation(cfg, trained["out"] / "eval_best", use_mlflow=False, progress=False)
    assert report.summary["complete"] and report.summary["summary"]["overall"]["errors"] == 0


def test_an_interrupted_evaluation_resumes_without_double_counting(trained, dataset, tracking):
    """A run killed after its episodes were logged but before the result was written: the next start
    finishes it from the episode log (no episode re-run) and MLflow still has one value per step."""
    from clad.training.state import load_training_state
    from pipelines.eval_during_training import ClosedLoopEvaluator

    run = trained["run"]
    step_dir = run / "closed_loop" / "step_0000004"
    before = json.loads((step_dir / "result.json").read_text())
    (step_dir / "result.json").unlink()
    model_missing = not (step_dir / "model").exists()
    if model_missing:  # pruned (not the best): put the best model there, as a still-pending copy would be
        import shutil

        shutil.copytree(run / "best", step_dir / "model")
    cfg = _cfg(dataset, trained["out"])
    ev = ClosedLoopEvaluator(cfg, run, tracking=tracking).start()
    results = ev.finish()
    assert ev.errors == []
    after = json.loads((step_dir / "result.json").read_text())
    assert (after["successes"], after["n"]) == (before["successes"], before["n"])
    summary = json.loads((step_dir / "eval" / "summary.json").read_text())
    assert summary["timings"]["episodes_run"] == 0 and summary["timings"]["episodes_resumed"] == 1
    assert [r["step"] for r in results] == [2, 4]
    run_id = load_training_state(trained["second"].checkpoint.path)["extra"]["mlflow_run_id"]
    assert sorted(m.step for m in MlflowClient(tracking.uri).get_metric_history(run_id, "closed_loop/success_rate")) == [2, 4]


@pytest.mark.parametrize("override, message", [
    ("closed_loop.tasks=['5']", r"closed_loop.tasks: .* are not in the dataset"),
    ("closed_loop.episodes_per_task=51", r"closed_loop.episodes_per_task=51 .* 50 init states"),
    ("closed_loop.actors=3", r"3 env actors x 0.5 CPU = 1.5 CPU.*leave 1 CPU"),
    ("closed_loop.rollout_resource=rollout_node", r"nodes with the resource 'rollout_node' leave 0 CPU"),
])
def test_bad_closed_loop_input_fails_before_training(dataset, tracking, tmp_path, override, message):
    from pipelines.train import run_training

    with pytest.raises(ConfigError, match=message):
        run_training(_cfg(dataset, tmp_path, override), tracking=tracking)
    assert not list((tmp_path / "stage2").glob("checkpoint_*"))
