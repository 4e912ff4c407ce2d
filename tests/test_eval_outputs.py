"""Outputs of an evaluation whose episodes are all in the log already: nothing is re-run (no Ray, no
simulator), and the summary, plot and MLflow run (nested under a parent run) are produced from the log."""

from __future__ import annotations

import json

import pytest

from clad.eval.config import EvalConfig
from clad.eval.policy import PolicySpec
from clad.eval.protocol import plan_episodes
from clad.eval.results import EpisodeResult, ResultLog


@pytest.mark.libero  # reads the suite's task list (no simulator is built)
def test_complete_log_is_summarised_and_logged_under_a_parent_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipelines.evaluate import run_evaluation
    from pipelines.tracking import PARENT_TAG, resolve_tracking, start_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = EvalConfig(suite="libero_object", tasks=("1", "3"), episodes_per_task=3, max_steps=50,
                     policy=PolicySpec(kind="zero"), video_episodes=0)
    log = ResultLog(tmp_path / "episodes.jsonl")
    for s in plan_episodes("libero_object", [1, 3], 3, 0, 50, cfg.settle_steps):
        log.append(EpisodeResult(suite=s.suite, task_index=s.task_index, task_name=f"t{s.task_index}",
                                 episode=s.episode, init_index=s.init_index, seed=s.seed,
                                 success=s.task_index == 1 or s.episode == 0, steps=12, wall_s=0.5))
    tracking = resolve_tracking(tmp_path)
    with start_run(tracking, "pipeline") as parent:
        report = run_evaluation(cfg, tmp_path, parent_run_id=parent.info.run_id, progress=False)
    assert report.episodes_run == 0 and report.summary["complete"]
    tasks = {t["task_index"]: t for t in report.summary["summary"]["tasks"]}
    assert (tasks[1]["successes"], tasks[3]["successes"]) == (3, 1)
    assert report.summary["summary"]["suites"]["libero_object"]["task_average"] == pytest.approx(4 / 6)
    assert json.loads((tmp_path / "summary.json").read_text())["timings"]["all_env_steps"] == 72
    assert (tmp_path / "success.png").is_file() and "[3]" in report.table
    child = MlflowClient(tracking.uri).get_run(report.paths["mlflow_run_id"])
    assert child.data.tags[PARENT_TAG] == parent.info.run_id
    assert child.data.metrics["success_rate/libero_object"] == pytest.approx(4 / 6)


@pytest.mark.libero  # reads the suite's task list (no simulator is built)
def test_resumed_folder_keeps_its_run_and_a_copied_folder_gets_its_own(tmp_path, monkeypatch):
    import shutil

    from pipelines.evaluate import run_evaluation

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = EvalConfig(suite="libero_object", tasks=("1",), episodes_per_task=2, max_steps=50,
                     policy=PolicySpec(kind="zero"), video_episodes=0)
    first = tmp_path / "eval"
    log = ResultLog(first / "episodes.jsonl")
    for s in plan_episodes("libero_object", [1], 2, 0, 50, cfg.settle_steps):
        log.append(EpisodeResult(suite=s.suite, task_index=s.task_index, task_name="t1", episode=s.episode,
                                 init_index=s.init_index, seed=s.seed, success=True, steps=12, wall_s=0.5))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_a = run_evaluation(cfg, first, tracking_uri=uri, progress=False).paths["mlflow_run_id"]
    assert run_evaluation(cfg, first, tracking_uri=uri, progress=False).paths["mlflow_run_id"] == run_a
    copy = tmp_path / "eval_copy"  # e.g. to extend a finished evaluation and keep the original
    shutil.copytree(first, copy)
    run_b = run_evaluation(cfg, copy, tracking_uri=uri, progress=False).paths["mlflow_run_id"]
    assert run_b != run_a
    assert json.loads((copy / "mlflow_run.json").read_text())["run_id"] == run_b
