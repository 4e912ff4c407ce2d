"""The console shows clad's own lines; every library's chatter, from the driver and the Ray workers, goes to
<output folder>/clad.log (pipelines/logs.py, clad/libero/quiet.py)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from libero_files import write_suite
from pipelines import logs
from pipelines.train import _eta

ROOT = Path(__file__).resolve().parents[1]
# a log record on the console: "HH:MM:SS LEVEL logger.name: ...", possibly forwarded from a Ray worker
RECORD = re.compile(r"(?:\(\w+ pid=\d+\)\s*)?\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): ")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# what LIBERO's dependencies and Ray print in every process that imports them (the list)
NOISE = ("Gym has been unmaintained", "using task orders", "robosuite WARNING", "private macro file",
         "OpenGL_accelerate", "Started a local Ray instance", "Token authentication is enabled", "alembic")


def _record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "message", None, None)


def test_console_policy_keeps_our_info_and_only_errors_of_libraries():
    policy = logs.ConsolePolicy()
    assert policy.filter(_record("pipelines.train", logging.INFO))
    assert policy.filter(_record("clad.libero.runtime", logging.WARNING))
    assert not policy.filter(_record("ray.data._internal.execution", logging.INFO))
    assert not policy.filter(_record("py.warnings", logging.WARNING))  # deprecation warnings of any library
    assert not policy.filter(_record("gym", logging.INFO))
    assert policy.filter(_record("ray.train", logging.ERROR))


def test_records_before_the_output_folder_is_known_reach_the_file_and_close_leaves_no_handler(tmp_path):
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    logs.configure(verbose=False)
    try:
        logging.getLogger("somelib").info("said before the folder was known")
        path = logs.attach_log_file(tmp_path / "run")
        logging.getLogger("pipelines.x").info("said after")
        assert os.environ[logs.ENV_LOG_FILE] == str(path)
        options = logs.ray_init_options()
        assert options["runtime_env"]["worker_process_setup_hook"] == "pipelines.logs.setup_worker"
        assert options["runtime_env"]["env_vars"][logs.ENV_LOG_FILE] == str(path)
    finally:
        logs.close()
    text = path.read_text()
    assert "somelib: said before the folder was known" in text and "pipelines.x: said after" in text
    assert root.handlers == before and root.level == level and logs.ENV_LOG_FILE not in os.environ and not logs.is_configured()


def test_eta_reads_as_time_left():
    assert _eta(10.0, 5, 100) == "3m20s"
    assert _eta(100.0, 1, 100) == "2h46m"
    assert _eta(3.0, 3, 12) == "12s"
    assert _eta(0.0, 0, 10) == "0s"  # nothing done yet: no pace to extrapolate


@pytest.mark.slow
@pytest.mark.libero
@pytest.mark.ray
def test_clad_eval_console_has_no_library_noise_and_the_log_file_has_it(tmp_path):
    """A real command with a real env actor: robosuite, gym and LIBERO start in the Ray worker, Ray and MLflow in
    the driver. On the console only clad's records; in clad.log the libraries', the worker's among them."""
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "pipelines.cli", "eval", "--policy", "tiny", "--suite", "libero_object", "--tasks", "0",
           "--episodes-per-task", "1", "--actors", "1", "--max-steps", "10", "--video-episodes", "0", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    console = ANSI.sub("", proc.stdout + proc.stderr)
    assert proc.returncode == 0, console[-4000:]

    _assert_console_is_ours(console)
    assert f"log:      {out / 'clad.log'}" in console and "overall (pooled)" in console

    log_text = (out / "clad.log").read_text()
    assert "Started a local Ray instance" in log_text       # Ray, in the driver
    assert "mlflow" in log_text or "alembic" in log_text    # MLflow's store, in the driver
    pids = {m.group(1) for m in re.finditer(r"^\S+ \S+ (\d+) INFO gym: Gym has been unmaintained", log_text, re.M)}
    assert pids, "gym's banner should be in clad.log"
    assert "using task orders" in log_text
    driver_pid = re.search(r"^\S+ \S+ (\d+) \w+ ray\._private\.worker: Started", log_text, re.M).group(1)
    assert pids - {driver_pid}, "the env actor (a Ray worker) should write its records to the same clad.log"


def _assert_console_is_ours(console: str) -> None:
    for line in console.splitlines():
        assert not any(n in line for n in NOISE), f"library noise on the console: {line!r}"
        record = RECORD.search(line)
        if record:
            assert record.group(2).split(".")[0] in logs.OWN_LOGGERS, f"a library's record on the console: {line!r}"
    for marker in ("Execution plan of Dataset", "Starting execution of Dataset", "Setting up process group",
                   "Started training worker group", "Checkpoint successfully created", "Traceback"):
        assert marker not in console, f"Ray Data / Ray Train internals on the console: {marker}"


@pytest.mark.slow
@pytest.mark.ray
def test_clad_train_console_shows_metrics_with_eta_and_ray_internals_go_to_the_log(tmp_path):
    """Ray Train's controller and workers and Ray Data's split coordinator print the most; on the console only
    the metric lines (with an ETA) and the summary remain, the rest is in <run folder>/clad.log."""
    write_suite(tmp_path / "raw", n_tasks=2)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    cli = [sys.executable, "-m", "pipelines.cli"]
    pre = subprocess.run([*cli, "preprocess", "--input", str(tmp_path / "raw"), "--out", str(tmp_path / "ds")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert pre.returncode == 0, pre.stdout[-3000:] + pre.stderr[-3000:]
    _assert_console_is_ours(ANSI.sub("", pre.stdout + pre.stderr))

    train = subprocess.run([*cli, "train", "stage1", "-o", f"dataset_dir={tmp_path / 'ds'}", "-o",
                            f"output_dir={tmp_path / 'runs'}", "-o", "model_preset=tiny", "-o", "steps=10", "-o",
                            "batch_size=8", "-o", "log_every=5", "-o", "checkpoint_every=10", "-o", "validate_every=10",
                            "-o", "val_batches=1",
                            # streamed from Ray Data (a dataset this small is otherwise held in memory), so the
                            # split coordinator's execution plan has to go to the log
                            "-o", "loader.source=stream"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    console = ANSI.sub("", train.stdout + train.stderr)
    assert train.returncode == 0, console[-4000:]
    _assert_console_is_ours(console)
    assert re.search(r"pipelines\.train: stage1 step 5/10  eta \S+  ", console), console[-3000:]
    log_text = (tmp_path / "runs" / "stage1" / "clad.log").read_text()
    assert "Execution plan of Dataset" in log_text          # Ray Data, from the split coordinator
    assert "ray.train" in log_text                          # Ray Train's controller and workers


@pytest.mark.slow
@pytest.mark.ray
def test_clad_train_refused_by_its_tracking_server_leaves_no_run_folder(tmp_path):
    """An unreachable --tracking-uri is refused before the run folder (and its clad.log) is made."""
    import socket

    write_suite(tmp_path / "raw", n_tasks=1)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RAY_ADDRESS", None)
    cli = [sys.executable, "-m", "pipelines.cli"]
    pre = subprocess.run([*cli, "preprocess", "--input", str(tmp_path / "raw"), "--out", str(tmp_path / "ds")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert pre.returncode == 0, pre.stdout[-3000:] + pre.stderr[-3000:]
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    train = subprocess.run([*cli, "train", "stage1", "-o", f"dataset_dir={tmp_path / 'ds'}", "-o",
                            f"output_dir={tmp_path / 'runs'}", "-o", "model_preset=tiny", "--tracking-uri", uri],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert train.returncode == 2 and uri in train.stderr, train.stderr[-3000:]
    assert not (tmp_path / "runs").exists()


def test_verbose_puts_every_library_back_on_the_console_and_our_debug_too():
    logs.configure(verbose=True)
    try:
        console = next(h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)
                       and not isinstance(h, logging.FileHandler) and h in logs._state["handlers"])
        assert console.filters == []  # no console policy: ray, mlflow, gym ... all shown
        assert logging.getLogger("pipelines").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("urllib3").isEnabledFor(logging.DEBUG)  # libraries stay at INFO
    finally:
        logs.close()
    assert logging.getLogger("pipelines").level == logging.NOTSET  # close() undoes it


def test_a_bucket_output_folder_gets_its_log_in_the_local_cache(tmp_path, monkeypatch):
    """`clad preprocess --out s3://b/ds` and `clad pipeline -o output_dir=s3://...` must not create a local
    folder named 's3:' in the working directory."""
    from clad import storage

    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    logs.configure(verbose=False)
    try:
        path = logs.attach_log_file("s3://bucket/prefix/ds")
        logging.getLogger("pipelines.x").info("written locally")
    finally:
        logs.close()
    assert path == storage.cache_root() / "logs" / "ds" / logs.LOG_FILE_NAME
    assert "written locally" in path.read_text() and not (tmp_path / "s3:").exists()
