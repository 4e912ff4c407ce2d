"""Benchmark (not a test): rollout throughput of the Ray env-actor pool against LIBERO's plain serial loop,
the pool's overhead against the raw simulator step rate, and policy-server throughput against batch size.

    .venv/bin/python -m pipelines.bench.rollouts                       # small default: 2 actors, 4 episodes
    .venv/bin/python -m pipelines.bench.rollouts --actors 8 --episodes 32 --max-steps 200 --out bench.json

The raw and serial loops run inside one Ray worker by default (`--serial-in driver` to run them in this
process): raylet starts workers at niceness 15, so on a shared machine a driver-side loop at niceness 0
would get more CPU than the pool's actors and the comparison would measure scheduling priority.

All three measurements run in one invocation on the same machine, with the same policy and episodes:
  raw      env.step of a fixed action in the driver, no policy              (the simulator's ceiling)
  serial   run_episode in one process, one env, policy in-process          (LIBERO's plain eval loop)
  pool     the same episodes on --actors Ray env actors (in_actor policy)   (wall incl. actor start-up,
           and steady state = after every actor returned its first episode)
  server   PolicyServer rows/s for explicit batches of B, and with B concurrent clients (dynamic batching)
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from pipelines.bench.report import write_report


def _raw_rate(env, steps: int) -> float:
    env.reset(init_index=0, settle_steps=0)
    a = np.zeros(7)
    a[6] = -1.0
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(a)
    return steps / (time.perf_counter() - t0)


def bench_serial(suite: str, task: int, specs, policy_spec, raw_steps: int) -> dict:
    from clad.eval.episode import run_spec
    from clad.eval.registry import make_policy
    from clad.eval.worker import policy_cameras
    from clad.libero.env import EnvConfig, LiberoEnv
    from clad.libero.suites import get_task

    policy = make_policy(policy_spec)
    cams = policy_cameras(policy)
    t0 = time.perf_counter()
    env = LiberoEnv(EnvConfig(suite=suite, cameras=cams or ("agentview",), render=bool(cams),
                              max_steps=specs[0].max_steps, settle_steps=specs[0].settle_steps), task)
    build_s = time.perf_counter() - t0
    try:
        raw = _raw_rate(env, raw_steps)
        spec_task = get_task(suite, task)
        t0 = time.perf_counter()
        results = [run_spec(env, policy, spec_task, s) for s in specs]
        wall = time.perf_counter() - t0
    finally:
        env.close()
    steps = sum(r.steps for r in results)
    return {"env_build_s": build_s, "raw_sim_steps_per_s": raw, "episodes": len(results), "steps": steps,
            "wall_s": wall, "steps_per_s": steps / wall, "steps_per_s_incl_build": steps / (wall + build_s),
            "successes": sum(r.success for r in results)}


def _serial_in_worker(suite, task, specs, policy_spec, raw_steps) -> dict:
    import torch

    from clad.libero.runtime import ensure_libero

    ensure_libero()
    torch.set_num_threads(1)
    out = bench_serial(suite, task, specs, policy_spec, raw_steps)
    out["niceness"] = os.nice(0)
    return out


def bench_pool(suite: str, specs, policy_spec, actors: int, cpus: float, mode: str = "in_actor") -> dict:
    from clad.eval.worklist import WorkList
    from pipelines.rollout_pool import PoolConfig, RolloutPool

    pool = RolloutPool(PoolConfig(suite=suite, num_actors=actors, cpus_per_actor=cpus, recycle_after=10**6,
                                  episode_timeout_s=3600, poll_s=0.05, policy_mode=mode), policy_spec)
    arrivals: list[tuple[float, object]] = []
    t0 = time.perf_counter()
    pool.run(WorkList(specs), lambda r: arrivals.append((time.perf_counter(), r)))
    wall = time.perf_counter() - t0
    steps = sum(r.steps for _, r in arrivals)
    # steady state: episodes that finished after every actor had finished its first one
    firsts: dict[str, float] = {}
    for t, r in arrivals:
        firsts.setdefault(r.actor.split(".")[0], t)
    out = {"actors": actors, "cpus_per_actor": cpus, "episodes": len(arrivals), "steps": steps, "wall_s": wall,
           "steps_per_s_wall": steps / wall, "successes": sum(r.success for _, r in arrivals),
           "in_episode_steps_per_s_per_actor": steps / max(sum(r.wall_s for _, r in arrivals), 1e-9)}
    if len(firsts) == actors:
        t_warm = max(firsts.values())
        late = [(t, r) for t, r in arrivals if t > t_warm]
        if late:
            span = max(t for t, _ in late) - t_warm
            out["steady_steps_per_s"] = sum(r.steps for _, r in late) / span if span > 0 else None
            out["steady_episodes"] = len(late)
    out["startup_s_until_all_actors_returned"] = (max(firsts.values()) - t0) if firsts else None
    out["policy_mode"] = mode
    out["server"] = pool.server_final_stats
    return out


def _fake_obs(n: int, cameras: tuple[str, ...], size: int) -> list[dict]:
    rng = np.random.default_rng(0)
    obs = []
    for _ in range(n):
        o = {"joint_states": rng.normal(size=7), "gripper_states": rng.normal(size=2)}
        for cam in cameras:
            o[{"agentview": "agentview_rgb", "eye_in_hand": "eye_in_hand_rgb"}[cam]] = \
                rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
        obs.append(o)
    return obs


def bench_server(policy_spec, batch_sizes: list[int], repeats: int, wait_ms: float) -> dict:
    import ray

    from clad.eval.policy import EpisodeContext
    from clad.eval.registry import make_policy
    from pipelines.policy_server import PolicyServer
    from pipelines.rollout_pool import actor_options

    cams = tuple(policy_spec.cameras) if policy_spec.kind == "tiny" else ()
    ctx = EpisodeContext(seed=1, suite="libero_object", task_index=0, task_name="t", language="pick", init_index=0)
    local = make_policy(policy_spec)
    server = ray.remote(PolicyServer).options(**actor_options(0.2), max_concurrency=4096).remote(
        policy_spec.to_dict(), max(batch_sizes), wait_ms)
    rows = []
    try:
        for b in batch_sizes:
            obs = _fake_obs(b, cams, 128)
            ids = list(range(b))
            local.reset(ids, [ctx] * b)
            ray.get(server.reset.remote(ids, [ctx] * b))
            ray.get(server.act_batch.remote(ids, obs, [0] * b))  # warm-up
            t0 = time.perf_counter()
            for r in range(repeats):
                local.act(ids, obs, [r] * b)
            t_local = time.perf_counter() - t0
            t0 = time.perf_counter()
            for r in range(repeats):
                ray.get(server.act_batch.remote(ids, obs, [r] * b))
            t_batch = time.perf_counter() - t0
            # dynamic batching: b concurrent single-row requests, as b env actors would send them
            t0 = time.perf_counter()
            for r in range(repeats):
                ray.get([server.act.remote(i, obs[i], r) for i in ids])
            t_dyn = time.perf_counter() - t0
            n = b * repeats
            rows.append({"batch": b, "local_rows_per_s": n / t_local, "server_explicit_rows_per_s": n / t_batch,
                         "server_dynamic_rows_per_s": n / t_dyn,
                         "server_explicit_ms_per_call": 1000 * t_batch / repeats})
        stats = ray.get(server.stats.remote())
    finally:
        ray.kill(server, no_restart=True)
    return {"policy": policy_spec.to_dict(), "max_wait_ms": wait_ms, "repeats": repeats, "rows": rows,
            "server_stats": stats}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--policy", choices=("tiny", "expert", "zero"), default="tiny")
    p.add_argument("--cameras", nargs="*", default=[], choices=("agentview", "eye_in_hand"),
                   help="views the tiny policy reads (rendered every step; default none: physics only)")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--cpus-per-actor", type=float)
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--raw-steps", type=int, default=300)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--server-wait-ms", type=float, default=5.0)
    p.add_argument("--skip", nargs="*", default=[], choices=("serial", "pool", "pool_server", "server"))
    p.add_argument("--out", default=str(Path("outputs") / "bench" / "rollouts.json"))
    p.add_argument("--serial-in", choices=("worker", "driver"), default="worker")
    p.add_argument("--address")
    args = p.parse_args(argv)

    from clad.eval.policy import PolicySpec
    from clad.eval.protocol import plan_episodes
    from clad.libero.runtime import ensure_libero
    from pipelines.ray_runtime import init_ray, size_pool

    ensure_libero()
    import torch

    torch.set_num_threads(1)  # the same as inside the env actors: a fair per-process comparison
    spec = PolicySpec(kind=args.policy, cameras=tuple(args.cameras)) if args.policy == "tiny" else PolicySpec(kind=args.policy)
    specs = plan_episodes(args.suite, [args.task], args.episodes, 0, args.max_steps, 10)
    report: dict = {"config": vars(args), "host": {"cpus": os.cpu_count(), "machine": platform.machine(),
                                                   "loadavg_start": os.getloadavg(), "driver_niceness": os.nice(0)}}
    init_ray(address=args.address)
    size = size_pool(args.actors, args.cpus_per_actor)
    if "serial" not in args.skip:
        if args.serial_in == "driver":
            report["serial"] = bench_serial(args.suite, args.task, specs, spec, args.raw_steps)
        else:
            import ray

            remote = ray.remote(num_cpus=size.cpus_per_actor, max_retries=0)(_serial_in_worker)
            report["serial"] = ray.get(remote.remote(args.suite, args.task, specs, spec, args.raw_steps))
        report["serial"]["where"] = args.serial_in
        print(f"serial: raw sim {report['serial']['raw_sim_steps_per_s']:.1f} steps/s, "
              f"loop with policy {report['serial']['steps_per_s']:.1f} steps/s ({args.serial_in})", flush=True)
    if "pool" not in args.skip:
        report["pool"] = bench_pool(args.suite, specs, spec, size.num_actors, size.cpus_per_actor)
        print(f"pool:   {report['pool']['steps_per_s_wall']:.1f} steps/s incl. start-up, "
              f"steady {report['pool'].get('steady_steps_per_s') or float('nan'):.1f} steps/s", flush=True)
    if "pool_server" not in args.skip and spec.kind != "expert":
        # the server claims 0.1 CPU on top of the pool's 90 % share
        report["pool_server"] = bench_pool(args.suite, specs, spec, size.num_actors, size.cpus_per_actor,
                                           mode="server")
        print(f"pool (policy server): {report['pool_server']['steps_per_s_wall']:.1f} steps/s incl. start-up, "
              f"steady {report['pool_server'].get('steady_steps_per_s') or float('nan'):.1f} steps/s", flush=True)
    if "server" not in args.skip:
        report["server"] = bench_server(PolicySpec(kind="tiny"), args.batch_sizes, args.repeats, args.server_wait_ms)
    report["host"]["loadavg_end"] = os.getloadavg()

    ratios = {}
    if "serial" in report and "pool" in report:
        s, q = report["serial"], report["pool"]
        # both sides pay their start-up: the pool its actors + scenes, the serial loop its one scene
        ratios["pool_wall_vs_serial_incl_startup"] = q["steps_per_s_wall"] / s["steps_per_s_incl_build"]
        if q.get("steady_steps_per_s"):
            ratios["pool_steady_vs_serial"] = q["steady_steps_per_s"] / s["steps_per_s"]
            ratios["pool_steady_per_actor_vs_raw_sim"] = q["steady_steps_per_s"] / q["actors"] / s["raw_sim_steps_per_s"]
        ratios["in_actor_episode_rate_vs_serial"] = q["in_episode_steps_per_s_per_actor"] / s["steps_per_s"]
    if "pool" in report and report.get("pool_server", {}).get("steady_steps_per_s") and \
            report["pool"].get("steady_steps_per_s"):
        ratios["pool_server_mode_steady_vs_in_actor"] = (report["pool_server"]["steady_steps_per_s"]
                                                         / report["pool"]["steady_steps_per_s"])
    report["ratios"] = ratios

    print("\n== rollout throughput (env steps/s) ==")
    for k, v in ratios.items():
        print(f"  {k:<40} {v:6.2f}x")
    if "server" in report:
        print("\n== policy server (tiny policy), rows/s ==")
        print(f"  {'batch':>5} {'in-process':>11} {'server batch':>13} {'server dynamic':>15}")
        for r in report["server"]["rows"]:
            print(f"  {r['batch']:>5} {r['local_rows_per_s']:>11.0f} {r['server_explicit_rows_per_s']:>13.0f} "
                  f"{r['server_dynamic_rows_per_s']:>15.0f}")
    print(f"\nload average start/end: {report['host']['loadavg_start']} / {report['host']['loadavg_end']}")
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
