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
# printed (outputs/ci/full1.log, run 1 of session 7; 5 tests had failed; no faulthandler output), so the
# run ends with pytest's own exit status instead of whatever the teardown does. Nothing is left to do by
# then (fixtures have shut Ray down, files are closed). CLAD_TEST_NORMAL_EXIT=1 turns this off.
# Looked for the cause (2026-11-29), with CLAD_TEST_NORMAL_EXIT=1 and `python -X faulthandler`, running
# every module that builds a LIBERO env, decodes video (PyAV) or holds Ray in the pytest process itself:
#   test_libero_runtime (6 passed); test_eval_agent + test_lerobot_conventions + test_demos without Ray
#   (12); test_lerobot_conventions + test_feature_cache live-simulator test with Ray (2); test_demos +
#   test_eval_agent + test_feature_cache + test_lerobot_reader + test_lerobot_conventions +
#   test_libero_runtime together (57): each exited 0, no crash. Not reproduced, so this stays.
# The one exit-time fault found: a GL context freed after robosuite's atexit `eglTerminate` (an env
# not closed, freed by the final garbage collection) prints an EGLError traceback, not a segfault; every
# test closes its envs, and env actors close theirs at exit (tests/test_env_teardown.py).
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
