"""Starting or joining Ray, and sizing actor pools from the cluster's resources.

Why fractional CPUs everywhere: on a 2-core machine, actors or Train workers that each claim a whole CPU
leave nothing for the Ray Data read tasks or the Train controller, and Ray then waits forever without an
error. Every pool in clad is sized from `ray.cluster_resources()`, never from a hard-coded 1.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import ray

from clad.errors import ClusterError
from pipelines import logs, signals

log = logging.getLogger(__name__)

# Share of the cluster's CPUs that one pool may take; the rest stays free for Ray Data tasks, the Train
# controller and the driver.
DEFAULT_POOL_CPU_SHARE = 0.9

# Ray waits a fixed 30 s for a new local node's raylet to register. Two clad commands starting Ray at once on a
# loaded 2-core machine can miss that (measured: a pipeline started next to two training runs), so a local
# start is tried this many times, 10 s apart, before the command gives up with a ClusterError.
LOCAL_START_ATTEMPTS = 3
LOCAL_START_BACKOFF_S = 10.0


def init_ray(address: str | None = None, num_cpus: int | None = None, object_store_gb: float | None = None,
             quiet: bool = True) -> dict:
    """Join the cluster at `address` (or $RAY_ADDRESS), or start a local one. Idempotent.

    Returns `ray.cluster_resources()`. The dashboard stays on: Ray Train inside Tune needs the State API to
    free the placement groups of trials that a scheduler stops early.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"ignore_reinit_error": True}
    if quiet:
        kwargs.update(logging_level=logging.ERROR, log_to_driver=True)
    if logs.is_configured():  # a `clad` command: workers log like the driver (console policy + clad.log)
        logs.route_ray_logging()
        kwargs.update(logs.ray_init_options())
    if address:
        with signals.interrupts_held():
            ray.init(address=address, **kwargs)
    else:
        if object_store_gb is not None:
            kwargs["object_store_memory"] = int(object_store_gb * 1024**3)
        start_local_cluster(num_cpus=num_cpus, **kwargs)
    if logs.is_configured():  # a `clad` command (not a library caller): SIGTERM stops it like Ctrl-C
        signals.route_sigterm_to_interrupt()
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    except Exception:  # pragma: no cover - progress bars are cosmetic
        pass
    return ray.cluster_resources()


def _is_startup_timeout(err: BaseException) -> bool:
    text = str(err).lower()
    return "timed out during startup" in text or "gcs has become overloaded" in text


def _ray_children() -> dict[int, object]:
    """This process's descendants whose command line runs a file from the ray package, by pid."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency; without it they stop when clad exits
        return {}
    return {c.pid: c for c in psutil.Process().children(recursive=True)
            if any("/ray/" in part for part in _cmdline(c))}


def _stop_failed_start(started_before: set[int]) -> None:
    """Stop the Ray processes a failed local start left behind.

    Only Ray children that did not exist before the attempt: a process may hold a live Ray session of its own
    (a test session, a library caller), and stopping its raylet makes Ray end the whole process.
    """
    procs = [c for pid, c in _ray_children().items() if pid not in started_before]
    if not procs:  # nothing left behind (or no psutil to list it)
        return
    import psutil

    for c in procs:
        try:
            c.terminate()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except Exception:  # the process exited or is not ours to read
        return []


def start_local_cluster(num_cpus: int | None = None, **kwargs) -> None:
    """`ray.init` of a new local cluster, retried when Ray's fixed raylet wait runs out on a loaded machine."""
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        started_before = set(_ray_children())
        try:
            with signals.interrupts_held():  # Ctrl-C mid-start would crash the exit (signals.py)
                ray.init(num_cpus=num_cpus, **kwargs)
            return
        except Exception as err:
            if not _is_startup_timeout(err):
                raise
            ray.shutdown()
            _stop_failed_start(started_before)
            if attempt == LOCAL_START_ATTEMPTS:
                load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
                raise ClusterError(
                    f"the local Ray cluster did not start ({LOCAL_START_ATTEMPTS} attempts; Ray: {err}). The "
                    f"machine is overloaded (load average {load} on {os.cpu_count()} CPUs) or another job was "
                    "starting Ray at the same time. Re-run the command (it resumes), or start one "
                    "cluster for all jobs (`ray start --head --num-cpus N`) and pass `--address 127.0.0.1:6379` "
                    "(or set RAY_ADDRESS)") from None
            log.warning("the local Ray cluster did not start in time (attempt %d of %d: %s); retrying in %.0f s",
                        attempt, LOCAL_START_ATTEMPTS, err, LOCAL_START_BACKOFF_S)
            time.sleep(LOCAL_START_BACKOFF_S)


@dataclass(frozen=True)
class PoolSize:
    """How many actors a pool gets and what each one claims."""

    num_actors: int
    cpus_per_actor: float
    gpus_per_actor: float = 0.0


def size_pool(requested: int | None, cpus_per_actor: float | None = None, share: float = DEFAULT_POOL_CPU_SHARE,
              gpus_per_actor: float = 0.0) -> PoolSize:
    """Size a pool of actors so that together they never claim more than `share` of the cluster's CPUs.

    `requested` None means one actor per whole CPU in the share (at least 1). `cpus_per_actor` None means
    an equal split of the share among the actors, capped at 1 CPU each.
    """
    total = float(ray.cluster_resources().get("CPU", 1.0))
    budget = max(total * share, 0.05)
    n = requested if requested is not None else max(1, int(budget))
    if n < 1:
        raise ValueError(f"a pool needs at least 1 actor, got {n}")
    per = cpus_per_actor if cpus_per_actor is not None else min(1.0, budget / n)
    if per * n > budget + 1e-9:
        per = budget / n
        log.warning("pool of %d actors clipped to %.3f CPU each to leave CPUs for other Ray work", n, per)
    return PoolSize(num_actors=n, cpus_per_actor=round(max(per, 0.01), 3), gpus_per_actor=gpus_per_actor)
