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
