"""SIGTERM (a scheduler's, `kill`'s or `ray job stop`'s) stops `clad` like Ctrl-C, with exit code 143.

Before pipelines/signals.py, Ray's driver aborted on SIGTERM ("*** SIGTERM received ... Aborted", exit
134): the MLflow run stayed RUNNING and the output folder stayed locked. Real subprocesses, real Ray, a
real MLflow SQLite store, the tiny policy.
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

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 300  # only catches a command that never stops; how fast it stops is not what is tested


def test_sigterm_stops_an_evaluation_cleanly(tmp_path):
    out = tmp_path / "eval"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "eval", "--policy", "tiny", "--suite", "libero_object", "--tasks", "0",
         "--episodes-per-task", "2", "--actors", "1", "--video-episodes", "0", "--no-progress", "--out", str(out),
         "--tracking-uri", uri, "--experiment", "sigterm-eval"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        log = out / "clad.log"
        while not (log.is_file() and "rolling out" in log.read_text()):  # Ray is up, the pool is starting
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() - t0 < HANG_GUARD_S, "the evaluation never started"
            time.sleep(1.0)
        time.sleep(5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "interrupted: finished episodes are kept" in err and "SIGTERM received" not in err
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sigterm-eval")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    # evaluation opens its MLflow run when the episodes are done: an interrupted one leaves none RUNNING
    assert all(r.info.status != "RUNNING" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert not (out / "summary.json").exists()  # no summary from half an evaluation
    from pipelines.locking import lock_folder

    with lock_folder(out, "test"):  # the terminated command released its folder
        pass
