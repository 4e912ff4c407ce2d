"""Ctrl-C stops `clad train` and `clad eval` within seconds and leaves no MLflow run RUNNING (issue 16).

Real subprocesses, real Ray, a real MLflow SQLite store, the tiny model; SIGINT goes to the command's pid,
as a terminal's Ctrl-C would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from libero_files import write_demo_file

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
STOP_WITHIN_S = 60  # generous for a loaded 2-core machine; without the fix the command did not stop at all


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            lines = [x for x in proc.stderr.read().splitlines() if "RayTrainWorker" not in x]
            raise AssertionError(f"the command ended (rc {proc.returncode}) before {what}:\n" + "\n".join(lines[-40:]))
        value = predicate()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


def _interrupt(proc: subprocess.Popen) -> tuple[int, float, str]:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"still running {STOP_WITHIN_S} s after SIGINT:\n{err[-3000:]}")
    return proc.returncode, time.monotonic() - t0, err


def _runs(uri: str, experiment: str) -> list:
    try:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        return [] if exp is None else client.search_runs([exp.experiment_id])
    except Exception:  # the store is being created by the command
        return []


def test_ctrl_c_stops_training_and_marks_the_run_killed(tmp_path):
    for i in range(2):
        write_demo_file(tmp_path / "raw", f"task_{i}", lengths=(24, 32, 28, 20), image_size=32, seed=i)
    pre = subprocess.run([sys.executable, "-m", "pipelines.cli", "preprocess", "--input", str(tmp_path / "raw"),
                          "--out", str(tmp_path / "ds")], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert pre.returncode == 0, pre.stderr[-3000:]  # (on an overloaded machine Ray itself may fail to start)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "train", "stage1", "--tracking-uri", uri,
         "-o", f"dataset_dir={tmp_path / 'ds'}", "-o", f"output_dir={tmp_path / 'runs'}", "-o", "model_preset=tiny",
         "-o", "batch_size=8", "-o", "steps=100000", "-o", "log_every=1", "-o", "checkpoint_every=50000",
         "-o", "validate_every=50000", "-o", "mlflow_experiment=interrupt"],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def training_logged():
            runs = _runs(uri, "interrupt")
            return runs and MlflowClient(uri).get_metric_history(runs[0].info.run_id, "train/loss")

        _wait(training_logged, 600, "the first logged training step", proc)
        rc, took, err = _interrupt(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130, err[-3000:]
    assert "interrupted" in err and took < STOP_WITHIN_S
    (run,) = _runs(uri, "interrupt")
    assert run.info.status == "KILLED"


def test_ctrl_c_stops_an_evaluation(tmp_path):
    out = tmp_path / "eval"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "eval", "--policy", "tiny", "--suite", "libero_object", "--tasks", "0",
         "--episodes-per-task", "2", "--actors", "1", "--video-episodes", "0", "--no-progress", "--out", str(out),
         "--tracking-uri", uri, "--experiment", "interrupt-eval"],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: (out / "eval_config.json").is_file(), 300, "the evaluation to start", proc)
        time.sleep(15)  # Ray is up and the env actor is starting or rolling out
        rc, took, err = _interrupt(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130, err[-3000:]
    assert "interrupted: finished episodes are kept" in err and took < STOP_WITHIN_S
    assert all(r.info.status != "RUNNING" for r in _runs(uri, "interrupt-eval"))
    from pipelines.locking import lock_folder

    with lock_folder(out, "test"):  # the interrupted command released its folder
        pass
