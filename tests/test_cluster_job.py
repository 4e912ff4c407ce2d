"""A real Ray head node on 127.0.0.1 (`ray start --head`, token authentication) accepts a job submission of a
tiny pipeline step (`clad preprocess`) and reports it as succeeded."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from libero_files import write_demo_file

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY = str(Path(sys.executable).parent / "ray")
JOB_ID = "clad-test-job"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_cluster(temp_dir: str) -> None:
    # `ray stop` would also stop every other Ray instance on this machine (e.g. the test session's)
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in arg for arg in (p.info["cmdline"] or [])):
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        p.kill()


def test_job_submission_to_a_local_head(tmp_path):
    write_demo_file(tmp_path / "raw", "task_0", lengths=(12, 16), image_size=16)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    temp_dir = f"/tmp/rt_{secrets.token_hex(4)}"  # short: Ray's socket paths must stay under 108 chars
    gcs, dash, agent = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([RAY, "start", "--head", f"--port={gcs}", "--num-cpus=2", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}",
                    # the job agent's HTTP port defaults to 52365: another Ray instance on this machine (a
                    # training run, the test session's) may hold it, and jobs then fail "No available agent"
                    f"--dashboard-agent-listen-port={agent}", "--disable-usage-stats", f"--temp-dir={temp_dir}",
                    "--include-dashboard=true"], env=env, check=True, timeout=120, capture_output=True)
    try:
        address = f"http://127.0.0.1:{dash}"
        entrypoint = f"{sys.executable} -m pipelines.cli preprocess --input {tmp_path / 'raw'} --out {tmp_path / 'ds'}"
        # the job server and its agent may still be starting when `ray start` returns ("No available agent
        # to submit job")
        deadline = time.time() + 180
        while True:
            sub = subprocess.run([RAY, "job", "submit", "--address", address, "--working-dir", str(job_dir),
                                  "--submission-id", JOB_ID, "--no-wait", "--", *entrypoint.split()],
                                 env=env, timeout=120, capture_output=True, text=True)
            # an earlier attempt that timed out on our side may have created the job; the bare words "already
            # exists" also appear in the working-dir upload log ("Package ... already exists"), so match the id
            created = f"submission_id {JOB_ID} already exists" in sub.stderr
            if sub.returncode == 0 or created or time.time() > deadline:
                break
            time.sleep(3)
        assert sub.returncode == 0, sub.stderr[-2000:]
        # a job's driver imports torch and starts Ray Data: minutes when the machine is shared (2 cores)
        deadline, status = time.time() + 480, ""
        while time.time() < deadline:
            status = subprocess.run([RAY, "job", "status", "--address", address, JOB_ID], env=env,
                                    timeout=60, capture_output=True, text=True).stdout.lower()
            if any(s in status for s in ("succeeded", "failed", "stopped")):
                break
            time.sleep(3)
        logs = subprocess.run([RAY, "job", "logs", "--address", address, JOB_ID], env=env, timeout=60,
                              capture_output=True, text=True).stdout
        assert "succeeded" in status, f"{status}\n{logs[-3000:]}"
        assert (tmp_path / "ds" / "manifest.json").is_file()
        # without the token the job server refuses the client
        env_no_auth = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"}
        denied = subprocess.run([RAY, "job", "list", "--address", address], env=env_no_auth, timeout=60,
                                capture_output=True, text=True)
        assert denied.returncode != 0
    finally:
        _stop_cluster(temp_dir)
