"""Shared fixtures. One real local Ray instance serves every test that needs Ray (starting Ray costs 5-8 s)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray cluster with 2 CPUs, shared by the whole test run."""
    import ray

    from pipelines.ray_runtime import init_ray

    if not ray.is_initialized():
        init_ray(num_cpus=2, object_store_gb=1.0)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one intra-op thread for a module of tiny-model tests: `pytestmark = usefixtures(...)`
    (why: clad.model.testing.one_thread)."""
    from clad.model.testing import one_thread

    with one_thread():
        yield


# --------------------------------------------------------------------------- interpreter teardown
# A full run once ended with a segfault (exit 139) after every test had passed and the summary was
# printed: a C extension's exit-time destructor (EGL contexts of in-process MuJoCo renderers, PyAV, Ray's
# core worker) crashing during interpreter teardown, after pytest's faulthandler had been switched off.
# Nothing is left to do by then (fixtures have shut Ray down, files are closed), so the run ends with its
# real exit status instead of whatever the teardown does.
_exit_status: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if _exit_status and os.environ.get("CLAD_TEST_NORMAL_EXIT") != "1":
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
