"""Starting or joining Ray, and sizing actor pools from the cluster's resources.

Why fractional CPUs everywhere: on a 2-core machine, actors or Train workers that each claim a whole CPU
leave nothing for the Ray Data read tasks or the Train controller, and Ray then waits forever without an
error. Every pool in clad is sized from `ray.cluster_resources()`, never from a hard-coded 1.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray

from pipelines import logs, signals

log = logging.getLogger(__name__)

# Share of the cluster's CPUs that one pool may take; the rest stays free for Ray Data tasks, the Train
# controller and the driver.
DEFAULT_POOL_CPU_SHARE = 0.9


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
        ray.init(address=address, **kwargs)
    else:
        if object_store_gb is not None:
            kwargs["object_store_memory"] = int(object_store_gb * 1024**3)
        ray.init(num_cpus=num_cpus, **kwargs)
    if logs.is_configured():  # a `clad` command (not a library caller): SIGTERM stops it like Ctrl-C
        signals.route_sigterm_to_interrupt()
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    except Exception:  # pragma: no cover - progress bars are cosmetic
        pass
    return ray.cluster_resources()


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
