"""Fault tolerance of the rollout pool on a real Ray cluster, with a fake env actor (no LIBERO, seconds):
an actor that dies mid-episode and one that hangs are replaced and their episodes re-queued; an episode
that kills every actor it runs on ends as an `actor_lost` failure; recycling keeps going; every planned
episode gets exactly one result."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from clad.eval.policy import PolicySpec
from clad.eval.protocol import plan_episodes
from clad.eval.results import EpisodeResult
from clad.eval.worklist import WorkList

pytestmark = [pytest.mark.ray]


class FakeEnvActor:
    """Same constructor as pipelines.env_actor.EnvActor. Episode 1 of each task crashes its actor once,
    episode 2 hangs once, episode 3 crashes every time; the rest succeed when the episode is even."""

    def __init__(self, suite, policy_spec, camera_size, slot, name, video_size=128, server=None,
                 server_obs_keys=None, marker_dir: str = ""):
        self.name, self.marker_dir = name, Path(marker_dir)

    def ready(self):
        return {"pid": os.getpid()}

    def _first_time(self, spec) -> bool:
        marker = self.marker_dir / f"{spec.task_index}_{spec.episode}"
        if marker.exists():
            return False
        marker.touch()
        return True

    def run(self, spec):
        if spec.episode == 3 or (spec.episode == 1 and self._first_time(spec)):
            os._exit(1)
        if spec.episode == 2 and self._first_time(spec):
            time.sleep(60)
        return EpisodeResult(suite=spec.suite, task_index=spec.task_index, task_name=f"t{spec.task_index}",
                             episode=spec.episode, init_index=spec.init_index, seed=spec.seed,
                             success=spec.episode % 2 == 0, steps=5, wall_s=0.01, actor=self.name)

    def close(self):
        pass


def test_dead_and_hung_actors_are_replaced_and_no_episode_is_lost(ray_session, tmp_path):
    from ray import cloudpickle  # Ray's vendored copy does the pickling

    from pipelines.rollout_pool import PoolConfig, RolloutPool

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules
    plan = plan_episodes("libero_object", [0, 1], 6, base_seed=0, max_steps=10, settle_steps=0)
    wl = WorkList(plan, max_attempts=2)
    cfg = PoolConfig(suite="libero_object", num_actors=2, cpus_per_actor=0.25, recycle_after=3,
                     episode_timeout_s=10.0, poll_s=0.2, max_actor_restarts=20)  # hang = 60 s; 10 s survives a loaded machine
    pool = RolloutPool(cfg, PolicySpec(kind="zero"), actor_cls=FakeEnvActor,
                       actor_kwargs={"marker_dir": str(tmp_path)})
    seen: list[EpisodeResult] = []
    t0 = time.monotonic()
    pool.run(wl, seen.append)
    assert time.monotonic() - t0 < 150  # not a speed target: only that hung actors do not stall the run

    keys = [r.key for r in seen]
    assert sorted(keys) == sorted(s.key for s in plan)          # every episode exactly once
    assert len(keys) == len(set(keys))
    by_key = {r.key: r for r in seen}
    for t in (0, 1):
        assert by_key[(t, 1)].error is None and by_key[(t, 1)].attempt == 2      # died once, retried
        assert by_key[(t, 2)].error is None and by_key[(t, 2)].attempt == 2      # hung once, retried
        assert by_key[(t, 3)].error_kind == "actor_lost" and not by_key[(t, 3)].success
        assert by_key[(t, 0)].success and by_key[(t, 4)].success and not by_key[(t, 5)].success
    st = pool.stats
    assert st.hung == 2
    assert st.actors_lost == 2 + 2 + 4  # 2 crashes + 2 hangs + 2x2 for the always-crashing episodes
    # no assertion on actors_recycled here: whether a replacement actor lives for recycle_after episodes
    # depends on scheduling (flaky under load); recycling is tested on real LIBERO actors in test_rollout_libero
    assert pool.actor_handles() == {}  # everything torn down


class BrokenEnvActor(FakeEnvActor):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("LIBERO assets are missing")


def test_an_actor_that_cannot_start_stops_the_run_with_its_reason(ray_session):
    from ray import cloudpickle

    from pipelines.rollout_pool import PoolConfig, RolloutPool

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    plan = plan_episodes("libero_object", [0], 4, base_seed=0, max_steps=10, settle_steps=0)
    pool = RolloutPool(PoolConfig(suite="libero_object", num_actors=2, cpus_per_actor=0.25, poll_s=0.2),
                       PolicySpec(kind="zero"), actor_cls=BrokenEnvActor)
    with pytest.raises(RuntimeError, match="LIBERO assets are missing"):
        pool.run(WorkList(plan), lambda r: None)
    assert pool.actor_handles() == {}


class ClosingEnvActor(FakeEnvActor):
    """Every episode succeeds; `close()` leaves a marker (a real actor closes its GL context there)."""

    def run(self, spec):
        (self.marker_dir / f"ran_{self.name}").touch()
        return EpisodeResult(suite=spec.suite, task_index=spec.task_index, task_name="t", episode=spec.episode,
                             init_index=spec.init_index, seed=spec.seed, success=True, steps=5, wall_s=0.01,
                             actor=self.name)

    def close(self):
        (self.marker_dir / f"closed_{self.name}").touch()


def test_idle_actors_close_their_env_before_the_pool_ends_them(ray_session, tmp_path):
    # An env actor ended with its GL context still open prints an EGL traceback from a destructor.
    from ray import cloudpickle

    from pipelines.rollout_pool import PoolConfig, RolloutPool

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    plan = plan_episodes("libero_object", [0], 4, base_seed=0, max_steps=10, settle_steps=0)
    pool = RolloutPool(PoolConfig(suite="libero_object", num_actors=2, cpus_per_actor=0.25, poll_s=0.2),
                       PolicySpec(kind="zero"), actor_cls=ClosingEnvActor, actor_kwargs={"marker_dir": str(tmp_path)})
    seen: list[EpisodeResult] = []
    pool.run(WorkList(plan), seen.append)
    assert len(seen) == 4
    ran = {p.name[4:] for p in tmp_path.glob("ran_*")}  # an actor still starting at the end has no env to close
    assert ran and {p.name[7:] for p in tmp_path.glob("closed_*")} == ran
    assert pool.actor_handles() == {}
