"""A fault-tolerant pool of LIBERO env actors on Ray, with an optional batching policy server.

    pool = RolloutPool(PoolConfig(...), policy_spec, actor_resources)
    pool.run(worklist, on_result)          # blocks until every episode has exactly one result

Design (see clad/eval for the Ray-free parts):
* Each env actor (`pipelines.env_actor.EnvActor`) owns one simulator.
* Episodes are dispatched one at a time per actor from a `WorkList`; an actor that raises
  `RayActorError` (died) or runs past the episode timeout (hung) is `ray.kill`ed and replaced, and its
  episode re-queued until `max_attempts`. Actors are recycled after `recycle_after` episodes (LIBERO
  leaks a little memory per reset).
* Policy inference runs either inside each env actor, or in one `PolicyServer` actor
  (`pipelines.policy_server`) that batches the requests of all env actors (bounded wait).
* Healthy actors close their simulator before they are killed (recycling, the end of the run): a GL context
  left to the process's teardown fails in its destructor and prints a long traceback on the console.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from clad.eval.policy import PolicySpec
from clad.eval.results import EpisodeResult
from clad.eval.worklist import WorkList
from pipelines.env_actor import EnvActor
from pipelines.policy_server import PolicyServer

__all__ = ["PoolConfig", "RolloutPool", "actor_options"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- pool
def _first_line(err: BaseException) -> str:
    text = str(err)
    # Ray puts the cause at the end of a long message; keep the first line and the last non-empty one
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    out = lines[0][:300]
    if len(lines) > 1:
        out += " ... " + lines[-1][:300]
    return out


@dataclass(frozen=True)
class PoolConfig:
    suite: str
    num_actors: int
    cpus_per_actor: float
    camera_size: int = 128
    video_size: int = 128
    rollout_resource: str | None = None
    env_gpus_per_actor: float = 0.0
    recycle_after: int = 25
    episode_timeout_s: float = 1200.0   # from dispatch to a ready actor until its result
    start_timeout_s: float = 600.0      # from creating an actor until its constructor returned
    max_actor_restarts: int = 50
    policy_mode: str = "in_actor"
    server_max_batch: int = 64
    server_max_wait_ms: float = 5.0
    server_gpus: float = 0.0
    server_cpus: float = 0.1
    poll_s: float = 1.0


def actor_options(cpus: float, gpus: float = 0.0, resource: str | None = None) -> dict:
    # "DEFAULT" explicitly: an evaluation started inside a Tune trial (`clad tune`'s closed-loop objective)
    # would otherwise be captured into the trial's placement group, which has no room for env actors
    opts: dict = {"num_cpus": cpus, "max_restarts": 0, "max_task_retries": 0, "scheduling_strategy": "DEFAULT"}
    if gpus:
        opts["num_gpus"] = gpus
    if resource:
        opts["resources"] = {resource: 0.01}  # target nodes that advertise it, without limiting the count
    return opts


@dataclass
class _Slot:
    index: int
    actor: object | None = None
    generation: int = 0
    episodes: int = 0
    task: int | None = None
    ref: object | None = None          # the running episode
    ready_ref: object | None = None    # the pending constructor (`ready()` call); None once started
    started_at: float = 0.0

    @property
    def name(self) -> str:
        return f"env{self.index}.{self.generation}"


@dataclass
class PoolStats:
    actors_started: int = 0
    actors_recycled: int = 0
    actors_lost: int = 0
    episodes_requeued: int = 0
    hung: int = 0
    events: list[str] = field(default_factory=list)


class RolloutPool:
    """Runs a `WorkList` to completion on `num_actors` env actors (see the module docstring)."""

    def __init__(self, cfg: PoolConfig, policy_spec: PolicySpec, actor_cls=EnvActor,
                 actor_kwargs: dict | None = None):
        self.cfg = cfg
        self.actor_kwargs = dict(actor_kwargs or {})  # extra constructor arguments (fault-injection tests)
        self.policy_spec = policy_spec
        self._remote_cls = ray.remote(actor_cls)
        self.slots = [_Slot(i) for i in range(cfg.num_actors)]
        self.server = None
        self.server_obs_keys: tuple[str, ...] = ()
        self.stats = PoolStats()
        self.server_final_stats: dict | None = None
        self._restarts = 0
        self._creation_failures = 0  # consecutive actors that died in their constructor

    # -- lifecycle
    def _start_server(self) -> None:
        remote = ray.remote(PolicyServer)
        opts = actor_options(self.cfg.server_cpus, self.cfg.server_gpus)
        opts["max_concurrency"] = max(1000, 4 * self.cfg.num_actors)
        # Each env actor has at most one request in flight, so a batch can never exceed the pool size:
        # capping it there flushes the moment every actor is waiting instead of sitting out max_wait.
        max_batch = max(1, min(self.cfg.server_max_batch, self.cfg.num_actors))
        self.server = remote.options(**opts).remote(self.policy_spec.to_dict(), max_batch,
                                                    self.cfg.server_max_wait_ms)
        self.server_obs_keys = tuple(ray.get(self.server.obs_keys.remote()))

    def _start(self, slot: _Slot) -> None:
        slot.generation += 1
        slot.episodes, slot.task, slot.ref = 0, None, None
        opts = actor_options(self.cfg.cpus_per_actor, self.cfg.env_gpus_per_actor, self.cfg.rollout_resource)
        slot.actor = self._remote_cls.options(**opts).remote(
            self.cfg.suite, self.policy_spec.to_dict(), self.cfg.camera_size, slot.index, slot.name,
            self.cfg.video_size, self.server, self.server_obs_keys, **self.actor_kwargs)
        # Episodes go to an actor only once its constructor has returned, so a slow start (imports, a
        # loaded machine, waiting for a freed CPU) never counts against the episode timeout.
        slot.ready_ref = slot.actor.ready.remote()
        slot.started_at = time.monotonic()
        self.stats.actors_started += 1

    def _stop(self, slot: _Slot, graceful: bool) -> None:
        actor, slot.actor, slot.ref, slot.ready_ref = slot.actor, None, None, None
        if actor is None:
            return
        if graceful:
            try:  # close the GL context and the sim cleanly before the process goes
                ray.get(actor.close.remote(), timeout=30)
            except Exception:
                pass
        ray.kill(actor, no_restart=True)

    def _lose(self, slot: _Slot, worklist: WorkList, reason: str, task_names: dict[int, str]) -> EpisodeResult | None:
        """The actor of `slot` died or hung: kill it, re-queue its episode, start a replacement."""
        self.stats.actors_lost += 1
        self.stats.events.append(f"{slot.name}: {reason}")
        log.warning("env actor %s lost (%s); replacing it", slot.name, reason)
        item = worklist.in_flight.get(slot.name)
        final = None
        if item is not None:
            final = worklist.requeue(slot.name, task_names.get(item.spec.task_index, ""), reason)
            if final is None:
                self.stats.episodes_requeued += 1
        self._stop(slot, graceful=False)
        self._restarts += 1
        # A constructor that fails (missing LIBERO assets, bad checkpoint) fails again: stop early with
        # its message instead of burning through every episode's attempts.
        self._creation_failures = self._creation_failures + 1 if "creation task" in reason else 0
        if self._creation_failures >= 3:
            raise RuntimeError(f"env actors fail while starting ({self._creation_failures} in a row): {reason}")
        if self._restarts > self.cfg.max_actor_restarts:
            raise RuntimeError(f"env actors died {self._restarts} times (limit max_actor_restarts="
                               f"{self.cfg.max_actor_restarts}); last reason: {reason}")
        self._start(slot)
        return final

    def actor_handles(self) -> dict[str, object]:
        """Live actors by slot name (for diagnostics and fault-injection tests)."""
        return {s.name: s.actor for s in self.slots if s.actor is not None}

    def busy_slots(self) -> list[str]:
        return [s.name for s in self.slots if s.ref is not None]

    # -- the loop
    def run(self, worklist: WorkList, on_result: Callable[[EpisodeResult], None],
            task_names: dict[int, str] | None = None) -> None:
        task_names = task_names or {}
        try:
            if self.cfg.policy_mode == "server":
                self._start_server()
            for s in self.slots:
                self._start(s)
            while not worklist.finished():
                self._dispatch(worklist)
                refs = {s.ref: s for s in self.slots if s.ref is not None}
                starting = {s.ready_ref: s for s in self.slots if s.ready_ref is not None}
                if not refs and not starting:
                    raise RuntimeError("work is pending but no env actor can take it")
                ready, _ = ray.wait(list(refs) + list(starting), num_returns=1, timeout=self.cfg.poll_s)
                for ref in ready:
                    if ref in starting:
                        self._started(starting[ref], ref, worklist, task_names)
                    else:
                        self._collect(refs[ref], ref, worklist, on_result, task_names)
                now = time.monotonic()
                for slot in [s for s in self.slots if s.ready_ref is not None]:
                    if now - slot.started_at > self.cfg.start_timeout_s:
                        self._lose(slot, worklist, f"did not start within {self.cfg.start_timeout_s:.0f} s",
                                   task_names)
                for item in worklist.overdue(self.cfg.episode_timeout_s):
                    slot = next(s for s in self.slots if s.name == item.worker)
                    self.stats.hung += 1
                    final = self._lose(slot, worklist, f"episode {item.spec.key} exceeded "
                                       f"{self.cfg.episode_timeout_s:.0f} s", task_names)
                    if final is not None:
                        on_result(final)
        finally:
            self.shutdown()

    def _started(self, slot: _Slot, ref, worklist: WorkList, task_names) -> None:
        try:
            ray.get(ref)
        except (RayActorError, RayTaskError) as err:
            self._lose(slot, worklist, f"{type(err).__name__} in its creation task: {_first_line(err)}", task_names)
            return
        slot.ready_ref = None
        self._creation_failures = 0

    def _dispatch(self, worklist: WorkList) -> None:
        for s in self.slots:
            if s.ref is None and s.ready_ref is None and s.actor is not None:
                held = [o.task for o in self.slots if o is not s and o.task is not None]
                item = worklist.take(s.name, prefer_task=s.task, held=held)
                if item is None:
                    return
                s.task = item.spec.task_index  # the actor builds (or keeps) this task's scene
                s.ref = s.actor.run.remote(item.spec)

    def _collect(self, slot: _Slot, ref, worklist: WorkList, on_result, task_names) -> None:
        slot.ref = None
        try:
            result: EpisodeResult = ray.get(ref)
        except (RayActorError, GetTimeoutError) as err:
            final = self._lose(slot, worklist, f"{type(err).__name__}: {_first_line(err)}", task_names)
            if final is not None:
                on_result(final)
            return
        except RayTaskError as err:  # a bug in the worker itself (episode errors come back as results)
            final = self._lose(slot, worklist, f"worker raised: {_first_line(err)}", task_names)
            if final is not None:
                on_result(final)
            return
        if worklist.complete(slot.name, result):
            on_result(result)
        slot.episodes += 1
        slot.task = result.task_index
        if slot.episodes >= self.cfg.recycle_after and not worklist.finished():
            self.stats.actors_recycled += 1
            self._stop(slot, graceful=True)
            self._start(slot)

    def server_stats(self) -> dict | None:
        if self.server is None:
            return None
        try:
            return ray.get(self.server.stats.remote(), timeout=10)
        except Exception:
            return None

    def shutdown(self) -> None:
        # Idle actors close their simulator first (all at once, bounded wait); a busy or hung one is killed.
        live = [s for s in self.slots if s.actor is not None]
        closing = [s.actor.close.remote() for s in live if s.ref is None and s.ready_ref is None]
        if closing:
            try:
                ray.wait(closing, num_returns=len(closing), timeout=30)
            except Exception:
                pass
        for s in live:
            try:
                ray.kill(s.actor, no_restart=True)
            except Exception:
                pass
            s.actor, s.ref, s.ready_ref = None, None, None
        if self.server is not None:
            self.server_final_stats = self.server_stats()
            ray.kill(self.server, no_restart=True)
            self.server = None
