"""Issue 16: every command checks its inputs on the driver, before any worker, actor or write (docs/checks.md).

These tests need no Ray: each mistake must be refused before Ray would start.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clad.errors import CheckpointError, CladError, ConfigError
from clad.eval.config import EvalConfig
from clad.eval.policy import PolicySpec

ROOT = Path(__file__).resolve().parents[1]


def _tiny_checkpoint(directory: Path, stage: str, identity: dict | None = None) -> Path:
    from clad.model.checkpoint import save_checkpoint
    from clad.model.model import CladModel
    from clad.model.sizes import model_preset
    from clad.model.testing import fake_stats

    torch.manual_seed(0)
    cfg = model_preset("tiny")
    return save_checkpoint(CladModel(cfg, fake_stats(cfg)), directory, stage, identity)


def _cli(*argv: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eval_cfg(**kw) -> EvalConfig:
    return EvalConfig(suite="libero_object", tasks=("0",), episodes_per_task=1, **kw)


# ------------------------------------------------------------------------------------------- checkpoints
def test_stage1_checkpoint_is_refused_by_eval(tmp_path):
    from pipelines.evaluate import run_evaluation

    ckpt = _tiny_checkpoint(tmp_path / "stage1" / "final", "stage1")
    cfg = _eval_cfg(policy=PolicySpec(kind="clad", checkpoint=str(ckpt)))
    with pytest.raises(CheckpointError, match=r"is a stage1 checkpoint.*needs a stage2 checkpoint.*clad train stage2"):
        run_evaluation(cfg, tmp_path / "out", use_mlflow=False, progress=False)
    assert not (tmp_path / "out").exists()
    run_dir = _tiny_checkpoint(tmp_path / "stage2" / "final", "stage2").parent
    with pytest.raises(CheckpointError, match=r"is a training run folder: pass its model, .*stage2/final"):
        run_evaluation(cfg.replace(policy=PolicySpec(kind="clad", checkpoint=str(run_dir))), tmp_path / "out",
                       use_mlflow=False, progress=False)


def test_truncated_weights_fail_on_the_driver(tmp_path):
    from pipelines.evaluate import run_evaluation

    ckpt = _tiny_checkpoint(tmp_path / "stage2", "stage2")
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # an interrupted copy
    cfg = _eval_cfg(policy=PolicySpec(kind="clad", checkpoint=str(ckpt)))
    with pytest.raises(CheckpointError, match=r"model.safetensors is not a complete safetensors file.*truncated"):
        run_evaluation(cfg, tmp_path / "out", use_mlflow=False, progress=False)
    assert not (tmp_path / "out").exists()


def test_checkpoint_records_its_identity_and_old_checkpoints_still_inspect(tmp_path):
    from safetensors.torch import load_file, save_file

    from clad.model.checkpoint import inspect_checkpoint, load_checkpoint

    ident = {"dataset_fingerprint": "f" * 64, "instructions": json.dumps(["pick up the soup"])}
    info = inspect_checkpoint(_tiny_checkpoint(tmp_path / "new", "stage2", ident), expect_stage="stage2")
    assert info.dataset_fingerprint == "f" * 64 and info.instructions == ["pick up the soup"]
    assert info.metadata["variant"] == info.config.policy.foresight
    assert info.metadata["proprio_dim"] == str(info.config.proprio_dim)
    assert info.metadata["lang_dim"] == str(info.config.lang_dim)

    # a checkpoint written before identity fields existed: stage and format only
    old = _tiny_checkpoint(tmp_path / "old", "stage2")
    tensors = load_file(str(old / "model.safetensors"))
    save_file(tensors, str(old / "model.safetensors"), metadata={"stage": "stage2", "format": "clad-model-v1"})
    legacy = inspect_checkpoint(old, expect_stage="stage2")
    assert legacy.dataset_fingerprint is None and legacy.instructions is None
    load_checkpoint(old)  # still loads


def _train_cfg(tmp_path: Path, stage1: Path | str, *overrides: str):
    from clad.training.config import load_train_config

    return load_train_config(None, ["stage=stage2", f"dataset_dir={tmp_path / 'ds'}", "model_preset=tiny",
                                    f"stage1_checkpoint={stage1}", *overrides])


def test_stage2_checks_its_stage1_checkpoint_on_the_driver(tmp_path):
    from pipelines.train import check_stage1_checkpoint

    manifest = {"fingerprint": "a" * 64}
    with pytest.raises(CheckpointError, match="holds no model.safetensors"):
        check_stage1_checkpoint(_train_cfg(tmp_path, tmp_path / "missing"), manifest)
    stage2 = _tiny_checkpoint(tmp_path / "s2", "stage2")
    with pytest.raises(CheckpointError, match=r"stage1_checkpoint .* is a stage2 checkpoint.*clad train stage1"):
        check_stage1_checkpoint(_train_cfg(tmp_path, stage2), manifest)
    other = _tiny_checkpoint(tmp_path / "s1" / "final", "stage1", {"dataset_fingerprint": "b" * 64})
    with pytest.raises(CheckpointError, match=r"trained on dataset bbbbbbbbbbbb.*is aaaaaaaaaaaa"):
        check_stage1_checkpoint(_train_cfg(tmp_path, tmp_path / "s1"), manifest)  # run dir: its final/ is found
    with pytest.raises(CheckpointError, match=r"another model config:\n  field 'dynamics.tau'"):
        check_stage1_checkpoint(_train_cfg(tmp_path, other, "model.dynamics.tau=7"), {"fingerprint": "b" * 64})
    weights = other / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        check_stage1_checkpoint(_train_cfg(tmp_path, other), {"fingerprint": "b" * 64})
    ok = _tiny_checkpoint(tmp_path / "good", "stage1", {"dataset_fingerprint": "a" * 64})
    assert check_stage1_checkpoint(_train_cfg(tmp_path, ok), manifest).stage == "stage1"


# ------------------------------------------------------------------------------------------- MLflow
def test_unreachable_tracking_server_fails_fast_and_names_the_uri(tmp_path):
    from pipelines.tracking import Tracking, TrackingUnavailable, check_tracking, resolve_tracking

    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(TrackingUnavailable, match=rf"{uri} cannot be used .*connection refused.*mlflow server"):
        check_tracking(Tracking(uri=uri))
    check_tracking(resolve_tracking(tmp_path))  # a real local SQLite store works


def test_a_failing_tracking_server_is_asked_once_not_retried_with_back_off():
    """A server that answers 503 (one of MLflow's retried codes; by default 7 retries with back-off, minutes)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    from pipelines.tracking import Tracking, TrackingUnavailable, check_tracking

    requests: list[str] = []

    class Unavailable(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args):  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(TrackingUnavailable, match=rf"{uri} cannot be used"):
            check_tracking(Tracking(uri=uri))
    finally:
        server.shutdown()
        server.server_close()
    assert len(requests) == 1, requests


def test_eval_refuses_an_unreachable_tracking_server_before_any_work(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    r = _cli("eval", "--policy", "zero", "--suite", "libero_object", "--tasks", "0", "--episodes-per-task", "1",
             "--out", str(tmp_path / "out"), "--tracking-uri", uri)  # (its timeout only guards against a hang)
    assert r.returncode == 2, r.stderr
    assert uri in r.stderr and "--no-mlflow" in r.stderr and "Traceback" not in r.stderr
    assert "Nothing was started" in r.stderr and not (tmp_path / "out").exists()  # refused before any work


def test_pipeline_refuses_an_unreachable_tracking_server_and_a_missing_input_dir_before_any_work(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    out = tmp_path / "run"
    r = _cli("pipeline", "-o", f"output_dir={out}", "--tracking-uri", uri)
    assert r.returncode == 2 and uri in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (out / "pipeline_config.json").exists()  # refused before anything is written or Ray starts
    r = _cli("pipeline", "-o", f"output_dir={out}", "-o", f"input_dir={tmp_path / 'nowhere'}")
    assert r.returncode == 2 and "input_dir" in r.stderr and "is not a folder" in r.stderr, r.stderr
    assert not (out / "pipeline_config.json").exists()


def test_tracking_failures_during_a_run_do_not_fail_it(caplog):
    import mlflow

    from pipelines.tracking import GuardedTracking

    calls = []

    def broken(*args, **kwargs):
        calls.append(args)
        raise mlflow.exceptions.MlflowException("API request to http://x failed")

    guard = GuardedTracking()
    assert guard.call(broken, {"loss": 1.0}, step=1) is None  # no exception reaches the training loop
    assert guard.call(broken, {"loss": 0.5}, step=2) is None
    assert len(calls) == 1 and not guard.enabled and "MlflowException" in guard.error  # logged once, then skipped
    assert sum("continues without tracking" in r.message for r in caplog.records) == 1
    assert GuardedTracking().call(lambda x: x + 1, 1) == 2


def test_deterministic_worker_errors_are_not_retried():
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling import FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    from pipelines.failure_policy import CladFailurePolicy, training_error

    policy = CladFailurePolicy(FailureConfig(max_failures=2))
    bad = WorkerGroupError("rank 0", {0: CheckpointError("stage1_checkpoint x holds no model.safetensors")})
    assert policy.make_decision(bad) == FailureDecision.RAISE
    assert isinstance(training_error(bad), CheckpointError)
    # an exception that crossed a process boundary as text only
    text_only = WorkerGroupError("rank 0", {0: RuntimeError("Traceback...\nclad.errors.DataError: x.parquet is bad")})
    assert policy.make_decision(text_only) == FailureDecision.RAISE
    assert str(training_error(text_only)) == "x.parquet is bad"
    lost = WorkerGroupError("rank 1", {1: RuntimeError("worker died")})
    assert policy.make_decision(lost) == FailureDecision.RETRY  # a lost worker is still worth a restart
    # object storage from inside a worker: a denied permission is deterministic, an unreachable endpoint is not
    from clad.storage import _explain

    denied = _explain(PermissionError("AccessDenied"), "s3://b/runs/stage1/x", "write")
    assert policy.make_decision(WorkerGroupError("rank 0", {0: denied})) == FailureDecision.RAISE
    gone = _explain(OSError("curl error: Couldn't connect to server"), "s3://b/runs/stage1/x", "write")
    assert policy.make_decision(WorkerGroupError("rank 0", {0: gone})) == FailureDecision.RETRY


# ------------------------------------------------------------------------------------------- output folders
def test_refused_suite_leaves_nothing_behind(tmp_path):
    from pipelines.evaluate import _check_resume, run_evaluation

    cfg = _eval_cfg(policy=PolicySpec(kind="zero")).replace(suite="libero_objekt")
    with pytest.raises(CladError, match="unknown LIBERO suite 'libero_objekt'"):
        run_evaluation(cfg, tmp_path / "out", use_mlflow=False, progress=False)
    assert not (tmp_path / "out").exists()
    # a folder whose eval_config.json has no episodes beside it holds nothing to mix: new settings are fine
    from clad.config import save_config

    (tmp_path / "old").mkdir()
    save_config(cfg.replace(suite="libero_10"), tmp_path / "old" / "eval_config.json")
    _check_resume(tmp_path / "old", _eval_cfg(policy=PolicySpec(kind="zero")))
    (tmp_path / "old" / "episodes.jsonl").write_text('{"suite": "libero_10"}\n')
    with pytest.raises(ConfigError, match="different settings"):
        _check_resume(tmp_path / "old", _eval_cfg(policy=PolicySpec(kind="zero")))


@pytest.mark.parametrize("command", ["eval", "preprocess"])
def test_out_naming_a_file_is_a_message(tmp_path, command):
    out = tmp_path / "taken.txt"
    out.write_text("not a folder")
    args = (["eval", "--policy", "zero", "--suite", "libero_object", "--no-mlflow"] if command == "eval"
            else ["preprocess", "--input", str(tmp_path)])
    r = _cli(*args, "--out", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"--out {out} is an existing file" in r.stderr
    assert out.read_text() == "not a folder"


def _hold_lock(folder: Path) -> subprocess.Popen:
    code = ("import sys, time; from pipelines.locking import lock_folder\n"
            "with lock_folder(sys.argv[1], 'clad eval'):\n    print('locked', flush=True); time.sleep(3600)")
    p = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_folder_in_use_is_refused_with_the_other_pid(tmp_path):
    from libero_files import write_demo_file

    out = tmp_path / "out"
    holder = _hold_lock(out)
    try:
        r = _cli("eval", "--policy", "zero", "--suite", "libero_object", "--tasks", "0", "--episodes-per-task", "1",
                 "--out", str(out), "--no-mlflow")
        assert r.returncode == 2 and f"is in use by pid {holder.pid}" in r.stderr, r.stderr
        # refused while the holder still holds the folder (it sleeps an hour): the command did not wait for it
        assert holder.poll() is None and not (out / "eval_config.json").exists()
        write_demo_file(tmp_path / "raw", "task_a", lengths=(5,), image_size=16)
        r = _cli("preprocess", "--input", str(tmp_path / "raw"), "--out", str(out))
        assert r.returncode == 2 and f"is in use by pid {holder.pid}" in r.stderr, r.stderr
    finally:
        holder.kill()
        holder.wait()
    from pipelines.locking import lock_folder

    with lock_folder(out, "test"):  # the kernel released the dead holder's lock
        pass


# ------------------------------------------------------------------------------------------- messages
def test_eval_option_errors_name_the_flag(tmp_path):
    r = _cli("eval", "--policy", "zero", "--suite", "libero_object", "--episodes-per-task", "0", "--no-mlflow",
             "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "--episodes-per-task 0" in r.stderr and "greater than or equal to 1" in r.stderr
    assert "pydantic" not in r.stderr and "Traceback" not in r.stderr


def test_override_syntax_error_shows_this_commands_syntax(capsys):
    from pipelines.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "stage1", "-o", "steps"])
    err = capsys.readouterr().err
    assert "'steps' is not KEY=VALUE; e.g. -o steps=100" in err and "train.steps" not in err


def test_saved_train_config_does_not_reuse_the_run_identity(tmp_path):
    import argparse

    from clad.config import save_config
    from clad.training.config import load_train_config
    from pipelines.train import load_cli_config

    saved = load_train_config(None, ["dataset_dir=ds", "model_preset=tiny", "run_name=stage1-abc",
                                     "parent_run_id=0123456789abcdef", "steps=7"])
    path = save_config(saved, tmp_path / "train_config.json")
    cfg = load_cli_config(argparse.Namespace(config=str(path), stage="stage1", overrides=[]))
    assert cfg.parent_run_id is None and cfg.run_name is None and cfg.steps == 7
    cfg = load_cli_config(argparse.Namespace(config=str(path), stage="stage1", overrides=["run_name=stage1-abc"]))
    assert cfg.run_name == "stage1-abc" and cfg.parent_run_id is None


@pytest.mark.libero  # reads the suite's task list (no simulator is built)
def test_failed_logging_at_the_end_says_how_to_log_later(tmp_path):
    from mlflow.tracking import MlflowClient

    from clad.eval.protocol import plan_episodes
    from clad.eval.results import EpisodeResult, ResultLog

    out = tmp_path / "out"
    out.mkdir()
    log = ResultLog(out / "episodes.jsonl")  # a finished evaluation: nothing left to run
    for s in plan_episodes("libero_object", [1], 1, 0, 50, 10):
        log.append(EpisodeResult(suite=s.suite, task_index=s.task_index, task_name="t1", episode=s.episode,
                                 init_index=s.init_index, seed=s.seed, success=True, steps=12, wall_s=0.5))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the artifact folder should go")
    # a reachable store whose artifact location cannot be written: the failure comes at the end
    MlflowClient(uri).create_experiment("broken", artifact_location=(blocker / "artifacts").as_uri())
    args = ["eval", "--policy", "zero", "--suite", "libero_object", "--tasks", "1", "--episodes-per-task", "1",
            "--max-steps", "50", "--video-episodes", "0", "--no-progress", "--out", str(out), "--tracking-uri", uri]
    r = _cli(*args, "--experiment", "broken")
    assert r.returncode == 3, r.stderr[-2000:]
    assert f"MLflow logging to {uri} failed" in r.stderr and f"The results are safe in {out}" in r.stderr
    assert "run the same command again once the store is reachable" in r.stderr
    assert (out / "summary.json").is_file()
    r = _cli(*args, "--experiment", "working")  # logging later runs no episode
    assert r.returncode == 0 and "(0 run now, 1 resumed)" in r.stdout, r.stderr[-2000:]
