"""A local Ray start that runs out of Ray's fixed 30 s raylet wait is retried, then refused with a clear message.

Ray itself is faked here (its timeout cannot be provoked on demand); the real start is covered by every
integration test that calls init_ray.
"""

from __future__ import annotations

import pytest

from clad.errors import ClusterError
from pipelines import ray_runtime

TIMEOUT = Exception("The current node timed out during startup. This could happen because some of the raylet "
                    "failed to startup or the GCS has become overloaded.")


@pytest.fixture
def fake_ray(monkeypatch):
    calls = {"init": 0, "shutdown": 0, "stopped": 0, "slept": []}

    def make(failures: int, error: Exception = TIMEOUT):
        def init(**kwargs):
            calls["init"] += 1
            calls["kwargs"] = kwargs
            if calls["init"] <= failures:
                raise error

        monkeypatch.setattr(ray_runtime.ray, "init", init)
        monkeypatch.setattr(ray_runtime.ray, "shutdown", lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1))
        monkeypatch.setattr(ray_runtime, "_stop_failed_start",
                            lambda before: calls.__setitem__("stopped", calls["stopped"] + 1))
        monkeypatch.setattr(ray_runtime.time, "sleep", lambda s: calls["slept"].append(s))
        return calls

    return make


def test_a_start_that_times_out_is_cleaned_up_and_retried(fake_ray, caplog):
    calls = fake_ray(failures=1)
    ray_runtime.start_local_cluster(num_cpus=2, ignore_reinit_error=True)
    assert calls["init"] == 2 and calls["kwargs"] == {"num_cpus": 2, "ignore_reinit_error": True}
    assert calls["stopped"] == 1 and calls["slept"] == [ray_runtime.LOCAL_START_BACKOFF_S]
    assert "attempt 1 of 3" in caplog.text


def test_every_attempt_timing_out_is_a_cluster_error_naming_the_fix(fake_ray):
    calls = fake_ray(failures=99)
    with pytest.raises(ClusterError) as err:
        ray_runtime.start_local_cluster()
    assert calls["init"] == ray_runtime.LOCAL_START_ATTEMPTS == calls["stopped"]
    text = str(err.value)
    assert "load average" in text and "ray start --head" in text and "--address 127.0.0.1:6379" in text
    assert "timed out during startup" in text  # Ray's own reason is kept


def test_other_start_errors_are_not_retried(fake_ray):
    calls = fake_ray(failures=1, error=ValueError("bad object_store_memory"))
    with pytest.raises(ValueError, match="object_store_memory"):
        ray_runtime.start_local_cluster()
    assert calls["init"] == 1 and calls["stopped"] == 0


def test_only_the_failed_attempt_s_ray_children_are_stopped():
    """Ray children that predate the attempt (a live session of this process) and non-Ray children survive."""
    import subprocess
    import sys

    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    # stand-ins: the command lines name a file under ray/, like a raylet or gcs_server
    live_session = subprocess.Popen(sleep + ["/venv/site-packages/ray/core/src/ray/raylet/raylet"])
    _wait_until_listed(live_session.pid)
    before = set(ray_runtime._ray_children())
    assert live_session.pid in before
    other = subprocess.Popen(sleep)
    failed_start = subprocess.Popen(sleep + ["/venv/site-packages/ray/core/src/ray/gcs/gcs_server"])
    _wait_until_listed(failed_start.pid)
    try:
        ray_runtime._stop_failed_start(before)
        assert failed_start.wait(timeout=10) is not None
        assert other.poll() is None  # not Ray: left alone
        assert live_session.poll() is None  # Ray, but not from this attempt: left alone
    finally:
        for c in (other, failed_start, live_session):
            c.kill()
            c.wait()


def _wait_until_listed(pid: int) -> None:
    """The child's command line is readable only once it has exec'd."""
    import time

    for _ in range(100):
        if pid in ray_runtime._ray_children():
            return
        time.sleep(0.05)
    raise AssertionError(f"child {pid} never showed its command line")
