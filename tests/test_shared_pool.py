"""The shared env-actor pool of a closed-loop `clad tune` (pipelines/shared_pool.py), on a real Ray cluster with
a fake env actor (its scheduling logic only; the LIBERO path is tests/test_tune_closed_loop.py): trials get the
single actor in turn, a trial Tune ends leaves nothing queued, a lost actor's episode is re-queued."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from clad.eval.policy import PolicySpec
from clad.eval.protocol import plan_episodes
from clad.eval.results import EpisodeResult
from clad.eval.worklist import WorkList

pytestmark = [pytest.mark.ray]


class FakeEnvActor:
    """EnvActor's constructor and `run_with`; an episode takes 0.2 s. With a marker_dir, episode 1 kills its
    actor the first time it runs."""

    def __init__(self, suite, policy_spec, camera_size, slot, name, video_size=128, server=None,
                 server_obs_keys=None, marker_dir: str = ""):
        self.name, self.marker_dir = name, marker_dir

    def ready(self):
        return {"pid": os.getpid()}

    def run_with(self, policy, spec):
        if self.marker_dir and spec.episode == 1:
            marker = Path(self.marker_dir) / f"{policy['seed']}_{spec.episode}"
            if not marker.exists():
                marker.touch()
                os._exit(1)
        time.sleep(0.2)
        return EpisodeResult(suite=spec.suite, task_index=spec.task_index, task_name="t", episode=spec.episode,
                             init_index=spec.init_index, seed=spec.seed, success=True, steps=1, wall_s=0.2,
                             actor=f"{self.name}|policy {policy['seed']}")

    def close(self):
        pass


def _service(actor_cls=FakeEnvActor, **kw):
    from ray import cloudpickle

    from pipelines.shared_pool import start_service

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules
    name = f"test-pool-{uuid.uuid4().hex[:8]}"
    return name, start_service(name, "libero_object", 1, 0.25, 32, actor_cls=actor_cls, **kw)


def _plan(n):
    return plan_episodes("libero_object", [0], n, base_seed=0, max_steps=5, settle_steps=0)


def _wait(ray, service, job_id, timeout=120):
    got, t0 = [], time.monotonic()
    while time.monotonic() - t0 < timeout:
        results, done, fatal = ray.get(service.poll.remote(job_id))
        got += results
        assert fatal is None
        if done:
            return got
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def test_trials_take_turns_on_the_shared_actor(ray_session):
    ray = ray_session
    _, service = _service()
    try:
        policy = {"kind": "tiny", "seed": 0}
        ray.get([service.submit.remote("A", "a1", {**policy, "seed": 1}, _plan(4), {}),
                 service.submit.remote("B", "b1", {**policy, "seed": 2}, _plan(4), {})])
        a, b = _wait(ray, service, "a1"), _wait(ray, service, "b1")
        assert len(a) == len(b) == 4
        assert {r.actor.split("|")[1] for r in a} == {"policy 1"} and {r.actor.split("|")[1] for r in b} == {"policy 2"}
        order = ray.get(service.report.remote())["dispatched"]
        assert sorted(order) == ["A"] * 4 + ["B"] * 4
        # fair: from B's first episode on (A was queued first, so it may have had one or more alone), the
        # trials alternate on the single actor until A runs out of episodes
        first_b = order.index("B")
        last_a = max(i for i, t in enumerate(order) if t == "A")
        both = order[first_b:last_a + 1]
        assert all(x != y for x, y in zip(both, both[1:])), order
        report = ray.get(service.report.remote())
        assert report["actors_started"] == 1 and report["queued"] == {}
    finally:
        ray.get(service.shutdown.remote())
        ray.kill(service)


def test_a_trial_tune_ends_leaves_no_work_in_the_queue(ray_session):
    from pipelines.shared_pool import PoolCleanupCallback

    ray = ray_session
    name, service = _service()
    try:
        ray.get([service.submit.remote("A", "a1", {"kind": "tiny", "seed": 1}, _plan(20), {}),
                 service.submit.remote("B", "b1", {"kind": "tiny", "seed": 2}, _plan(3), {})])
        while not ray.get(service.report.remote())["dispatched"]:
            time.sleep(0.05)
        # what Tune calls on the driver when ASHA stops trial A
        PoolCleanupCallback.make(name).on_trial_complete(iteration=1, trials=[], trial=SimpleNamespace(trial_id="A"))
        report = ray.get(service.report.remote())
        dispatched_at_cancel = report["dispatched"].count("A")
        # every episode of A was either dispatched before the stop or dropped by it (none left queued)
        assert "A" not in report["queued"]
        assert report["cancelled_episodes"]["A"] >= 1
        assert dispatched_at_cancel + report["cancelled_episodes"]["A"] == 20
        assert len(_wait(ray, service, "b1")) == 3  # the other trial finishes
        _, done, _ = ray.get(service.poll.remote("a1"))
        assert done
        report = ray.get(service.report.remote())
        assert report["dispatched"].count("A") == dispatched_at_cancel  # nothing of A ran after the stop
        assert report["queued"] == {}
    finally:
        ray.get(service.shutdown.remote())
        ray.kill(service)


def test_client_runs_a_worklist_and_a_lost_actor_is_replaced(ray_session, tmp_path):
    from pipelines.shared_pool import SharedPoolClient

    ray = ray_session
    _, service = _service(actor_cls=type("Dying", (FakeEnvActor,), {"__init__": lambda self, *a, **k:
                                          FakeEnvActor.__init__(self, *a, **{**k, "marker_dir": str(tmp_path)})}))
    try:
        client = SharedPoolClient(service, "A", PolicySpec(kind="tiny", seed=5), poll_s=0.1)
        wl = WorkList(_plan(3), max_attempts=2)
        seen: list[EpisodeResult] = []
        client.run(wl, seen.append)
        assert wl.finished() and sorted(r.episode for r in seen) == [0, 1, 2]
        assert all(r.error is None for r in seen)
        report = ray.get(service.report.remote())
        assert report["actors_lost"] == 1 and report["actors_started"] == 2 and report["episodes_requeued"] == 1
    finally:
        ray.get(service.shutdown.remote())
        ray.kill(service)
