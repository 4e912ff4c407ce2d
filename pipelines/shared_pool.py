"""One pool of env actors shared by every trial of a closed-loop `clad tune`.

The tune driver creates one `EnvPoolService` (a named Ray actor that owns the env actors and a work queue)
before the trials start, so the simulators' CPUs are reserved once for the whole sweep, and the simulators
(LIBERO scene, GL context) start once instead of once per checkpoint of every trial. A trial's checkpoint
evaluation (pipelines/evaluate.py `run_evaluation`) submits its episodes through a `SharedPoolClient`,
which has the interface of `RolloutPool`, so the episode log, resume and summary are unchanged.

* Fair scheduling: when an env actor frees up it takes an episode of the trial with the fewest episodes in
  flight, ties going to the trial served longest ago (round robin), so a trial with many queued
  checkpoints cannot starve the others.
* Cancellation: `cancel_trial` drops a trial's queued episodes and ignores its running ones. The tune
  driver calls it when Tune ends a trial (ASHA stop, error, finish; `PoolCleanupCallback`), so a stopped
  trial leaves no work in the queue; the client cancels its own job when it exits early.
* The episode protocol is the caller's (`clad.eval.protocol.plan_episodes` with the sweep's
  closed_loop.base_seed), so every trial is scored on the same init states and seeds.
* An env actor runs any trial's checkpoint: it loads a policy per checkpoint and keeps the last few
  (`EnvActor.run_with`). A lost or hung actor is replaced and its episode re-queued (`WorkList`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from clad.eval.policy import PolicySpec
from clad.eval.protocol import EpisodeSpec
from clad.eval.results import EpisodeResult
from clad.eval.worklist import WorkList
from pipelines.env_actor import EnvActor
from pipelines.rollout_pool import PoolStats, _first_line, actor_options

log = logging.getLogger(__name__)

__all__ = ["EnvPoolService", "SharedPoolClient", "PoolCleanupCallback", "start_service", "service_name",
           "close_service", "run_rollouts"]

IDLE_POLICY = {"kind": "zero"}  # what an env actor holds before its first checkpoint (renders nothing)


def service_name(sweep: str) -> str:
    return f"clad-env-pool:{sweep}"


@dataclass
class _Job:
    job_id: str
    trial: str
    policy: dict
    work: WorkList
    task_names: dict
    outbox: list = field(default_factory=list)
    cancelled: bool = False


@dataclass
class _Slot:
    index: int
    actor: object | None = None
    generation: int = 0
    ref: object | None = None
    ready_ref: object | None = None
    job: str | None = None
    task: int | None = None
    started: float = 0.0

    @property
    def name(self) -> str:
        return f"shared-env{self.index}.{self.generation}"


class EnvPoolService:
    """The shared pool (a threaded Ray actor): env actors, per-trial queues, a scheduler thread."""

    def __init__(self, suite: str, num_actors: int, cpus_per_actor: float, camera_size: int = 128,
                 video_size: int = 128, rollout_resource: str | None = None, episode_timeout_s: float = 1200.0,
                 start_timeout_s: float = 600.0, max_actor_restarts: int = 50, actor_cls=EnvActor, poll_s: float = 0.5):
        self.suite, self.camera_size, self.video_size = suite, camera_size, video_size
        self.cpus_per_actor, self.rollout_resource = cpus_per_actor, rollout_resource
        self.episode_timeout_s, self.start_timeout_s, self.poll_s = episode_timeout_s, start_timeout_s, poll_s
        self.max_actor_restarts = max_actor_restarts
        self._remote_cls = ray.remote(actor_cls)
        self._lock = threading.RLock()
        self._jobs: "OrderedDict[str, _Job]" = OrderedDict()
        self._last_served: dict[str, int] = {}   # trial -> dispatch counter when it last got an actor
        self._counter = itertools.count(1)
        self.stats = PoolStats()
        self.dispatched: list[str] = []          # trial of every dispatched episode, in order (fairness record)
        self.cancelled_episodes: dict[str, int] = {}
        self._restarts = 0
        self.fatal: str | None = None
        self.slots = [_Slot(i) for i in range(num_actors)]
        for s in self.slots:  # at once: the sweep's env CPUs are taken before any trial starts
            self._start(s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="env-pool", daemon=True)
        self._thread.start()

    # -- API (called by trials' clients and the tune driver)
    def ready(self) -> list[dict]:
        """Blocks until every env actor has started (their CPUs are then held)."""
        refs = [s.ready_ref for s in self.slots if s.ready_ref is not None]
        return ray.get(refs) if refs else []

    def submit(self, trial: str, job_id: str, policy: dict, specs: list[EpisodeSpec], task_names: dict,
               max_attempts: int = 3) -> None:
        with self._lock:
            if self.fatal:
                raise RuntimeError(f"the shared env pool stopped: {self.fatal}")
            self._jobs[job_id] = _Job(job_id, trial, policy, WorkList(specs, max_attempts=max_attempts), task_names)
            self._last_served.setdefault(trial, 0)

    def poll(self, job_id: str) -> tuple[list[EpisodeResult], bool, str | None]:
        """(results since the last poll, whether the job is finished, the pool's fatal error if any)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return [], True, self.fatal
            out, job.outbox = job.outbox, []
            done = job.work.finished() or job.cancelled
            if done:
                del self._jobs[job_id]
            return out, done, self.fatal

    def cancel_job(self, job_id: str) -> int:
        with self._lock:
            job = self._jobs.pop(job_id, None)
            return self._drop(job) if job else 0

    def cancel_trial(self, trial: str) -> int:
        """Drop every queued episode of `trial` (running ones finish and are discarded); returns how many."""
        with self._lock:
            dropped = 0
            for job_id in [j for j, job in self._jobs.items() if job.trial == trial]:
                dropped += self._drop(self._jobs.pop(job_id))
            self._last_served.pop(trial, None)
            return dropped

    def queued(self) -> dict[str, int]:
        """Pending episodes per trial."""
        with self._lock:
            out: dict[str, int] = {}
            for job in self._jobs.values():
                out[job.trial] = out.get(job.trial, 0) + job.work.num_pending
            return out

    def report(self) -> dict:
        with self._lock:
            st = self.stats
            return {"actors": len(self.slots), "cpus_per_actor": self.cpus_per_actor,
                    "actors_started": st.actors_started, "actors_lost": st.actors_lost,
                    "episodes_requeued": st.episodes_requeued, "hung": st.hung, "events": st.events[-50:],
                    "dispatched": list(self.dispatched), "cancelled_episodes": dict(self.cancelled_episodes),
                    "queued": self.queued(), "fatal": self.fatal}

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        live = [s for s in self.slots if s.actor is not None]
        closing = [s.actor.close.remote() for s in live if s.ref is None and s.ready_ref is None]
        if closing:
            ray.wait(closing, num_returns=len(closing), timeout=30)
        for s in live:
            ray.kill(s.actor, no_restart=True)
            s.actor = None

    # -- internals (under the lock)
    def _drop(self, job: _Job) -> int:
        job.cancelled = True
        n = job.work.num_pending
        self.cancelled_episodes[job.trial] = self.cancelled_episodes.get(job.trial, 0) + n
        return n

    def _start(self, slot: _Slot) -> None:
        slot.generation += 1
        slot.ref = slot.job = slot.task = None
        opts = actor_options(self.cpus_per_actor, 0.0, self.rollout_resource)
        slot.actor = self._remote_cls.options(**opts).remote(self.suite, IDLE_POLICY, self.camera_size, slot.index,
                                                              slot.name, self.video_size)
        slot.ready_ref = slot.actor.ready.remote()
        slot.started = time.monotonic()
        self.stats.actors_started += 1

    def _lose(self, slot: _Slot, reason: str) -> None:
        self.stats.actors_lost += 1
        self.stats.events.append(f"{slot.name}: {reason}")
        log.warning("shared env actor %s lost (%s); replacing it", slot.name, reason)
        job = self._jobs.get(slot.job) if slot.job else None
        if job is not None and slot.name in job.work.in_flight:
            spec = job.work.in_flight[slot.name].spec
            final = job.work.requeue(slot.name, job.task_names.get(spec.task_index, ""), reason)
            if final is not None:
                job.outbox.append(final)
            else:
                self.stats.episodes_requeued += 1
        if slot.actor is not None:
            ray.kill(slot.actor, no_restart=True)
        self._restarts += 1
        if self._restarts > self.max_actor_restarts:
            self.fatal = f"env actors died {self._restarts} times; last: {reason}"
            slot.actor = slot.ref = slot.ready_ref = slot.job = None  # an empty slot: nothing dispatched to it
            return
        self._start(slot)

    def _next_job(self) -> _Job | None:
        """Fair choice: the trial with the fewest episodes in flight, then the one served longest ago."""
        busy: dict[str, int] = {}
        for s in self.slots:
            if s.ref is not None and s.job in self._jobs:
                busy[self._jobs[s.job].trial] = busy.get(self._jobs[s.job].trial, 0) + 1
        waiting = [j for j in self._jobs.values() if not j.cancelled and j.work.num_pending]
        if not waiting:
            return None
        trial = min({j.trial for j in waiting}, key=lambda t: (busy.get(t, 0), self._last_served.get(t, 0)))
        return next(j for j in waiting if j.trial == trial)  # that trial's oldest job

    def _dispatch(self) -> None:
        for s in self.slots:
            if s.actor is None or s.ref is not None or s.ready_ref is not None:
                continue
            job = self._next_job()
            if job is None:
                return
            item = job.work.take(s.name, prefer_task=s.task)
            s.job, s.task = job.job_id, item.spec.task_index
            s.ref = s.actor.run_with.remote(job.policy, item.spec)
            self._last_served[job.trial] = next(self._counter)
            self.dispatched.append(job.trial)

    def _collect(self, slot: _Slot, ref) -> None:
        slot.ref = None
        job = self._jobs.get(slot.job)
        try:
            result: EpisodeResult = ray.get(ref)
        except (RayActorError, GetTimeoutError, RayTaskError) as err:
            self._lose(slot, f"{type(err).__name__}: {_first_line(err)}")
            return
        if job is None or job.cancelled:  # the trial was stopped while this episode ran: discard it
            return
        if job.work.complete(slot.name, result):
            job.outbox.append(result)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    self._dispatch()
                    running = {s.ref: s for s in self.slots if s.ref is not None}
                    starting = {s.ready_ref: s for s in self.slots if s.ready_ref is not None}
                if not running and not starting:
                    self._stop.wait(self.poll_s)
                    continue
                ready, _ = ray.wait(list(running) + list(starting), num_returns=1, timeout=self.poll_s)
                with self._lock:
                    for ref in ready:
                        if ref in starting:
                            slot = starting[ref]
                            try:
                                ray.get(ref)
                                slot.ready_ref = None
                            except (RayActorError, RayTaskError) as err:
                                self._lose(slot, f"{type(err).__name__} in its creation task: {_first_line(err)}")
                        else:
                            self._collect(running[ref], ref)
                    now = time.monotonic()
                    for s in self.slots:
                        if s.ready_ref is not None and now - s.started > self.start_timeout_s:
                            self._lose(s, f"did not start within {self.start_timeout_s:.0f} s")
                        job = self._jobs.get(s.job) if s.ref is not None else None
                        item = job.work.in_flight.get(s.name) if job else None
                        if item is not None and now - item.started > self.episode_timeout_s:
                            self.stats.hung += 1
                            s.ref = None
                            self._lose(s, f"episode {item.spec.key} exceeded {self.episode_timeout_s:.0f} s")
            except Exception as err:  # keep serving; a bug here must not hang every trial silently
                log.exception("shared env pool: %s", err)
                self.fatal = f"{type(err).__name__}: {err}"
                return


def start_service(name: str, suite: str, num_actors: int, cpus_per_actor: float, camera_size: int,
                  rollout_resource: str | None = None, episode_timeout_s: float = 1200.0, actor_cls=EnvActor):
    """Create the named pool (owned by the caller: it goes when the tune driver does) and wait for its actors."""
    remote = ray.remote(EnvPoolService).options(name=name, num_cpus=0, max_concurrency=64, max_restarts=0,
                                                scheduling_strategy="DEFAULT")
    handle = remote.remote(suite, num_actors, cpus_per_actor, camera_size, camera_size, rollout_resource,
                           episode_timeout_s, actor_cls=actor_cls)
    ray.get(handle.ready.remote())
    return handle


class SharedPoolClient:
    """A trial's side: the `RolloutPool` interface over the shared pool (used by `run_evaluation`)."""

    _jobs = itertools.count()

    def __init__(self, service, trial: str, policy_spec: PolicySpec, max_attempts: int = 3, poll_s: float = 0.5):
        self.service = service
        self.trial = trial
        self.policy_spec = policy_spec
        self.max_attempts = max_attempts
        self.poll_s = poll_s
        self.stats = PoolStats()
        self.server_final_stats = None

    def run(self, worklist: WorkList, on_result, task_names: dict | None = None) -> None:
        task_names = task_names or {}
        job_id = f"{self.trial}/{time.time_ns()}/{next(self._jobs)}"
        # the shared pool schedules and re-queues; this side only holds the episodes as "in flight"
        names: dict[tuple[int, int], str] = {}
        specs = []
        while (item := worklist.take(f"{job_id}#{len(specs)}")) is not None:
            names[item.spec.key] = item.worker
            specs.append(item.spec)
        if not specs:
            return
        ray.get(self.service.submit.remote(self.trial, job_id, self.policy_spec.to_dict(), specs, task_names,
                                           self.max_attempts))
        finished = False
        try:
            while not finished:
                results, finished, fatal = ray.get(self.service.poll.remote(job_id))
                for r in results:
                    attempt = r.attempt  # as counted by the shared pool (it re-queues lost episodes)
                    if worklist.complete(names[r.key], r):
                        r.attempt = attempt
                        on_result(r)
                if fatal and not finished:
                    raise RuntimeError(f"the shared env pool stopped: {fatal}")
                if not finished:
                    time.sleep(self.poll_s)
            if not worklist.finished():
                raise RuntimeError(f"the shared env pool ended job {job_id} with {worklist.num_pending + len(worklist.in_flight)} "
                                   "episodes unfinished (cancelled: the trial was stopped)")
        finally:
            if not finished:  # interrupted or failed here: nothing of this job stays in the shared queue
                try:
                    ray.get(self.service.cancel_job.remote(job_id), timeout=10)
                except Exception:
                    pass

    def shutdown(self) -> None:  # the env actors belong to the sweep, not to one evaluation
        pass


class SharedRollouts:
    """What a trial hands to `run_training`: makes a client per checkpoint evaluation."""

    def __init__(self, service_name: str, trial: str):
        self.service_name = service_name
        self.trial = trial

    def client(self, policy_spec: PolicySpec, max_attempts: int = 3) -> SharedPoolClient:
        return SharedPoolClient(ray.get_actor(self.service_name), self.trial, policy_spec, max_attempts)


def close_service(pool, report_to: str | None = None) -> None:
    """Stop a pool; `report_to`: write what it did (actors, dispatch order, dropped work) there as JSON first."""
    from clad import storage

    try:
        if report_to is not None:
            storage.write_json(report_to, ray.get(pool.report.remote(), timeout=30), indent=1)
        ray.get(pool.shutdown.remote(), timeout=60)
    except Exception as err:
        log.warning("env pool: %s", err)
    ray.kill(pool, no_restart=True)


@contextlib.contextmanager
def run_rollouts(cl, owner: str, report_to: str | None = None):
    """One env-actor pool for every checkpoint evaluation of one `clad train` (eval_every) or
    `clad eval-checkpoints`: the simulators start once instead of once per checkpoint, and their CPUs stay
    reserved for the whole run (preflight checked the room). `cl` is the run's ClosedLoopConfig, `owner` the
    run folder (it names the pool). Yields what `ClosedLoopEvaluator(rollouts=...)` takes."""
    name = service_name("run-" + hashlib.sha256(str(owner).encode()).hexdigest()[:12])
    pool = start_service(name, cl.suite, cl.actors, cl.cpus_per_actor, cl.camera_size, cl.rollout_resource)
    try:
        yield SharedRollouts(name, trial="run")
    finally:
        close_service(pool, report_to)


class PoolCleanupCallback:
    """Tune callback factory (kept free of a Tune import at module load): cancels an ended trial's work."""

    @staticmethod
    def make(name: str):
        """By name, not handle: Tune pickles its callbacks with the sweep state, and a resumed sweep starts a
        new pool under the same name."""
        from ray.tune import Callback

        class _Cleanup(Callback):
            def _cancel(self, trial) -> None:
                try:
                    n = ray.get(ray.get_actor(name).cancel_trial.remote(trial.trial_id), timeout=30)
                except Exception as err:  # the sweep goes on; the pool discards results nobody waits for
                    log.warning("could not cancel the env-pool work of trial %s: %s", trial.trial_id, err)
                    return
                if n:
                    log.info("trial %s ended: %d of its queued episodes dropped from the shared env pool",
                             trial.trial_id, n)

            def on_trial_complete(self, iteration, trials, trial, **info):
                self._cancel(trial)

            def on_trial_error(self, iteration, trials, trial, **info):
                self._cancel(trial)

        return _Cleanup()
